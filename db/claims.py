"""A problem's steps: adding the ones a plan calls for, and claiming one for a task run under a
lease, giving it back or failing it (a step is finished with its output: db/outputs.py).

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    TERMINAL_PROBLEM_STATES,
    CallOutcome,
    Job,
    JobStatus,
    ModelCall,
    Problem,
    ProblemStatus,
    Step,
    StepStatus,
    utcnow,
)
from db.state import OutputCache, StateStep, load_state, remembered_outputs, steps_from_json, steps_json
from rstar import roster
from rstar.strategies.base import ProblemState


@dataclass(frozen=True)
class Claim:
    """What a task needs to run its step, read in the claiming transaction."""

    step_id: int
    problem_id: int
    job_id: int
    key: str
    kind: str
    model: str | None
    """The roster name of the model the step runs on."""
    round: int
    attempts: int
    endpoint: str | None
    """That model's URL (without credentials): its first replica's, which names it in request hashes."""
    strategy: str
    params: dict[str, Any]
    state: ProblemState
    recorded: ModelCall | None
    """A successful call already recorded for this step (a crash came between call and output)."""
    parent_id: int | None = None
    """The output the step's output extends or judges: filled in by the task from the strategy."""
    retry_base: int = 0
    """Attempts made before the current retry budget (see `Step.retry_base`)."""
    resume_from: int | None = None
    """The job whose identical recorded calls this job reuses (`submit --resume-from`)."""
    replicas: tuple[str, ...] = ()
    """Every server of the model, `endpoint` first (rstar/roster.py)."""
    problem_type: str = "number"
    """The job's (`rstar.problem_types`): how the strategy asks and reads answers."""
    prefer: str | None = None
    """The replica that served the parent output: filled in by the task (workers/replicas.py)."""
    outputs: OutputCache = field(default_factory=OutputCache)
    """The outputs `state` read, for the plan after the call to read only the rest."""


# claim_step's statements, prebuilt (it runs once per model step).
_st, _pt, _jt, _ct = Step.__table__, Problem.__table__, Job.__table__, ModelCall.__table__
# The id of an ok call already recorded for the step (a crash came between the call and the output).
_RECORDED_ID = (
    select(_ct.c.id)
    .where(_ct.c.step_id == _st.c.id, _ct.c.outcome == CallOutcome.OK.value)
    .order_by(_ct.c.id)
    .limit(1)
    .scalar_subquery()
    .label("recorded_id")
)
# A problem with what a step's work needs of its job (the claim's read, and the plan's lock in
# tasks/dispatch.py).
PROBLEM_AND_JOB = (
    _pt.c.id.label("problem_id"),
    _pt.c.status.label("problem_status"),
    _pt.c.question,
    _pt.c.reference_answer,
    _jt.c.id.label("job_id"),
    _jt.c.status.label("job_status"),
    _jt.c.strategy,
    _jt.c.params,
    _jt.c.models,
    _jt.c.problem_type,
)
# What a Claim needs besides the step's attempts.
_CLAIM_COLUMNS = (
    _st.c.key,
    _st.c.kind,
    _st.c.model,
    _st.c.round,
    *PROBLEM_AND_JOB,
    _jt.c.resume_from_id,
    _RECORDED_ID,
)
_CLAIM_READ = (
    select(*_CLAIM_COLUMNS)
    .select_from(_st.join(_pt, _pt.c.id == _st.c.problem_id).join(_jt, _jt.c.id == _pt.c.job_id))
    .where(_st.c.id == bindparam("step_id"))
)
# Who may take the step: see claim_step.
_TAKEABLE = or_(
    _st.c.status == StepStatus.QUEUED.value,
    (_st.c.status == StepStatus.RUNNING.value)
    & or_(
        _st.c.lease_until.is_(None),
        _st.c.lease_until < bindparam("now"),
        (_st.c.task_id == bindparam("claim_task_id"))
        & or_(
            _st.c.lease_until < bindparam("half_gone"),
            select(_ct.c.id).where(_ct.c.step_id == _st.c.id, _ct.c.outcome == CallOutcome.OK.value).exists(),
        ),
    ),
)
_TAKE_VALUES = {
    "status": StepStatus.RUNNING.value,
    "task_id": bindparam("new_task_id"),
    "lease_until": bindparam("new_lease_until"),
}
_TAKE_STEP = (
    update(_st)
    .where(_st.c.id == bindparam("step_id"), _TAKEABLE)
    .values(**_TAKE_VALUES)
    .returning(_st.c.attempts, _st.c.retry_base)
)


def _take_and_read(*only: Any) -> Any:
    """PostgreSQL: the read and the take in one UPDATE ... FROM ... RETURNING (one round trip,
    where the read-then-update pair and its transaction cost four), the problem's steps for its
    state included (one more saved)."""
    return (
        update(_st)
        .where(
            _st.c.id == bindparam("step_id"),
            *only,
            _pt.c.id == _st.c.problem_id,
            _jt.c.id == _pt.c.job_id,
            _jt.c.status != JobStatus.CANCELLED.value,
            _pt.c.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]),
            _TAKEABLE,
        )
        .values(**_TAKE_VALUES)
        .returning(_st.c.attempts, _st.c.retry_base, *_CLAIM_COLUMNS, steps_json(_st.c.problem_id))
    )


_TAKE_MODEL_STEP = _take_and_read(_st.c.model.is_not(None))
_TAKE_STEP_OF_KIND = _take_and_read(_st.c.model.is_not(None), _st.c.kind == bindparam("want_kind"))
_START_PROBLEM = (
    update(_pt)
    .where(_pt.c.id == bindparam("problem_id"), _pt.c.status == ProblemStatus.PENDING.value)
    .values(status=ProblemStatus.RUNNING.value, started_at=bindparam("now"))
)


def claim_step(
    *, session: Session, step_id: int, task_id: str, lease: timedelta, kind: str | None = None
) -> Claim | int | None:
    """Take the model step for this task run, or say why not.

    Returns the Claim; the problem id when the step needs no work (finished, cancelled, or leased
    by another live run); None when the step does not exist, runs no model (the selection), or is
    not of the `kind` asked for (a message of a release that had one task per kind).

    A live run renews its lease every `lease / 4` (tasks/leases.py). A redelivered message has the
    same task id: it takes its own lease back once the lease has gone unrenewed for half its
    length (the run that held it is gone), or at once when the reply is already recorded (no model
    call is needed). A stray duplicate with another task id waits for the lease to expire.

    Every write is one statement, so it may run without a transaction (db.session.autocommit_scope).
    """
    conn = session.connection()
    now = utcnow()
    take = {
        "step_id": step_id,
        "want_kind": kind,
        "now": now,
        "half_gone": now + lease / 2,
        "claim_task_id": task_id,
        "new_task_id": task_id,
        "new_lease_until": now + lease,
    }
    row: Any
    steps: list[StateStep] | None = None  # read by load_state where the claim did not

    def not_ours(row: Any) -> bool:
        return row is None or row.model is None or (kind is not None and row.kind != kind)

    if conn.dialect.name == "postgresql":
        row = taken = conn.execute(_TAKE_MODEL_STEP if kind is None else _TAKE_STEP_OF_KIND, take).first()
        if taken is None:  # say why: read what the update did not take
            row = conn.execute(_CLAIM_READ, {"step_id": step_id}).first()
            return None if not_ours(row) else row.problem_id
        # The subquery read the steps as they were before the update: this one is now running.
        steps = [
            s._replace(status=StepStatus.RUNNING.value) if s.id == step_id else s
            for s in steps_from_json(taken.state_steps)
        ]
    else:
        row = conn.execute(_CLAIM_READ, {"step_id": step_id}).first()
        if not_ours(row):
            return None
        if row.job_status == JobStatus.CANCELLED or row.problem_status in TERMINAL_PROBLEM_STATES:
            return row.problem_id  # checked before taking it, so a cancelled job holds no leases
        taken = conn.execute(_TAKE_STEP, take).first()
        if taken is None:
            return row.problem_id
    if row.problem_status == ProblemStatus.PENDING:
        conn.execute(_START_PROBLEM, {"problem_id": row.problem_id, "now": now})
    recorded = session.get(ModelCall, row.recorded_id) if row.recorded_id is not None else None
    cache = remembered_outputs.recall(session, row.problem_id, row.question)
    return Claim(
        step_id=step_id,
        problem_id=row.problem_id,
        job_id=row.job_id,
        key=row.key,
        kind=row.kind,
        model=row.model,
        round=row.round,
        attempts=taken.attempts,
        endpoint=roster.url_of(row.models, row.model),
        strategy=row.strategy,
        params=dict(row.params),
        state=load_state(
            session=session,
            problem_id=row.problem_id,
            question=row.question,
            models=row.models,
            steps=steps,
            cache=cache,
        ),
        outputs=cache,
        recorded=recorded,
        retry_base=taken.retry_base,
        resume_from=row.resume_from_id,
        replicas=roster.urls_of(row.models, row.model),
        problem_type=row.problem_type,
    )


def step_is_done(*, session: Session, step_id: int) -> bool:
    return session.scalar(select(Step.status).where(Step.id == step_id)) == StepStatus.DONE


def release_step(*, session: Session, step_id: int) -> None:
    """Give the step back to the queue (a retry is scheduled)."""
    session.execute(update(Step).where(Step.id == step_id).values(status=StepStatus.QUEUED, lease_until=None))


def fail_step(*, session: Session, step_id: int, error: str) -> None:
    session.execute(
        update(Step).where(Step.id == step_id).values(status=StepStatus.FAILED, error=error, lease_until=None)
    )


_ADD_STEPS = {
    name: dialect_insert(Step.__table__)
    .on_conflict_do_nothing(index_elements=["problem_id", "key"])
    .returning(*(Step.__table__.c[col] for col in ("id", "key", "kind", "model", "round")))
    for name, dialect_insert in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}


def add_steps(
    *, session: Session, problem_id: int, specs: list[tuple[str, str, str | None, int]]
) -> list[Step]:
    """Insert steps (key, kind, model, round) that do not exist yet; return the ones this call made.

    The unique (problem_id, key) constraint makes concurrent dispatchers agree on one winner: on
    PostgreSQL and SQLite in one INSERT ... ON CONFLICT DO NOTHING RETURNING (the returned Step
    objects are detached: id, problem_id, key, kind, model and round are set); elsewhere one
    savepoint per step.
    """
    if not specs:
        return []
    dialect = session.get_bind().dialect.name
    statement = _ADD_STEPS.get(dialect)
    if statement is not None:
        # executemany of one prebuilt statement: SQLAlchemy batches it into a single multi-row
        # INSERT ("insertmanyvalues") and caches its compiled form, unlike .values([...]).
        rows = (
            session.connection()
            .execute(
                statement,
                [dict(problem_id=problem_id, key=k, kind=kd, model=m, round=n) for k, kd, m, n in specs],
            )
            .all()
        )
        by_key = {row.key: row for row in rows}
        return [
            Step(
                id=row.id, problem_id=problem_id, key=row.key, kind=row.kind, model=row.model, round=row.round
            )
            for key, *_ in specs
            if (row := by_key.get(key)) is not None
        ]
    made: list[Step] = []
    for key, kind, model, round_ in specs:
        step = Step(problem_id=problem_id, key=key, kind=kind, model=model, round=round_)
        try:
            with session.begin_nested():
                session.add(step)
        except IntegrityError:
            continue
        made.append(step)
    return made
