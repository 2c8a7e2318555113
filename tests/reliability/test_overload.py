"""Fault 4: the inference server answers 429 for a stretch, then 503, then hangs past the timeout,
then comes back. The job completes; every failed attempt is in the audit trail; retries are
bounded and spaced by backoff with jitter."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from pathlib import Path

from sqlalchemy import select

from db.models import ModelCall, Problem
from db.session import session_scope
from tasks.base import backoff_delay
from tests.fakeserver import Reply
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
from workers.settings import Settings

FAULTS = [Reply(status=429)] * 6 + [Reply(status=503)] * 4 + [Reply(hang=True)] * 3
MAX_RETRIES = len(FAULTS)  # one unlucky step could meet every fault in turn: it must still pass
BACKOFF, BACKOFF_MAX = 0.2, 1.0


def test_backoff_is_bounded_exponential_with_full_jitter() -> None:
    settings = Settings(retry_backoff=BACKOFF, retry_backoff_max=BACKOFF_MAX)
    saved = random.getstate()
    random.seed(13)  # the same draws every run: no flaky statistics
    try:
        for retries in range(8):
            cap = min(BACKOFF_MAX, BACKOFF * 2**retries)
            samples = [backoff_delay(retries, settings) for _ in range(300)]
            assert all(0 <= s <= cap for s in samples)
            # Full jitter spans the whole window [0, cap], not only its upper half.
            assert sum(s < cap / 2 for s in samples) > 100 and min(samples) < cap / 10
            assert abs(statistics.mean(samples) - cap / 2) < cap / 10
    finally:
        random.setstate(saved)


def test_429_then_503_then_hang_then_back(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    job = gsm_job(tmp_path, 6)
    with servers(slow(job.oracle_a, 0.1), job.oracle_b) as (a, b):
        env = env_for(
            postgres_url,
            redis_url,
            a,
            b,
            RSTAR_MAX_RETRIES=str(MAX_RETRIES),
            RSTAR_REQUEST_TIMEOUT="1",
            RSTAR_RETRY_BACKOFF=str(BACKOFF),
            RSTAR_RETRY_BACKOFF_MAX=str(BACKOFF_MAX),
        )
        assert rstar(["db", "upgrade"], env).returncode == 0
        a.inject(*FAULTS)  # the next 13 requests to A, whichever steps send them
        job_id = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=4, log=tmp_path / "worker.log") as worker:
            wait_finished(postgres_url, job_id, timeout=120)
            assert worker.poll() is None
        assert a.pending_faults == 0
        statuses = a.status_counts

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    assert statuses[429] == 6 and statuses[503] == 4
    with session_scope(postgres_url) as s:
        calls = s.scalars(
            select(ModelCall)
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id)
            .order_by(ModelCall.step_id, ModelCall.attempt)
        ).all()
    failed = [c for c in calls if c.outcome == "retryable_error"]
    # Each fault is one recorded attempt, with its status and reason.
    assert len(failed) == len(FAULTS) == result.retryable_errors
    assert sum(c.http_status == 429 and "OverloadedError" in (c.error or "") for c in failed) == 6
    assert sum(c.http_status == 503 and "UnavailableError" in (c.error or "") for c in failed) == 4
    assert sum("ModelTimeoutError" in (c.error or "") for c in failed) == 3
    by_step: dict[int, list[ModelCall]] = defaultdict(list)
    for c in calls:
        by_step[c.step_id].append(c)
    gaps: list[float] = []
    for attempts in by_step.values():
        # Attempts numbered 1..n, one success, the last; never more than the budget.
        assert [c.attempt for c in attempts] == list(range(1, len(attempts) + 1))
        assert [c.outcome for c in attempts][-1] == "ok" and len(attempts) <= MAX_RETRIES + 1
        for k in range(1, len(attempts)):
            gap = (attempts[k].created_at - attempts[k - 1].created_at).total_seconds()
            cap = min(BACKOFF_MAX, BACKOFF * 2 ** (k - 1))
            # Full jitter has no floor; the wait is bounded by its cap (plus the next attempt's
            # own latency, and slack for a loaded machine).
            latency = (attempts[k].latency_ms or 0.0) / 1000.0
            assert 0 <= gap <= cap + latency + 2.0, (k, gap, latency)
            gaps.append(gap)
    most = max(len(v) for v in by_step.values())
    report(
        4,
        "overload, errors, hangs",
        "13 replies of model A in a row: 6× HTTP 429, 4× HTTP 503, 3× no reply (timeout 1 s); then normal",
        result,
        f"{len(failed)} failed attempts recorded as retryable_error (status, reason, latency), "
        f"at most {most} attempts for one step (budget {MAX_RETRIES + 1}); gaps between attempts "
        f"{min(gaps):.2f}-{max(gaps):.2f} s (backoff 0.2 s doubling to 1 s, full jitter)",
    )
