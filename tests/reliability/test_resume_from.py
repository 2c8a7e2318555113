"""Fault 8: the same file is submitted again with `--resume-from JOB` (here after JOB was cancelled
half-way). Every identical request already answered in JOB is copied, not sent: no GPU work is
repeated. A third submission, from the finished second job, sends nothing at all."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from db.models import ModelCall, Problem
from db.session import session_scope
from tests.reliability.harness import (
    assert_clean,
    audit,
    env_for,
    gsm_job,
    ok_calls,
    queues_for,
    report,
    served_ok,
    servers,
    slow,
    submit,
    wait_finished,
)
from tests.support import celery_worker, reference, rstar, wait_until


def _paid_hashes(db_url: str) -> list[str]:
    with session_scope(db_url) as s:
        return [
            c.request_hash or ""
            for c in s.scalars(
                select(ModelCall).where(ModelCall.outcome == "ok", ModelCall.reused_from_id.is_(None))
            )
        ]


def test_resubmit_with_resume_from_reuses_recorded_calls(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    job = gsm_job(tmp_path, 6)
    with servers(slow(job.oracle_a, 0.6), slow(job.oracle_b, 0.6)) as (a, b):
        env = env_for(postgres_url, redis_url, a, b)
        assert rstar(["db", "upgrade"], env).returncode == 0
        first = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log"):
            wait_until(lambda: ok_calls(postgres_url) >= 8, timeout=60, what="some recorded calls")
            assert rstar(["cancel", str(first)], env).returncode == 0
            wait_until(lambda: a.in_flight + b.in_flight == 0, timeout=10, what="calls in flight to end")
            time.sleep(0.5)
            recorded_first = ok_calls(postgres_url, first)
            served_first = served_ok(a, b)
            assert recorded_first == served_first

            second = submit(env, job.path, "--resume-from", str(first))
            wait_finished(postgres_url, second)
            served_second = served_ok(a, b) - served_first

            third = submit(env, job.path, "--resume-from", str(second))
            wait_finished(postgres_url, third)
            served_third = served_ok(a, b) - served_first - served_second

    r2 = audit(postgres_url, second, lines=len(job.rows))
    r3 = audit(postgres_url, third, lines=len(job.rows))
    for r in (r2, r3):
        assert_clean(r)
        assert r.answered == len(job.rows) and r.failed == 0
    # Job 2 copied every reply job 1 had recorded and paid only for the rest.
    assert r2.reused_calls == recorded_first
    assert r2.paid_calls == served_second == job.expected_calls() - recorded_first
    # Job 3 sent nothing.
    assert served_third == 0 and r3.paid_calls == 0 and r3.reused_calls == job.expected_calls()
    # No identical request was ever paid for twice across the three jobs.
    paid = Counter(_paid_hashes(postgres_url))
    assert len(paid) == sum(paid.values()) == served_first + served_second
    with session_scope(postgres_url) as s:
        for job_id in (second, third):
            problems = s.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
            assert [p.final_answer for p in problems] == [reference(r["answer"]) for r in job.rows]
        copies = s.scalars(select(ModelCall).where(ModelCall.reused_from_id.is_not(None))).all()
        assert all(c.latency_ms == 0 for c in copies)
    shown = rstar(["show", str(third), "gsm-0"], env)
    assert shown.returncode == 0 and "[response]" in shown.stdout
    report(
        8,
        "re-submitted with --resume-from",
        f"job 1 cancelled after {recorded_first} of {job.expected_calls()} calls; the same file "
        "submitted as job 2 `--resume-from 1`, then as job 3 `--resume-from 2`",
        r2,
        f"job 2: {r2.reused_calls} replies copied from job 1, {r2.paid_calls} requests sent (only the "
        f"missing ones); job 3: {r3.reused_calls} copied, 0 sent; no request paid twice across the jobs",
    )
