"""Fault 7: `rstar cancel JOB` stops a running job within seconds and nothing more is sent to the
servers for it; `rstar resume JOB` continues it to the end without repeating any call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from db.models import Job, Problem, Step
from db.session import session_scope
from tests.fakeserver import FakeRequest, Reply
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
from tests.support import celery_worker, rstar, wait_until


class Arrivals:
    """When each request reached a server (monotonic clock)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()

    def wrap(self, responder: Callable[[FakeRequest], Reply | str]) -> Callable[[FakeRequest], Reply | str]:
        def respond(request: FakeRequest) -> Reply | str:
            with self._lock:
                self.times.append(time.monotonic())
            return responder(request)

        return respond


def test_cancel_stops_within_seconds_and_resume_continues(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    job = gsm_job(tmp_path, 10)
    seen = Arrivals()
    with servers(seen.wrap(slow(job.oracle_a, 0.5)), seen.wrap(slow(job.oracle_b, 0.5))) as (a, b):
        env = env_for(postgres_url, redis_url, a, b)
        assert rstar(["db", "upgrade"], env).returncode == 0
        job_id = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log"):
            wait_until(lambda: ok_calls(postgres_url) >= 8, timeout=60, what="some recorded calls")
            in_flight = a.in_flight + b.in_flight
            cancel_started = time.monotonic()
            cancelled = rstar(["cancel", str(job_id)], env)
            assert cancelled.returncode == 0, cancelled.stderr
            stopped_at = time.monotonic()
            time.sleep(4)  # plenty of time for anything still queued to reach a server, if it could
            after_cancel = [t - stopped_at for t in seen.times if t > stopped_at]
            while_cancelling = sum(1 for t in seen.times if cancel_started < t <= stopped_at)
            quiet_after = max(end for _, end in (*a.intervals, *b.intervals)) - cancel_started
            sent_during = len(seen.times)
            # The calls in flight at the cancel finished and were recorded; nothing is running.
            assert ok_calls(postgres_url) == served_ok(a, b)
            with session_scope(postgres_url) as s:
                assert s.get(Job, job_id).status == "cancelled"  # type: ignore[union-attr]
                running = s.scalar(select(func.count()).select_from(Step).where(Step.status == "running"))
                counts = dict(
                    s.execute(
                        select(Problem.status, func.count())
                        .where(Problem.job_id == job_id)
                        .group_by(Problem.status)
                    ).all()
                )
            assert running == 0
            assert counts.get("cancelled", 0) > 0
            status = rstar(["status", str(job_id)], env)
            assert "cancelled" in status.stdout
            recorded_at_cancel = ok_calls(postgres_url)

            resumed = rstar(["resume", str(job_id)], env)
            assert resumed.returncode == 0, resumed.stderr
            wait_finished(postgres_url, job_id)
        served = served_ok(a, b)

    # Nothing was sent once the cancel had returned (a request already being claimed at that very
    # moment may arrive within a few milliseconds).
    assert all(t < 0.2 for t in after_cancel), after_cancel
    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    assert result.paid_calls == job.expected_calls() == served  # resume repeated no call
    report(
        7,
        "cancel, then resume",
        f"`rstar cancel` with {in_flight} calls in flight; 4 s wait; `rstar resume`",
        result,
        f"servers idle {quiet_after:.1f} s after `rstar cancel` started (the command itself takes "
        f"{stopped_at - cancel_started:.1f} s); {while_cancelling} request(s) sent while it ran, "
        f"{len(after_cancel)} after it returned; {sent_during} sent in all before resume; "
        f"{counts.get('cancelled', 0)} problems cancelled, {recorded_at_cancel} calls recorded "
        f"(in-flight ones included); after resume all {result.answered} answered with "
        f"{result.paid_calls} calls, none repeated",
        answered=f"{counts.get('answered', 0)} at cancel → {result.answered} after resume",
    )


def test_resume_resends_messages_lost_between_commit_and_enqueue(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The steps are committed but their messages never reach the broker (here: deleted from the
    queues, the broker itself intact): nothing can happen until `rstar resume` re-sends them."""
    import redis

    job = gsm_job(tmp_path, 3)
    with servers(job.oracle_a, job.oracle_b) as (a, b):
        env = env_for(postgres_url, redis_url, a, b)
        assert rstar(["db", "upgrade"], env).returncode == 0
        job_id = submit(env, job.path)
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.delete(*queues_for(a, b)) >= 1  # the messages are gone
        finally:
            client.close()
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log"):
            time.sleep(3)  # workers and recovery sweeps find nothing to do: no message, no dead lease
            assert ok_calls(postgres_url) == 0
            resumed = rstar(["resume", str(job_id)], env)
            assert resumed.returncode == 0, resumed.stderr
            assert "6 queued step(s) re-sent" in resumed.stderr
            wait_finished(postgres_url, job_id)
        served = served_ok(a, b)
    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.paid_calls == job.expected_calls() == served
