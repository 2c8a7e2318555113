"""Query functions: keyword-only, typed, one transaction's worth of work each (the caller owns it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, insert, or_, select, update
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
    Review,
    Selection,
    Solution,
    Step,
    StepStatus,
    utcnow,
)
from rstar.strategies.base import (
    SELECT_KEY,
    ProblemState,
    ReviewView,
    SolutionView,
    StepLinks,
    StepSpec,
    StepView,
)
from rstar.types import ParsedReview, ParsedSolution, ProblemInput, ReviewIssue, StepKind, Verdict

# -- jobs ------------------------------------------------------------------------------------


def create_job(
    *,
    session: Session,
    name: str,
    strategy: str,
    params: dict[str, Any],
    model_a_url: str,
    model_b_url: str,
    source: str | None,
    problems: list[ProblemInput],
    first_steps: tuple[StepSpec, ...],
) -> tuple[Job, list[Step]]:
    """The job, its problems and each problem's first steps, flushed in the caller's transaction."""
    job = Job(
        name=name,
        strategy=strategy,
        params=params,
        model_a_url=model_a_url,
        model_b_url=model_b_url,
        source=source,
        status=JobStatus.ACTIVE,
    )
    session.add(job)
    session.flush()
    rows = [
        Problem(
            job_id=job.id,
            item_id=p.item_id,
            line=p.line,
            question=p.question,
            reference=p.reference,
            reference_answer=p.reference_answer,
            status=ProblemStatus.PENDING,
        )
        for p in problems
    ]
    session.add_all(rows)
    session.flush()
    steps = [
        Step(problem_id=prob.id, key=spec.key, kind=spec.kind.value, role=spec.role, round=spec.round)
        for prob in rows
        for spec in first_steps
    ]
    session.add_all(steps)
    session.flush()
    return job, steps


def status_counts(*, session: Session, job_id: int) -> Counter[str]:
    rows = session.execute(
        select(Problem.status, func.count()).where(Problem.job_id == job_id).group_by(Problem.status)
    ).all()
    return Counter({status: count for status, count in rows})


def maybe_finish_job(*, session: Session, job_id: int) -> bool:
    """Mark the job finished once no problem is left to work on."""
    open_count = session.scalar(
        select(func.count())
        .select_from(Problem)
        .where(Problem.job_id == job_id, Problem.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]))
    )
    if open_count:
        return False
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.ACTIVE)
        .values(status=JobStatus.FINISHED, finished_at=utcnow())
    )
    return True


# -- steps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a task needs to run its step, read in the claiming transaction."""

    step_id: int
    problem_id: int
    job_id: int
    key: str
    kind: str
    role: str | None
    round: int
    attempts: int
    endpoint: str | None
    strategy: str
    params: dict[str, Any]
    state: ProblemState
    recorded: ModelCall | None
    """A successful call already recorded for this step (a crash came between call and output)."""
    links: StepLinks = field(default_factory=StepLinks)
    """Filled in by the task from the strategy."""
    retry_base: int = 0
    """Attempts made before the current retry budget (see `Step.retry_base`)."""
    resume_from: int | None = None
    """The job whose identical recorded calls this job reuses (`submit --resume-from`)."""


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
    _jt.c.id.label("job_id"),
    _jt.c.status.label("job_status"),
    _jt.c.strategy,
    _jt.c.params,
    _jt.c.model_a_url,
    _jt.c.model_b_url,
)
# What a Claim needs besides the step's attempts.
_CLAIM_COLUMNS = (
    _st.c.key,
    _st.c.kind,
    _st.c.role,
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
# PostgreSQL: the read and the take in one UPDATE ... FROM ... RETURNING (one round trip, where
# the read-then-update pair and its transaction cost four).
_TAKE_AND_READ = (
    update(_st)
    .where(
        _st.c.id == bindparam("step_id"),
        _st.c.kind == bindparam("want_kind"),
        _pt.c.id == _st.c.problem_id,
        _jt.c.id == _pt.c.job_id,
        _jt.c.status != JobStatus.CANCELLED.value,
        _pt.c.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]),
        _TAKEABLE,
    )
    .values(**_TAKE_VALUES)
    .returning(_st.c.attempts, _st.c.retry_base, *_CLAIM_COLUMNS)
)
_START_PROBLEM = (
    update(_pt)
    .where(_pt.c.id == bindparam("problem_id"), _pt.c.status == ProblemStatus.PENDING.value)
    .values(status=ProblemStatus.RUNNING.value, started_at=bindparam("now"))
)


def claim_step(
    *, session: Session, step_id: int, task_id: str, lease: timedelta, kind: str | None = None
) -> Claim | int | None:
    """Take the step for this task run, or say why not.

    Returns the Claim; the problem id when the step needs no work (finished, cancelled, or leased
    by another live run); None when the step does not exist, or is not of the `kind` the task
    does (a message from another deployment sharing the broker must not touch this one's steps).

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
    if kind is not None and conn.dialect.name == "postgresql":
        row = taken = conn.execute(_TAKE_AND_READ, take).first()
        if taken is None:  # say why: read what the update did not take
            row = conn.execute(_CLAIM_READ, {"step_id": step_id}).first()
            return None if row is None or row.kind != kind else row.problem_id
    else:
        row = conn.execute(_CLAIM_READ, {"step_id": step_id}).first()
        if row is None or (kind is not None and row.kind != kind):
            return None
        if row.job_status == JobStatus.CANCELLED or row.problem_status in TERMINAL_PROBLEM_STATES:
            return row.problem_id  # checked before taking it, so a cancelled job holds no leases
        taken = conn.execute(_TAKE_STEP, take).first()
        if taken is None:
            return row.problem_id
    if row.problem_status == ProblemStatus.PENDING:
        conn.execute(_START_PROBLEM, {"problem_id": row.problem_id, "now": now})
    recorded = session.get(ModelCall, row.recorded_id) if row.recorded_id is not None else None
    endpoint = {"A": row.model_a_url, "B": row.model_b_url}.get(row.role or "")
    return Claim(
        step_id=step_id,
        problem_id=row.problem_id,
        job_id=row.job_id,
        key=row.key,
        kind=row.kind,
        role=row.role,
        round=row.round,
        attempts=taken.attempts,
        endpoint=endpoint,
        strategy=row.strategy,
        params=dict(row.params),
        state=load_state(session=session, problem_id=row.problem_id, question=row.question),
        recorded=recorded,
        retry_base=taken.retry_base,
        resume_from=row.resume_from_id,
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
    .returning(*(Step.__table__.c[col] for col in ("id", "key", "kind", "role", "round")))
    for name, dialect_insert in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}


def add_steps(
    *, session: Session, problem_id: int, specs: list[tuple[str, str, str | None, int]]
) -> list[Step]:
    """Insert steps (key, kind, role, round) that do not exist yet; return the ones this call made.

    The unique (problem_id, key) constraint makes concurrent dispatchers agree on one winner: on
    PostgreSQL and SQLite in one INSERT ... ON CONFLICT DO NOTHING RETURNING (the returned Step
    objects are detached: id, problem_id, key, kind, role and round are set); elsewhere one
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
                [dict(problem_id=problem_id, key=k, kind=kd, role=r, round=n) for k, kd, r, n in specs],
            )
            .all()
        )
        by_key = {row.key: row for row in rows}
        return [
            Step(id=row.id, problem_id=problem_id, key=row.key, kind=row.kind, role=row.role, round=row.round)
            for key, *_ in specs
            if (row := by_key.get(key)) is not None
        ]
    made: list[Step] = []
    for key, kind, role, round_ in specs:
        step = Step(problem_id=problem_id, key=key, kind=kind, role=role, round=round_)
        try:
            with session.begin_nested():
                session.add(step)
        except IntegrityError:
            continue
        made.append(step)
    return made


# -- model calls and outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class NewCall:
    """A model call to record (`new_call`): on its own (`record_call`), or in the statement that
    writes its step's output (`save_solution`, `save_review`)."""

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
) -> NewCall:
    return NewCall(
        {
            "step_id": step_id,
            "problem_id": problem_id,
            "attempt": attempt,
            "endpoint": endpoint,
            "server_kind": server_kind,
            "model": model,
            "request": request,
            "response": response,
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


def _output_writes(output: Any) -> tuple[Any, Any]:
    """An output table's two inserts: plain (the call is recorded already), and, for PostgreSQL,
    one that also records the new call and finishes the step, in data-modifying CTEs (one round
    trip where three cost three)."""
    plain = insert(output)
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
        .add_cte(call)
        .add_cte(finish)
    )
    return plain, combined


_SOLUTION_WRITES = _output_writes(Solution.__table__)
_REVIEW_WRITES = _output_writes(Review.__table__)


def _write_output(
    session: Session, writes: tuple[Any, Any], values: dict[str, Any], step_id: int, model_call: int | NewCall
) -> None:
    """Insert a step's output (`values`, without its call), record its call when it is new, and
    mark the step done."""
    conn = session.connection()
    plain, combined = writes
    if isinstance(model_call, NewCall) and conn.dialect.name == "postgresql":
        now = utcnow()
        params = {f"out_{k}": v for k, v in values.items()}
        params.update({f"call_{k}": v for k, v in model_call.values.items()})
        params.update(
            out_created_at=now,
            call_created_at=now,
            finish_step_id=step_id,
            finish_attempts=model_call.values["attempt"],
            finish_now=now,
        )
        conn.execute(combined, params)
        return
    if isinstance(model_call, NewCall):
        model_call = record_call(session=session, call=model_call, count_attempt=False)
    conn.execute(plain, {**values, "model_call_id": model_call})
    _finish_step(session, step_id)


def save_solution(
    *,
    session: Session,
    claim: Claim,
    parsed: ParsedSolution,
    model_call: int | NewCall,
    parent_id: int | None,
) -> None:
    values = {
        "problem_id": claim.problem_id,
        "step_id": claim.step_id,
        "round": claim.round,
        "author": claim.role,
        "kind": claim.kind,
        "parent_id": parent_id,
        "steps": list(parsed.steps),
        "answer_raw": parsed.answer_raw,
        "answer": parsed.answer,
        "structured": parsed.structured,
        "parse_error": _with_cut_note(session, parsed.parse_error, model_call),
    }
    _write_output(session, _SOLUTION_WRITES, values, claim.step_id, model_call)


def _with_cut_note(session: Session, parse_error: str | None, model_call: int | NewCall) -> str | None:
    """Say so when an unparsable reply was cut by the token limit (the usual reason)."""
    if parse_error is None:
        return None
    if isinstance(model_call, NewCall):
        finish_reason = model_call.values["finish_reason"]
    else:
        finish_reason = session.scalar(select(ModelCall.finish_reason).where(ModelCall.id == model_call))
    if finish_reason == "length":
        return f"{parse_error} (the reply was cut at the token limit: finish_reason=length)"
    return parse_error


def save_review(
    *,
    session: Session,
    claim: Claim,
    parsed: ParsedReview,
    model_call: int | NewCall,
    target_solution_id: int,
) -> None:
    values = {
        "problem_id": claim.problem_id,
        "step_id": claim.step_id,
        "round": claim.round,
        "reviewer": claim.role,
        "target_solution_id": target_solution_id,
        "verdict": parsed.verdict.value,
        "logical_consistency": parsed.logical_consistency,
        "calculation_accuracy": parsed.calculation_accuracy,
        "step_completeness": parsed.step_completeness,
        "issues": [{"step": i.step, "description": i.description} for i in parsed.issues],
        "suggested_answer": parsed.suggested_answer,
        "structured": parsed.structured,
        "parse_error": _with_cut_note(session, parsed.parse_error, model_call),
    }
    _write_output(session, _REVIEW_WRITES, values, claim.step_id, model_call)


_INSERT_SELECTION = insert(Selection.__table__)
_ANSWER_PROBLEM = (
    update(Problem.__table__)
    .where(Problem.__table__.c.id == bindparam("problem_id"))
    .values(
        status=ProblemStatus.ANSWERED.value,
        final_answer=bindparam("answer"),
        rounds_used=bindparam("rounds_used"),
        finished_at=bindparam("now"),
    )
)
_ADD_DONE_STEP = insert(Step.__table__).values(status=StepStatus.DONE.value)


def save_selection(
    *,
    session: Session,
    problem_id: int,
    select_step_id: int | None,
    round_: int,
    solution_id: int | None,
    answer: str | None,
    reason: str,
    rounds_used: int,
) -> None:
    """Record the chosen answer and why, answer the problem and mark its select step done (made
    here, done, unless a queued one exists: see tasks/select.py)."""
    conn = session.connection()
    conn.execute(
        _INSERT_SELECTION,
        {"problem_id": problem_id, "solution_id": solution_id, "answer": answer, "reason": reason},
    )
    conn.execute(
        _ANSWER_PROBLEM,
        {"problem_id": problem_id, "answer": answer, "rounds_used": rounds_used, "now": utcnow()},
    )
    if select_step_id is None:
        conn.execute(
            _ADD_DONE_STEP,
            {"problem_id": problem_id, "key": SELECT_KEY, "kind": "select", "role": None, "round": round_},
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


def fail_problem(*, session: Session, problem_id: int, error: str) -> None:
    session.execute(
        update(Problem)
        .where(Problem.id == problem_id, Problem.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]))
        .values(status=ProblemStatus.FAILED, error=error, finished_at=utcnow())
    )


# -- state for the strategies ----------------------------------------------------------------


# The state is read with prebuilt Core statements, as plain rows (no ORM objects, no statement
# building per call): every model step loads its problem's state twice (to build its request,
# then to plan what comes next), so this is the hottest read of the worker, and the ORM path cost
# about four times the CPU.
_steps_t = Step.__table__
_solutions_t = Solution.__table__
_reviews_t = Review.__table__
_calls_t = ModelCall.__table__
STATE_STEPS = select(
    _steps_t.c.id, _steps_t.c.key, _steps_t.c.kind, _steps_t.c.role, _steps_t.c.round, _steps_t.c.status
).where(_steps_t.c.problem_id == bindparam("problem_id"))
_STATE_SOLUTIONS = (
    select(
        _solutions_t.c.id,
        _solutions_t.c.step_id,
        _solutions_t.c.round,
        _solutions_t.c.author,
        _solutions_t.c.kind,
        _solutions_t.c.steps,
        _solutions_t.c.answer,
        _solutions_t.c.parse_error,
        _calls_t.c.response_text,
    )
    .select_from(_solutions_t.outerjoin(_calls_t, _calls_t.c.id == _solutions_t.c.model_call_id))
    .where(_solutions_t.c.problem_id == bindparam("problem_id"))
)
_STATE_REVIEWS = (
    select(
        _reviews_t.c.id,
        _reviews_t.c.step_id,
        _reviews_t.c.round,
        _reviews_t.c.reviewer,
        _reviews_t.c.target_solution_id,
        _reviews_t.c.verdict,
        _reviews_t.c.logical_consistency,
        _reviews_t.c.calculation_accuracy,
        _reviews_t.c.step_completeness,
        _reviews_t.c.issues,
        _reviews_t.c.suggested_answer,
        _reviews_t.c.structured,
        _calls_t.c.response_text,
    )
    .select_from(_reviews_t.outerjoin(_calls_t, _calls_t.c.id == _reviews_t.c.model_call_id))
    .where(_reviews_t.c.problem_id == bindparam("problem_id"))
)


# The kinds of step whose output is a solution (a review step's is a review, a select step's the
# selection).
_SOLUTION_KINDS = {StepKind.GENERATE.value, StepKind.REFINE.value, StepKind.COMPLETE.value}


V = TypeVar("V")


class LazyOutputs(Mapping[str, V]):
    """A problem's solutions or reviews, read on first use.

    Most steps need none of them: a plan usually looks only at the steps' statuses (the first of
    A's and B's steps to finish has nothing to plan), and a first-round step reads nothing to
    build its request. Valid only inside the transaction that made it.
    """

    def __init__(self, load: Callable[[], dict[str, V]]) -> None:
        self._load: Callable[[], dict[str, V]] | None = load
        self._data: dict[str, V] = {}

    def _items(self) -> dict[str, V]:
        if self._load is not None:
            self._data, self._load = self._load(), None
        return self._data

    def __getitem__(self, key: str) -> V:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


def load_state(
    *, session: Session, problem_id: int, question: str, steps: Sequence[Any] | None = None
) -> ProblemState:
    """The problem's state for its strategy; its solutions and reviews are read when first used,
    so use it inside the caller's transaction.

    `steps`, when the caller has just read them (Step objects or `STATE_STEPS` rows), saves
    reading them again.
    """
    conn = session.connection()
    params = {"problem_id": problem_id}
    if steps is None:
        steps = conn.execute(STATE_STEPS, params).all()
    by_id = {s.id: s for s in steps}
    # An output is written in the transaction that marks its step done: no done step of a kind,
    # no output of that kind, and no need to ask.
    done_kinds = {s.kind for s in steps if s.status == StepStatus.DONE}

    def solutions() -> dict[str, SolutionView]:
        found: dict[str, SolutionView] = {}
        for sol in conn.execute(_STATE_SOLUTIONS, params) if done_kinds & _SOLUTION_KINDS else ():
            if sol.step_id not in by_id:
                continue  # its step came after the steps were read (no transaction: autocommit_scope)
            key = by_id[sol.step_id].key
            found[key] = SolutionView(
                id=sol.id,
                step_key=key,
                round=sol.round,
                author=sol.author,  # type: ignore[arg-type]
                kind=sol.kind,
                steps=tuple(sol.steps or ()),
                answer=sol.answer,
                response_text=sol.response_text,
                parse_error=sol.parse_error,
            )
        return found

    def reviews() -> dict[str, ReviewView]:
        found: dict[str, ReviewView] = {}
        for rev in conn.execute(_STATE_REVIEWS, params) if StepKind.REVIEW.value in done_kinds else ():
            if rev.step_id not in by_id:
                continue
            key = by_id[rev.step_id].key
            issues = tuple(
                ReviewIssue(i.get("step"), str(i.get("description", ""))) for i in rev.issues or []
            )
            found[key] = ReviewView(
                id=rev.id,
                step_key=key,
                round=rev.round,
                reviewer=rev.reviewer,  # type: ignore[arg-type]
                target_solution_id=rev.target_solution_id,
                verdict=Verdict(rev.verdict),
                scores=(rev.logical_consistency, rev.calculation_accuracy, rev.step_completeness),
                issues=issues,
                suggested_answer=rev.suggested_answer,
                response_text=rev.response_text,
                structured=rev.structured,
            )
        return found

    return ProblemState(
        question=question,
        steps={s.key: StepView(s.key, s.kind, s.role, s.round, s.status) for s in steps},  # type: ignore[arg-type]
        solutions=LazyOutputs(solutions),
        reviews=LazyOutputs(reviews),
    )


# -- reading results -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemResult:
    id: str
    question: str
    final_answer: str | None
    reference_answer: str | None
    correct: bool | None
    rounds_used: int | None
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    wall_time_s: float | None
    status: str
    error: str | None


def problem_results(*, session: Session, job_id: int) -> list[ProblemResult]:
    from rstar.answers import answers_equal

    stats = {
        pid: (n, pt or 0, ct or 0)
        for pid, n, pt, ct in session.execute(
            select(
                ModelCall.problem_id,
                func.count(),
                func.sum(ModelCall.prompt_tokens),
                func.sum(ModelCall.completion_tokens),
            )
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id)
            .group_by(ModelCall.problem_id)
        ).all()
    }
    results = []
    for p in session.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)):
        n, pt, ct = stats.get(p.id, (0, 0, 0))
        correct = None
        if p.reference_answer is not None and p.status == ProblemStatus.ANSWERED:
            correct = answers_equal(p.final_answer, p.reference_answer)
        wall = _seconds(p.started_at, p.finished_at)
        results.append(
            ProblemResult(
                id=p.item_id,
                question=p.question,
                final_answer=p.final_answer,
                reference_answer=p.reference_answer,
                correct=correct,
                rounds_used=p.rounds_used,
                model_calls=n,
                prompt_tokens=pt,
                completion_tokens=ct,
                wall_time_s=wall,
                status=p.status,
                error=p.error,
            )
        )
    return results


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None
