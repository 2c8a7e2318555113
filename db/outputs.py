"""Steps' outputs: a step's parsed reply written with its model call and its step's completion
in one transaction (one statement on PostgreSQL), and the selection that answers a problem.

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from db.calls import NewCall, record_call
from db.claims import Claim
from db.jobs import TALLIES
from db.models import (
    ModelCall,
    Output,
    Problem,
    ProblemStatus,
    Selection,
    SharedText,
    Step,
    StepStatus,
    utcnow,
)
from db.session import compact_json
from db.state import StepCounts, step_counts
from rstar.problem_types.base import ProblemType
from rstar.problem_types.number import NUMBER
from rstar.records import sequence_index
from rstar.reports import judge
from rstar.strategies.base import SELECT_KEY, OutputView
from rstar.types import ParsedOutput

_st, _ct, _tt = Step.__table__, ModelCall.__table__, SharedText.__table__


def _output_writes(output: Any) -> tuple[Any, Any]:
    """The output's two inserts: plain (the call is recorded already), and, for PostgreSQL,
    one that also stores the call's shared texts not stored yet, records the new call and
    finishes the step, in data-modifying CTEs (one round trip where four cost four)."""
    # In the order of its parameters when given several (a step's later outputs, at once).
    plain = insert(output).returning(output.c.id, output.c.model_call_id, sort_by_parameter_order=True)
    texts = (
        postgresql.insert(_tt)
        .from_select(
            ["digest", "text"],
            select(
                func.unnest(bindparam("texts_digests", type_=postgresql.ARRAY(Text))),
                func.unnest(bindparam("texts_texts", type_=postgresql.ARRAY(Text))),
            ),
        )
        .on_conflict_do_nothing()
        .cte("new_texts")
    )
    call = (
        insert(_ct)
        .values({c.name: bindparam(f"call_{c.name}") for c in _ct.c if c.name != "id"})
        .returning(_ct.c.id)
        .cte("new_call")
    )
    finish = (
        update(_st)
        .where(_st.c.id == bindparam("finish_step_id"))
        .values(
            status=StepStatus.DONE.value,
            lease_until=None,
            error=None,
            attempts=bindparam("finish_attempts"),
            updated_at=bindparam("finish_now"),
        )
        .cte("finish_step")
    )
    combined = (
        insert(output)
        .values(
            model_call_id=select(call.c.id).scalar_subquery(),
            **{c.name: bindparam(f"out_{c.name}") for c in output.c if c.name not in ("id", "model_call_id")},
        )
        .add_cte(texts)
        .add_cte(call)
        .add_cte(finish)
        # Seen as they were when the statement began, after the caller locked the problem
        # (tasks/dispatch.py lock_problem): the step it finishes still running.
        .returning(
            output.c.id,
            output.c.model_call_id,
            *step_counts(bindparam("out_problem_id"), besides=bindparam("finish_step_id")),
        )
    )
    return plain, combined


_OUTPUT_WRITES = _output_writes(Output.__table__)


def _write_output(
    session: Session, writes: tuple[Any, Any], values: dict[str, Any], step_id: int, model_call: int | NewCall
) -> tuple[int, int, StepCounts | None]:
    """Insert a step's output (`values`, without its call), record its call when it is new, and
    mark the step done. Returns the output's id, its call's, and the problem's step counts where
    the statement read them (PostgreSQL, a new call)."""
    conn = session.connection()
    plain, combined = writes
    if isinstance(model_call, NewCall) and conn.dialect.name == "postgresql":
        now = utcnow()
        digests = sorted(model_call.texts)
        params = {f"out_{k}": v for k, v in values.items()}
        params.update({f"call_{k}": v for k, v in model_call.values.items()})
        params.update(
            out_created_at=now,
            call_created_at=now,
            finish_step_id=step_id,
            finish_attempts=model_call.values["attempt"],
            finish_now=now,
            texts_digests=digests,
            texts_texts=[model_call.texts[d] for d in digests],
        )
        row = conn.execute(combined, params).one()
        return row.id, row.model_call_id, StepCounts(row.failed, row.open)
    if isinstance(model_call, NewCall):
        model_call = record_call(session=session, call=model_call, count_attempt=False)
    row = conn.execute(plain, {**values, "model_call_id": model_call}).one()
    _finish_step(session, step_id)
    return row.id, row.model_call_id, None


@dataclass(frozen=True)
class Written:
    """What `save_outputs` wrote, as the plan in the same transaction needs it."""

    outputs: list[OutputView]
    """As `load_state` would read them back (so the plan need not read them)."""
    counts: StepCounts | None
    """The problem's steps, counted by the statement that finished the step (the step not
    open): on PostgreSQL, for a new call; else None (the plan counts them)."""


def save_outputs(
    *,
    session: Session,
    claim: Claim,
    outputs: Sequence[tuple[ParsedOutput, str | None]],
    model_call: int | NewCall,
    parent_id: int | None,
) -> Written:
    """Store a step's outputs, each with the text it came from (an unparsable reply is kept and
    flagged, and used like any other), record their call when it is new, and mark the step done.
    A step writes one output at least: a strategy that parsed none gets the reply kept as one."""
    assert claim.model is not None, f"step {claim.key} runs no model"
    if not outputs:
        outputs = [(ParsedOutput(payload={}, parse_error="the strategy made no output of the reply"), None)]
    call = model_call.values if isinstance(model_call, NewCall) else _recorded(session, model_call)
    rows: list[dict[str, Any]] = []
    for seq, (parsed, text) in enumerate(outputs):
        # Its text stored once: as its call's sequence when it is one verbatim (rstar/records.py).
        text_seq = sequence_index(text, call["response_text"], call["sequences"], first=seq)
        rows.append(
            {
                "problem_id": claim.problem_id,
                "step_id": claim.step_id,
                "seq": seq,
                "round": claim.round,
                "model": claim.model,
                "kind": claim.kind,
                "parent_id": parent_id,
                "text": text if text_seq is None else None,
                "text_seq": text_seq,
                "payload": parsed.payload,
                "answer": parsed.answer,
                "parse_error": _with_cut_note(parsed.parse_error, call["finish_reason"]),
            }
        )
    first_id, call_id, counts = _write_output(session, _OUTPUT_WRITES, rows[0], claim.step_id, model_call)
    ids = [first_id]
    if len(rows) > 1:  # the others point at the first's call, in one statement
        more = [{**r, "model_call_id": call_id} for r in rows[1:]]
        ids += session.connection().execute(_OUTPUT_WRITES[0], more).scalars().all()
    views = [
        OutputView(
            id=output_id,
            step_key=claim.key,
            kind=r["kind"],
            model=r["model"],
            round=r["round"],
            parent_id=r["parent_id"],
            # As the column gives it back: through JSON (lists for tuples, string keys).
            payload=json.loads(compact_json(r["payload"])) if r["payload"] else {},
            answer=r["answer"],
            text=text,  # `Output.text` reads it back from the call when it is not stored here
            parse_error=r["parse_error"],
            seq=r["seq"],
            endpoint=call["endpoint"],
        )
        for output_id, r, (_parsed, text) in zip(ids, rows, outputs, strict=True)
    ]
    return Written(views, counts)


_RECORDED = select(
    ModelCall.finish_reason, ModelCall.response_text, ModelCall.sequences, ModelCall.endpoint
).where(ModelCall.id == bindparam("call_id"))


def _recorded(session: Session, call_id: int) -> dict[str, Any]:
    """What the outputs of a call recorded before (a reused one) need of it."""
    return dict(session.execute(_RECORDED, {"call_id": call_id}).one()._mapping)


def _with_cut_note(parse_error: str | None, finish_reason: str | None) -> str | None:
    """Say so when an unparsable reply was cut by the token limit (the usual reason)."""
    if parse_error is None:
        return None
    if finish_reason == "length":
        return f"{parse_error} (the reply was cut at the token limit: finish_reason=length)"
    return parse_error


_INSERT_SELECTION = insert(Selection.__table__)
_ANSWER_PROBLEM = (
    update(Problem.__table__)
    .where(Problem.__table__.c.id == bindparam("problem_id"))
    .values(
        status=ProblemStatus.ANSWERED.value,
        final_answer=bindparam("answer"),
        rounds_used=bindparam("rounds_used"),
        finished_at=bindparam("now"),
        correct=bindparam("correct"),
        **TALLIES,
    )
)
_ADD_DONE_STEP = insert(Step.__table__).values(status=StepStatus.DONE.value)


def save_selection(
    *,
    session: Session,
    problem_id: int,
    select_step_id: int | None,
    round_: int,
    output_id: int | None,
    answer: str | None,
    reason: str,
    rounds_used: int,
    reference_answer: str | None,
    kind: ProblemType = NUMBER,
) -> None:
    """Record the chosen answer and why, answer the problem (judged against `reference_answer`,
    with its tallies) and mark its select step done (made here, done, unless a queued one exists:
    see tasks/select.py)."""
    conn = session.connection()
    conn.execute(
        _INSERT_SELECTION,
        {"problem_id": problem_id, "output_id": output_id, "answer": answer, "reason": reason},
    )
    conn.execute(
        _ANSWER_PROBLEM,
        {
            "problem_id": problem_id,
            "answer": answer,
            "rounds_used": rounds_used,
            "now": utcnow(),
            "correct": None
            if reference_answer is None
            else judge("answered", answer, reference_answer, kind),
        },
    )
    if select_step_id is None:
        conn.execute(
            _ADD_DONE_STEP,
            {"problem_id": problem_id, "key": SELECT_KEY, "kind": "select", "model": None, "round": round_},
        )
    else:
        _finish_step(session, select_step_id)


_FINISH_STEP = (
    update(Step.__table__)
    .where(Step.__table__.c.id == bindparam("step_id"))
    .values(
        status=StepStatus.DONE.value,
        lease_until=None,
        error=None,
        # The attempts recorded, counted here rather than by a second update when the reply that
        # finishes the step is recorded in the same transaction (record_call(count_attempt=False)).
        attempts=func.coalesce(
            select(func.max(ModelCall.__table__.c.attempt))
            .where(ModelCall.__table__.c.step_id == Step.__table__.c.id)
            .scalar_subquery(),
            Step.__table__.c.attempts,
        ),
    )
)


def _finish_step(session: Session, step_id: int) -> None:
    session.flush()  # an output added through the ORM (the selection) goes first
    session.connection().execute(_FINISH_STEP, {"step_id": step_id})
