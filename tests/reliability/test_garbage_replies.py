"""Fault 5: the inference server returns garbage. Each reply is recorded as a failed call (and
retried) or as an unparsable one, with the reason; the worker never crashes; nothing huge is
stored."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from db.models import ModelCall, Output, Problem
from db.session import session_scope
from tests.fakeserver import Reply
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
from tests.support import celery_worker, review_rows, rstar, solution_rows
from workers.client import MAX_STORED_BODY

TEN_MB = 10 * 1024 * 1024


def _chat(content: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "fake",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


GARBAGE = {
    "non-JSON body": Reply(raw_body=b"<html>502 Bad Gateway</html>"),
    "JSON of the wrong shape": Reply(raw_body=b'{"generated": "text", "choices": null}'),
    "JSON array": Reply(raw_body=b"[1, 2, 3]"),
    "10 MB chat completion": Reply(raw_body=_chat("7 " * (TEN_MB // 2))),
    "10 MB of junk": Reply(raw_body=b"\x00\xff" * (TEN_MB // 2)),
    "empty text": Reply(text=""),
    "text cut by the length limit": Reply(
        text='{"steps": ["Read the problem.", "Compute', finish_reason="length"
    ),
}


def test_garbage_replies_are_recorded_never_crash(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    job = gsm_job(tmp_path, 4)
    with servers(job.oracle_a, job.oracle_b) as (a, b):
        env = env_for(postgres_url, redis_url, a, b, RSTAR_MAX_RETRIES="10")
        assert rstar(["db", "upgrade"], env).returncode == 0
        a.inject(*GARBAGE.values())
        job_id = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=2, log=tmp_path / "worker.log") as worker:
            wait_finished(postgres_url, job_id, timeout=120)
            assert worker.poll() is None  # never crashed
        assert a.pending_faults == 0

    result = audit(postgres_url, job_id, lines=len(job.rows))
    assert_clean(result)
    assert result.answered == len(job.rows) and result.failed == 0
    with session_scope(postgres_url) as s:
        pids = select(Problem.id).where(Problem.job_id == job_id)
        calls = s.scalars(select(ModelCall).where(ModelCall.problem_id.in_(pids))).all()
        outputs = [
            *solution_rows(s, Output.problem_id.in_(pids)),
            *review_rows(s, Output.problem_id.in_(pids)),
        ]
    errors = [c.error or "" for c in calls if c.outcome == "retryable_error"]
    assert len(errors) == 5
    assert sum("MalformedReplyError" in e and "not JSON" in e for e in errors) == 3  # html, array, junk
    assert sum("not a chat completion" in e for e in errors) == 1
    assert sum("too large: 10485760 characters" in e for e in errors) == 1
    by_call = {o.model_call_id: o for o in outputs}
    empty = [c for c in calls if c.outcome == "ok" and c.response_text == ""]
    cut = [c for c in calls if c.outcome == "ok" and c.finish_reason == "length"]
    assert len(empty) == 1 and len(cut) == 1
    assert by_call[empty[0].id].parse_error  # stored, flagged unparsable, and the job went on
    assert "finish_reason=length" in (by_call[cut[0].id].parse_error or "")
    # The audit trail keeps the start of anything huge, never megabytes.
    assert max(len(c.response_text or "") for c in calls) < MAX_STORED_BODY + 100
    assert max(len(json.dumps(c.response or {})) for c in calls) < MAX_STORED_BODY
    assert "Traceback" not in (tmp_path / "worker.log").read_text(errors="replace")
    report(
        5,
        "garbage replies",
        "model A replies: non-JSON, wrong-shape JSON, a JSON array, a 10 MB chat completion, "
        "10 MB of junk, empty text, text cut by the length limit",
        result,
        "5 recorded as retryable_error with the reason (not JSON / not a chat completion / too large) "
        "and retried; empty and cut replies recorded ok, their output flagged unparsable "
        "(cut: 'finish_reason=length'); worker alive, no traceback, nothing over 64 KiB stored",
    )
