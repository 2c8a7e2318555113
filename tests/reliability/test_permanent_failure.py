"""Fault 6: an endpoint is down for longer than the retry budget, for some problems. Those end
`failed` with the last error; the rest complete. `rstar retry JOB` re-runs only the failed
problems, from their failed steps, reusing every call already recorded."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import select

from db.models import Job, ModelCall, Problem, Step
from db.session import session_scope
from tests.fakeserver import FakeRequest, Reply
from tests.reliability.harness import (
    assert_clean,
    audit,
    env_for,
    gsm_job,
    queues_for,
    report,
    servers,
    submit,
    wait_finished,
)
from tests.support import celery_worker, kind_of, question_of, reference, rstar

MAX_RETRIES = 2


def test_permanent_failure_then_retry(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    job = gsm_job(tmp_path, 6)
    doomed = {job.rows[i]["question"] for i in (1, 4)}
    down = threading.Event()
    down.set()

    def b_responder(request: FakeRequest) -> Reply | str:
        # B's server fails every review of the doomed problems while it is "down".
        if down.is_set() and kind_of(request.prompt) == "review" and question_of(request.prompt) in doomed:
            return Reply(status=503, error="upstream GPU node lost")
        return job.oracle_b(request)

    with servers(job.oracle_a, b_responder) as (a, b):
        env = env_for(postgres_url, redis_url, a, b, RSTAR_MAX_RETRIES=str(MAX_RETRIES))
        assert rstar(["db", "upgrade"], env).returncode == 0
        job_id = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log"):
            wait_finished(postgres_url, job_id)
            first = audit(postgres_url, job_id, lines=len(job.rows))
            with session_scope(postgres_url) as s:
                problems = s.scalars(
                    select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)
                ).all()
                calls_before = {c.id: c.request_hash for c in s.scalars(select(ModelCall))}
                ok_before = {c.step_id for c in s.scalars(select(ModelCall).where(ModelCall.outcome == "ok"))}
            assert [p.status for p in problems] == [
                "answered",
                "failed",
                "answered",
                "answered",
                "failed",
                "answered",
            ]
            for p in problems:
                if p.status == "failed":
                    assert p.error and "r1.review.B" in p.error
                    assert f"UnavailableError after {MAX_RETRIES + 1} attempt(s): HTTP 503" in p.error
                    assert "upstream GPU node lost" in p.error
            shown = rstar(["show", str(job_id), "gsm-1"], env)
            assert "upstream GPU node lost" in shown.stdout and "retryable_error" in shown.stdout
            a_before, b_before = a.request_count, b.request_count

            down.clear()  # the endpoint is back
            retried = rstar(["retry", str(job_id)], env)
            assert retried.returncode == 0, retried.stderr
            assert "2 failed problem(s) re-run from 2 failed step(s)" in retried.stderr
            wait_finished(postgres_url, job_id)
        # Each server's own new requests: a slice of A's list joined to B's would take old B
        # requests whenever the retry also sent some to A.
        new_requests = [
            *(("A", r) for r in a.requests[a_before:]),
            *(("B", r) for r in b.requests[b_before:]),
        ]
        sent_after = len(new_requests)
        after_prompts = [question_of(r.prompt) for _, r in new_requests]

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    with session_scope(postgres_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
        assert [p.final_answer for p in problems] == [reference(r["answer"]) for r in job.rows]
        assert s.get(Job, job_id).status == "finished"  # type: ignore[union-attr]
        # Every call recorded before the retry is still there, unchanged; the steps that had a
        # successful call did not get another.
        calls_after = {c.id: c.request_hash for c in s.scalars(select(ModelCall))}
        assert all(calls_after[k] == v for k, v in calls_before.items())
        for step_id in ok_before:
            assert len(s.scalars(select(ModelCall).where(ModelCall.step_id == step_id)).all()) >= 1
            assert s.get(Step, step_id).status == "done"  # type: ignore[union-attr]
        new_calls = [c for c in s.scalars(select(ModelCall)) if c.id not in calls_before]
        new_problems = {c.problem_id for c in new_calls}
        assert new_problems == {p.id for p in problems if p.item_id in ("gsm-1", "gsm-4")}
        assert all(c.step_id not in ok_before for c in new_calls)  # nothing recorded was re-asked
    # Only the doomed problems went back to the servers: the failed review and what follows it.
    assert sent_after == len(new_calls)
    sent = [(server, kind_of(r.prompt), question_of(r.prompt)[:30]) for server, r in new_requests]
    assert not doomed.isdisjoint(after_prompts) and set(after_prompts) <= doomed, sent
    result_row = {
        "answered": f"{first.answered} → {result.answered} after retry",
        "failed": f"{first.failed} → 0 after retry",
    }
    report(
        6,
        "endpoint down past the retry budget",
        f"model B answers 503 to the reviews of 2 of 6 problems for good (budget {MAX_RETRIES} retries); "
        "then it comes back and `rstar retry` runs",
        result,
        f"before the retry: {first.answered} answered, {first.failed} failed with the last error "
        f"('UnavailableError after {MAX_RETRIES + 1} attempt(s): HTTP 503 ...'); `rstar retry` re-ran "
        f"only those 2 from their failed step: {sent_after} new requests, 0 for steps already answered",
        **result_row,
    )
