"""End to end: GSM8K problems through `rstar submit`, a real Celery worker, real Redis, SQLite and
PostgreSQL, and two fake TGI servers speaking HTTP. Asserts the audit trail a user would audit."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sqlalchemy import func, select

from db.calls import requests_as_sent
from db.models import Job, ModelCall, Output, Problem, Selection, SharedText, Step
from db.session import session_scope
from rstar.records import expanded_response
from tests.fakeserver import FakeInferenceServer
from tests.support import (
    celery_worker,
    count_errors,
    gsm8k_rows,
    oracle_pair,
    reference,
    review_rows,
    rstar,
    service_env,
    solution_rows,
    tally_errors,
    wait_until,
    write_jsonl,
)
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint


def _job_finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job is not None and job.finished_at is not None


def test_twenty_gsm8k_problems_end_to_end(db_url: str, redis_url: str, tmp_path: Path) -> None:
    rows = gsm8k_rows(20)
    oracle_a, oracle_b = oracle_pair(rows, b_wrong_every=2)
    items = [{"id": f"gsm-{i}", "question": r["question"], "answer": r["answer"]} for i, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "problems.jsonl", items)
    with FakeInferenceServer(oracle_a, kind="tgi") as a, FakeInferenceServer(oracle_b, kind="tgi") as b:
        env = service_env(db_url, redis_url, RSTAR_MODEL_A_URL=a.url, RSTAR_MODEL_B_URL=b.url)
        assert rstar(["db", "upgrade"], env).returncode == 0
        sub = rstar(["submit", str(path), "--name", "e2e"], env)
        assert sub.returncode == 0, sub.stderr
        job_id = int(sub.stdout.strip())
        queues = [CONTROL_QUEUE, queue_for_endpoint(a.url), queue_for_endpoint(b.url)]
        with celery_worker(env, queues, log=tmp_path / "worker.log"):
            wait_until(lambda: _job_finished(db_url, job_id), timeout=180, what="the job to finish")
        served = a.request_count + b.request_count
        systems_sent = {
            m["content"] for srv in (a, b) for r in srv.requests for m in r.messages if m["role"] == "system"
        }
        a_structured = [r.body.get("response_format") for r in a.requests if r.body]

    # TGI's own structured-output dialect was asked for.
    assert a_structured and all(f and f["type"] == "json" and "value" in f for f in a_structured)

    with session_scope(db_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
        assert [p.status for p in problems] == ["answered"] * 20
        assert [p.final_answer for p in problems] == [reference(r["answer"]) for r in rows]
        # B's first answer is wrong on every other problem: the threshold is met in round 2 there,
        # in round 1 elsewhere.
        assert [p.rounds_used for p in problems] == [2 if i % 2 == 0 else 1 for i in range(20)]

        calls = s.scalars(select(ModelCall)).all()
        steps = s.scalars(select(Step)).all()
        model_steps = [st for st in steps if st.kind != "select"]
        # One recorded call per model step, each with its full record; and no GPU work paid twice.
        assert len(calls) == len(model_steps) == served == sum(4 if i % 2 else 8 for i in range(20))
        assert sorted(c.step_id for c in calls) == sorted(st.id for st in model_steps)
        for c in calls:
            assert c.outcome == "ok" and c.attempt == 1
            assert c.request["messages"] and c.response and c.response_text
            # Its system prompt stored once for the whole database, named by digest.
            assert [m["content"] for m in c.request["messages"] if m["role"] == "system"] == [None]
            # Its text stored once (response_text), and the response shown as it was received.
            assert c.response["choices"][0]["message"]["content"] is None
            received = expanded_response(c.response, c.response_text, c.sequences)
            assert received is not None and received["choices"][0]["message"]["content"] == c.response_text
            assert c.prompt_tokens and c.completion_tokens and c.latency_ms is not None
            assert c.finish_reason in ("stop", "eos_token")
        assert all(st.status == "done" for st in steps)
        assert {t.text for t in s.scalars(select(SharedText))} == systems_sent and systems_sent
        # Each solution's and review's text is its call's reply, stored there only.
        outputs = s.scalars(select(Output)).all()
        texts = {c.id: c.response_text for c in calls}
        assert all(o.stored_text is None and o.text_seq == 0 for o in outputs)
        assert all(o.text == texts[o.model_call_id] for o in outputs)

        sols = solution_rows(s)
        revs = review_rows(s)
        assert len(sols) == sum(2 if i % 2 else 4 for i in range(20))
        assert len(revs) == len(sols)
        by_id = {x.id: x for x in sols}
        for rev in revs:
            target = by_id[rev.target_solution_id]
            assert target.problem_id == rev.problem_id and target.author != rev.reviewer
            assert target.round == rev.round
            truth = next(p.reference_answer for p in problems if p.id == rev.problem_id)
            # The oracle reviewer accepts exactly the right answers.
            assert rev.verdict == ("correct" if target.answer == truth else "incorrect")
            assert rev.logical_consistency == 5 and rev.step_completeness == 4
        for sol in sols:
            if sol.kind == "refine":
                parent = by_id[sol.parent_id]  # type: ignore[index]
                assert parent.author == sol.author and parent.round == sol.round - 1
        rejected = [r for r in revs if r.verdict == "incorrect"]
        assert len(rejected) == 10 and all(r.reviewer == "A" and r.round == 1 for r in rejected)
        assert s.scalar(select(func.count()).select_from(Selection)) == 20
        # Each problem keeps its cost and judgement beside its answer (what pages and counts read).
        assert tally_errors(problems, calls) == []
        assert count_errors(s) == []  # and the counts pages read, kept by the database
        assert all(p.correct is True and p.calls in (4, 8) for p in problems)

    out = tmp_path / "results.jsonl"
    res = rstar(["results", str(job_id), "--format", "jsonl", "-o", str(out)], env)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"gsm-{i}" for i in range(20)]
    assert all(r["correct"] is True and r["status"] == "answered" for r in records)
    assert [r["model_calls"] for r in records] == [8 if i % 2 == 0 else 4 for i in range(20)]
    assert all(r["completion_tokens"] > 0 and r["wall_time_s"] is not None for r in records)
    csv_out = rstar(["results", str(job_id), "--format", "csv"], env)
    table = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert len(table) == 20 and table[0]["final_answer"] == reference(rows[0]["answer"])

    shown = rstar(["show", str(job_id), "gsm-0"], env)
    assert shown.returncode == 0, shown.stderr
    for needle in ("round 2", "verdict: incorrect", "Threshold met in round 2", "[response]", "tokens"):
        assert needle in shown.stdout
    system_prompt = next(iter(systems_sent))
    assert "[system] " + " ".join(system_prompt.split()[:5]) in shown.stdout  # shown as it was sent
    status = rstar(["status", str(job_id)], env)
    assert status.returncode == 0 and "20/20" in status.stdout

    # The viewer shows each call's request and response as they were sent, their texts put back.
    from fastapi.testclient import TestClient
    from markupsafe import escape

    from web.app import create_app

    page = TestClient(create_app(database_url=db_url)).get(f"/jobs/{job_id}/problems/gsm-0")
    assert page.status_code == 200
    with session_scope(db_url) as s:
        first = s.scalars(select(ModelCall).where(ModelCall.problem_id == problems[0].id)).first()
        assert first is not None
        received = expanded_response(first.response, first.response_text, first.sequences)
        sent = requests_as_sent(session=s, calls=[first])[first.id]
    assert str(escape(json.dumps(received, indent=2, ensure_ascii=False))) in page.text
    assert sent["messages"][0]["content"] in systems_sent
    assert str(escape(json.dumps(sent, indent=2, ensure_ascii=False))) in page.text
