"""Fault 2: Redis restarts during a job and loses every message (its own redis-server, no
persistence). The same workers reconnect by themselves and the job completes."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select

from db.models import ModelCall, utcnow
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
from tests.support import RedisServer, celery_worker, rstar, wait_until


def test_redis_restart_mid_job(postgres_url: str, tmp_path: Path) -> None:
    job = gsm_job(tmp_path, 8)
    with RedisServer(tmp_path) as broker, servers(slow(job.oracle_a, 0.3), slow(job.oracle_b, 0.3)) as (a, b):
        env = env_for(postgres_url, broker.url, a, b)
        assert rstar(["db", "upgrade"], env).returncode == 0
        job_id = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log") as worker:
            wait_until(lambda: ok_calls(postgres_url) >= 8, timeout=60, what="some recorded calls")
            before = ok_calls(postgres_url)
            broker.stop()  # every queued, reserved and scheduled-retry message is gone
            time.sleep(3)
            broker.start()
            back_at = utcnow()
            restarted = time.monotonic()
            wait_finished(postgres_url, job_id, timeout=120)
            took = time.monotonic() - restarted
            assert worker.poll() is None  # the same process, reconnected by itself
        served = served_ok(a, b)

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    assert result.paid_calls == job.expected_calls() == served  # nothing paid twice
    with session_scope(postgres_url) as s:
        after_restart = s.scalar(
            select(func.count()).select_from(ModelCall).where(ModelCall.created_at > back_at)
        )
    assert after_restart and after_restart > 0
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "the broker lost its messages" in log
    report(
        2,
        "Redis restarted",
        "redis-server (no persistence) stopped for 3 s mid-job and started again, empty",
        result,
        f"{before} calls recorded before the restart, {after_restart} after; the same worker "
        f"reconnected; finished {took:.0f} s after Redis was back; lost messages re-sent by the "
        "recovery sweep",
    )
