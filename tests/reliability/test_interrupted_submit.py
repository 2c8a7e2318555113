"""Fault: `rstar submit` is SIGKILLed while it sends a large job's first messages (a Ctrl-C, an OOM
kill or a dropped SSH session does the same). The job's id was already out; the steps it never
sent have no message anywhere, and the workers' recovery sweep sends them once their queue is
empty: every problem is answered once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from tasks.recovery import queue_length
from tests.reliability.harness import (
    assert_clean,
    audit,
    env_for,
    gsm_job,
    queues_for,
    report,
    servers,
    wait_finished,
)
from tests.support import REPO, celery_worker, rstar, wait_until
from workers.celery_app import queue_for_endpoint

PROBLEMS = 200  # 400 first steps: the sending takes a while, and is killed after the first ones


def test_a_submit_killed_while_sending_leaves_a_job_that_finishes_by_itself(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    job = gsm_job(tmp_path, PROBLEMS)
    with servers(job.oracle_a, job.oracle_b) as (a, b):
        env = env_for(postgres_url, redis_url, a, b, RSTAR_REQUEUE_GRACE="2")
        assert rstar(["db", "upgrade"], env).returncode == 0
        broker = redis.Redis.from_url(redis_url)
        model_queues = [queue_for_endpoint(a.url), queue_for_endpoint(b.url)]

        def sent() -> int:
            return sum(queue_length(broker, q) for q in model_queues)

        submit = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "submit", str(job.path)],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_until(
            lambda: sent() >= 1 or submit.poll() is not None, timeout=120, interval=0.002, what="sending"
        )
        submit.kill()  # SIGKILL mid-way: no clean-up, no last message
        out, _ = submit.communicate(timeout=30)
        at_kill = sent()
        assert at_kill < 2 * PROBLEMS, (
            f"the submit finished sending ({at_kill} messages) before it was killed"
        )
        job_id = int(out.decode().split()[0])  # the id came out before the messages went
        with celery_worker(env, queues_for(a, b), concurrency=8, log=tmp_path / "worker.log"):
            wait_finished(postgres_url, job_id, timeout=300)
        broker.close()

    result = audit(postgres_url, job_id, lines=PROBLEMS)
    assert_clean(result)
    assert result.answered == PROBLEMS and result.failed == 0
    assert result.paid_calls == job.expected_calls()
    report(
        9,
        "submit killed while sending",
        f"SIGKILL of `rstar submit` of {PROBLEMS} problems after {at_kill} of {2 * PROBLEMS} first messages",
        result,
        "the job id was printed before the sending; the steps never sent were sent by the recovery "
        "sweep once their queues were empty (RSTAR_REQUEUE_GRACE 2 s here, 180 s by default)",
    )
