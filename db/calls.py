"""Model calls: every attempt recorded, failed ones too (a reply that completes its step is
recorded with the step's output: db/outputs.py).

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from db.models import CallOutcome, ModelCall, Step
from rstar.records import compact_response

_st, _ct = Step.__table__, ModelCall.__table__


@dataclass(frozen=True)
class NewCall:
    """A model call to record (`new_call`): on its own (`record_call`), or in the statement that
    writes its step's output (`db.outputs.save_solution`, `save_review`)."""

    values: dict[str, Any]


def new_call(
    *,
    step_id: int,
    problem_id: int,
    attempt: int,
    endpoint: str,
    server_kind: str | None,
    model: str | None,
    request: dict[str, Any],
    response: dict[str, Any] | None,
    response_text: str | None,
    finish_reason: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    latency_ms: float | None,
    outcome: CallOutcome,
    http_status: int | None = None,
    error: str | None = None,
    request_hash: str | None = None,
    reused_from_id: int | None = None,
    requests: int = 1,
    sequences: int | None = None,
) -> NewCall:
    """`sequences` defaults to 1 for an ok call, else 0. The response is stored without the texts
    `response_text` holds (rstar/records.py)."""
    sequences = sequences if sequences is not None else int(outcome == CallOutcome.OK)
    return NewCall(
        {
            "step_id": step_id,
            "problem_id": problem_id,
            "attempt": attempt,
            "endpoint": endpoint,
            "server_kind": server_kind,
            "model": model,
            "request": request,
            "response": compact_response(response, response_text, sequences),
            "response_text": response_text,
            "finish_reason": finish_reason,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_ms": latency_ms,
            "outcome": outcome.value,
            "http_status": http_status,
            "error": error,
            "request_hash": request_hash,
            "reused_from_id": reused_from_id,
            "requests": requests,
            "sequences": sequences,
        }
    )


# The per-call writes, prebuilt Core statements (the ORM's unit of work cost several times the CPU).
_INSERT_CALL = insert(_ct).returning(_ct.c.id)
_SET_ATTEMPTS = update(_st).where(_st.c.id == bindparam("step_id")).values(attempts=bindparam("new_attempts"))


def record_call(*, session: Session, call: NewCall, count_attempt: bool = True) -> int:
    """Insert a model call and count the attempt on its step (unless the step is finished in the
    same transaction, which counts it: `count_attempt=False`); the call's id."""
    conn = session.connection()
    call_id: int = conn.execute(_INSERT_CALL, call.values).scalar_one()
    if count_attempt:
        conn.execute(
            _SET_ATTEMPTS, {"step_id": call.values["step_id"], "new_attempts": call.values["attempt"]}
        )
    return call_id


def attempt_recorded(*, session: Session, step_id: int, attempt: int) -> bool:
    found = session.scalar(
        select(ModelCall.id).where(ModelCall.step_id == step_id, ModelCall.attempt == attempt)
    )
    return found is not None
