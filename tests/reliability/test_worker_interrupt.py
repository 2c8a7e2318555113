"""Ctrl-C on a worker with model calls in flight: it leaves within its grace, quietly, and the calls
it left are asked again by another worker (every problem answered once); a second Ctrl-C leaves at
once. Celery alone waited for every call (up to the request timeout) and then printed tracebacks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.reliability.harness import (
    assert_clean,
    audit,
    env_for,
    gsm_job,
    queues_for,
    report,
    servers,
    slow,
    submit,
    wait_finished,
)
from tests.support import celery_worker, rstar

# Replies take 60 s: Celery's warm shutdown would wait that long; the grace here is 2 s.
SLOW_REPLY = 60.0


def _interrupt(worker: subprocess.Popen[bytes], times: int) -> float:
    """Send SIGINT (what Ctrl-C sends) `times` times, a second apart; seconds until it exited."""
    started = time.monotonic()
    for i in range(times):
        if i:
            time.sleep(1.0)
        worker.send_signal(signal.SIGINT)
    worker.wait(timeout=60)
    return time.monotonic() - started


def test_ctrl_c_leaves_within_the_grace_and_another_worker_answers_what_it_left(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    job = gsm_job(tmp_path, 4)
    with servers(slow(job.oracle_a, SLOW_REPLY), slow(job.oracle_b, SLOW_REPLY)) as (a, b):
        env = env_for(postgres_url, redis_url, a, b, RSTAR_REQUEST_TIMEOUT="300", RSTAR_SHUTDOWN_GRACE="2")
        assert rstar(["db", "upgrade"], env).returncode == 0
        job_id = submit(env, job.path)
        log = tmp_path / "interrupted.log"
        with celery_worker(env, queues_for(a, b), concurrency=4, log=log) as worker:
            assert a.wait_for_in_flight(1, timeout=60) and b.wait_for_in_flight(1, timeout=60)
            in_flight = a.in_flight + b.in_flight
            took = _interrupt(worker, 1)
        printed = log.read_text(errors="replace")
        assert worker.returncode == 0, printed
        assert took < SLOW_REPLY / 2, f"took {took:.0f} s: it waited for the calls"
        assert "Traceback" not in printed and "NotImplementedError" not in printed, printed
        assert "worker: stopping: no new work" in printed and "left with" in printed, printed

        # The calls it left: their replies now come at once, to the worker that asks again.
        a.responder, b.responder = job.oracle_a, job.oracle_b
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "second.log"):
            wait_finished(postgres_url, job_id, timeout=180)

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    assert result.paid_calls == job.expected_calls()
    report(
        10,
        "worker stopped with Ctrl-C",
        f"SIGINT to a worker (4 threads) with {in_flight} call(s) in flight, replies taking "
        f"{SLOW_REPLY:.0f} s; a second worker started",
        result,
        f"it left after {took:.1f} s (RSTAR_SHUTDOWN_GRACE 2 s), no traceback; the calls it left were "
        "asked again once their leases expired (never recorded twice)",
    )


def test_a_second_ctrl_c_leaves_at_once_and_quietly(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    job = gsm_job(tmp_path, 2)
    with servers(slow(job.oracle_a, SLOW_REPLY), slow(job.oracle_b, SLOW_REPLY)) as (a, b):
        env = env_for(postgres_url, redis_url, a, b, RSTAR_REQUEST_TIMEOUT="300", RSTAR_SHUTDOWN_GRACE="120")
        assert rstar(["db", "upgrade"], env).returncode == 0
        submit(env, job.path)
        log = tmp_path / "worker.log"
        with celery_worker(env, queues_for(a, b), concurrency=2, log=log) as worker:
            assert a.wait_for_in_flight(1, timeout=60)
            took = _interrupt(worker, 2)
    printed = log.read_text(errors="replace")
    assert worker.returncode == 130, printed
    assert took < SLOW_REPLY / 2, f"took {took:.0f} s"
    assert "Traceback" not in printed and "left at once" in printed, printed
