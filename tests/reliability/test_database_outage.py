"""Fault 3: the database is unreachable for a while (a TCP proxy between the workers and
PostgreSQL drops every connection and refuses new ones). Tasks retry; replies already paid for are
held and recorded when the database is back; the job completes."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.reliability.harness import (
    TcpProxy,
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

OUTAGE_S = 6


def test_database_unreachable_for_a_while(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    job = gsm_job(tmp_path, 8)
    direct = make_url(postgres_url)
    proxy = TcpProxy(direct.port or 5432)
    via_proxy = direct.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        with servers(slow(job.oracle_a, 0.4), slow(job.oracle_b, 0.4)) as (a, b):
            env = env_for(postgres_url, redis_url, a, b)
            assert rstar(["db", "upgrade"], env).returncode == 0
            job_id = submit(env, job.path)
            worker_env = env_for(via_proxy, redis_url, a, b)
            with celery_worker(worker_env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log") as w:
                wait_until(lambda: ok_calls(postgres_url) >= 8, timeout=60, what="some recorded calls")
                assert a.wait_for_in_flight(1, timeout=5) or b.wait_for_in_flight(1, timeout=5)
                proxy.cut()
                cut_at = ok_calls(postgres_url)
                time.sleep(OUTAGE_S)
                during = ok_calls(postgres_url) - cut_at
                proxy.restore()
                back = time.monotonic()
                wait_finished(postgres_url, job_id, timeout=120)
                took = time.monotonic() - back
                assert w.poll() is None
            served = served_ok(a, b)
    finally:
        proxy.close()

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert during == 0  # nothing reached the database while it was cut off
    assert result.answered == len(job.rows) and result.failed == 0
    # Every reply the servers sent was recorded once: none was lost to the outage and asked again.
    assert result.paid_calls == job.expected_calls() == served
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "database unavailable" in log
    held = log.count("database unavailable while recording")
    report(
        3,
        "database unreachable",
        f"TCP proxy to PostgreSQL cut for {OUTAGE_S} s mid-job (connections dropped, new ones refused)",
        result,
        f"{held} retry(ies) of recording a reply held through the outage; finished {took:.0f} s after "
        f"the database was back; server replies {served} = calls recorded {result.paid_calls}",
    )
