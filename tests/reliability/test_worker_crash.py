"""Fault 1: a worker is SIGKILLed while its model calls are in flight; another worker finishes."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from db.models import Problem
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


def test_worker_killed_mid_call_another_finishes(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    job = gsm_job(tmp_path, 8)
    with servers(slow(job.oracle_a, 0.5), slow(job.oracle_b, 0.5)) as (a, b):
        env = env_for(postgres_url, redis_url, a, b)
        assert rstar(["db", "upgrade"], env).returncode == 0
        job_id = submit(env, job.path)
        queues = queues_for(a, b)
        with celery_worker(env, queues, concurrency=4, log=tmp_path / "victim.log") as victim:
            wait_until(lambda: ok_calls(postgres_url) >= 6, timeout=60, what="some recorded calls")
            assert a.wait_for_in_flight(1, timeout=10) or b.wait_for_in_flight(1, timeout=10)
            in_flight = a.in_flight + b.in_flight
            victim.kill()  # SIGKILL: no warm shutdown, no acks, no cleanup
            victim.wait()
            killed_at = time.monotonic()
            with celery_worker(env, queues, concurrency=4, log=tmp_path / "survivor.log") as survivor:
                wait_finished(postgres_url, job_id, timeout=120)
                assert survivor.poll() is None
            took = time.monotonic() - killed_at
        lost_in_flight = served_ok(a, b)

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    with session_scope(postgres_url) as s:
        problems = s.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
        assert [p.final_answer for p in problems] == [reference(r["answer"]) for r in job.rows]
        assert [p.rounds_used for p in problems] == job.expected_rounds()
    assert result.paid_calls == job.expected_calls()
    # Replies the dead worker never received were asked again: that, and only that, was paid twice.
    lost_in_flight -= result.paid_calls
    assert 0 <= lost_in_flight <= 4
    report(
        1,
        "worker killed mid-call",
        f"SIGKILL of a worker (4 threads) with {in_flight} call(s) in flight; a second worker started",
        result,
        f"finished {took:.0f} s after the kill; {lost_in_flight} reply(ies) sent to the dead worker "
        f"were asked again (never recorded twice); {result.paid_calls} calls recorded, one per step",
    )
