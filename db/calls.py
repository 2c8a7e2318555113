"""Model calls: every attempt recorded, failed ones too (a reply that completes its step is
recorded with the step's output: db/outputs.py).

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import CallOutcome, ModelCall, SharedText, Step
from rstar.records import compact_request, compact_response, expanded_request, shared_digests

_st, _ct = Step.__table__, ModelCall.__table__


@dataclass(frozen=True)
class NewCall:
    """A model call to record (`new_call`): on its own (`record_call`), or in the statement that
    writes its step's output (`db.outputs.save_solution`, `save_review`)."""

    values: dict[str, Any]
    texts: dict[str, str] = field(default_factory=dict)
    """The shared texts its stored request names ({digest: text}), written with it."""


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
    """`sequences` defaults to 1 for an ok call, else 0. The request is stored with its system
    messages apart, and the response without the texts `response_text` holds (rstar/records.py);
    `request_hash` is the caller's, of the request as sent."""
    sequences = sequences if sequences is not None else int(outcome == CallOutcome.OK)
    request, texts = compact_request(request)
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
        },
        texts,
    )


_INSERT_TEXTS = {
    "postgresql": postgresql.insert(SharedText.__table__).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(SharedText.__table__).on_conflict_do_nothing(),
}


def save_texts(conn: Connection, texts: Mapping[str, str]) -> None:
    """Store shared texts not stored yet (a text, once written, never changes: its key is its
    digest). In digest order, so concurrent writers lock in the same order."""
    if texts:
        rows = [{"digest": d, "text": texts[d]} for d in sorted(texts)]
        conn.execute(_INSERT_TEXTS[conn.dialect.name], rows)


def shared_texts(*, session: Session, digests: Iterable[str]) -> dict[str, str]:
    """The shared texts of these digests ({digest: text}; one not stored is left out)."""
    wanted = sorted(set(digests))
    if not wanted:
        return {}
    found = session.execute(select(SharedText.digest, SharedText.text).where(SharedText.digest.in_(wanted)))
    return dict(found.tuples().all())


def requests_as_sent(*, session: Session, calls: Iterable[ModelCall]) -> dict[int, Any]:
    """Each call's request as sent ({call id: request}), its shared texts read in one query."""
    calls = list(calls)
    texts = shared_texts(session=session, digests=(d for c in calls for d in shared_digests(c.request)))
    return {c.id: expanded_request(c.request, texts) for c in calls}


# The per-call writes, prebuilt Core statements (the ORM's unit of work cost several times the CPU).
_INSERT_CALL = insert(_ct).returning(_ct.c.id)
_SET_ATTEMPTS = update(_st).where(_st.c.id == bindparam("step_id")).values(attempts=bindparam("new_attempts"))


def record_call(*, session: Session, call: NewCall, count_attempt: bool = True) -> int:
    """Insert a model call and count the attempt on its step (unless the step is finished in the
    same transaction, which counts it: `count_attempt=False`); the call's id."""
    conn = session.connection()
    save_texts(conn, call.texts)
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
