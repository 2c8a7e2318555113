"""Query functions: keyword-only, typed, one transaction's worth of work each (the caller owns it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

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
from rstar import prompts
from rstar.strategies.base import ProblemState, ReviewView, SolutionView, StepLinks, StepSpec, StepView
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


# claim_step's statements, prebuilt (it runs once per model step): the step with its problem and
# job and the id of an ok call already recorded for it; the lease-taking update; the problem's start.
_CLAIM_READ = (
    select(
        Step.__table__.c.key,
        Step.__table__.c.kind,
        Step.__table__.c.role,
        Step.__table__.c.round,
        Problem.__table__.c.id.label("problem_id"),
        Problem.__table__.c.status.label("problem_status"),
        Problem.__table__.c.question,
        Job.__table__.c.id.label("job_id"),
        Job.__table__.c.status.label("job_status"),
        Job.__table__.c.strategy,
        Job.__table__.c.params,
        Job.__table__.c.model_a_url,
        Job.__table__.c.model_b_url,
        Job.__table__.c.resume_from_id,
        select(ModelCall.__table__.c.id)
        .where(
            ModelCall.__table__.c.step_id == Step.__table__.c.id,
            ModelCall.__table__.c.outcome == CallOutcome.OK.value,
        )
        .order_by(ModelCall.__table__.c.id)
        .limit(1)
        .scalar_subquery()
        .label("recorded_id"),
    )
    .select_from(
        Step.__table__.join(Problem.__table__, Problem.__table__.c.id == Step.__table__.c.problem_id).join(
            Job.__table__, Job.__table__.c.id == Problem.__table__.c.job_id
        )
    )
    .where(Step.__table__.c.id == bindparam("step_id"))
)
_TAKE_STEP = (
    update(Step.__table__)
    .where(
        Step.__table__.c.id == bindparam("step_id"),
        or_(
            Step.__table__.c.status == StepStatus.QUEUED.value,
            (Step.__table__.c.status == StepStatus.RUNNING.value)
            & or_(
                Step.__table__.c.lease_until.is_(None),
                Step.__table__.c.lease_until < bindparam("now"),
                (Step.__table__.c.task_id == bindparam("claim_task_id"))
                & or_(
                    Step.__table__.c.lease_until < bindparam("half_gone"),
                    select(ModelCall.__table__.c.id)
                    .where(
                        ModelCall.__table__.c.step_id == Step.__table__.c.id,
                        ModelCall.__table__.c.outcome == CallOutcome.OK.value,
                    )
                    .exists(),
                ),
            ),
        ),
    )
    .values(
        status=StepStatus.RUNNING.value,
        task_id=bindparam("new_task_id"),
        lease_until=bindparam("new_lease_until"),
    )
    .returning(Step.__table__.c.attempts, Step.__table__.c.retry_base)
)
_START_PROBLEM = (
    update(Problem.__table__)
    .where(
        Problem.__table__.c.id == bindparam("problem_id"),
        Problem.__table__.c.status == ProblemStatus.PENDING.value,
    )
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
    """
    conn = session.connection()
    row = conn.execute(_CLAIM_READ, {"step_id": step_id}).first()
    if row is None or (kind is not None and row.kind != kind):
        return None
    if row.job_status == JobStatus.CANCELLED or row.problem_status in TERMINAL_PROBLEM_STATES:
        return row.problem_id  # checked before taking it, so a cancelled job holds no leases
    now = utcnow()
    taken = conn.execute(
        _TAKE_STEP,
        {
            "step_id": step_id,
            "now": now,
            "half_gone": now + lease / 2,
            "claim_task_id": task_id,
            "new_task_id": task_id,
            "new_lease_until": now + lease,
        },
    ).first()
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
        state=load_state(session=session, problem=SimpleNamespace(id=row.problem_id, question=row.question)),
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


# The per-call writes, prebuilt Core statements (the ORM's unit of work cost several times the CPU).
_INSERT_CALL = insert(ModelCall.__table__).returning(ModelCall.__table__.c.id)
_SET_ATTEMPTS = (
    update(Step.__table__)
    .where(Step.__table__.c.id == bindparam("step_id"))
    .values(attempts=bindparam("new_attempts"))
)
_INSERT_SOLUTION = insert(Solution.__table__)
_INSERT_REVIEW = insert(Review.__table__)


def record_call(
    *,
    session: Session,
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
    count_attempt: bool = True,
) -> int:
    """Insert a model call and count the attempt on its step (unless the step is finished in the
    same transaction, which counts it: `count_attempt=False`); the call's id."""
    values: dict[str, Any] = {
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
    # Core, not the ORM: this runs once per model call (the returned object is detached).
    conn = session.connection()
    call_id = conn.execute(_INSERT_CALL, values).scalar_one()
    if count_attempt:
        conn.execute(_SET_ATTEMPTS, {"step_id": step_id, "new_attempts": attempt})
    return call_id


def attempt_recorded(*, session: Session, step_id: int, attempt: int) -> bool:
    found = session.scalar(
        select(ModelCall.id).where(ModelCall.step_id == step_id, ModelCall.attempt == attempt)
    )
    return found is not None


def save_solution(
    *, session: Session, claim: Claim, parsed: ParsedSolution, model_call_id: int, parent_id: int | None
) -> None:
    session.connection().execute(
        _INSERT_SOLUTION,
        {
            "problem_id": claim.problem_id,
            "step_id": claim.step_id,
            "model_call_id": model_call_id,
            "round": claim.round,
            "author": claim.role,
            "kind": claim.kind,
            "parent_id": parent_id,
            "steps": list(parsed.steps),
            "answer_raw": parsed.answer_raw,
            "answer": parsed.answer,
            "structured": parsed.structured,
            "parse_error": _with_cut_note(session, parsed.parse_error, model_call_id),
        },
    )
    _finish_step(session, claim.step_id)


def _with_cut_note(session: Session, parse_error: str | None, model_call_id: int) -> str | None:
    """Say so when an unparsable reply was cut by the token limit (the usual reason)."""
    if parse_error is None:
        return None
    if session.scalar(select(ModelCall.finish_reason).where(ModelCall.id == model_call_id)) == "length":
        return f"{parse_error} (the reply was cut at the token limit: finish_reason=length)"
    return parse_error


def save_review(
    *, session: Session, claim: Claim, parsed: ParsedReview, model_call_id: int, target_solution_id: int
) -> None:
    session.connection().execute(
        _INSERT_REVIEW,
        {
            "problem_id": claim.problem_id,
            "step_id": claim.step_id,
            "model_call_id": model_call_id,
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
            "parse_error": _with_cut_note(session, parsed.parse_error, model_call_id),
        },
    )
    _finish_step(session, claim.step_id)


def save_selection(
    *,
    session: Session,
    claim: Claim,
    solution_id: int | None,
    answer: str | None,
    reason: str,
    rounds_used: int,
) -> None:
    session.add(Selection(problem_id=claim.problem_id, solution_id=solution_id, answer=answer, reason=reason))
    session.execute(
        update(Problem)
        .where(Problem.id == claim.problem_id)
        .values(
            status=ProblemStatus.ANSWERED, final_answer=answer, rounds_used=rounds_used, finished_at=utcnow()
        )
    )
    _finish_step(session, claim.step_id)


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


def load_state(*, session: Session, problem: Any, steps: Sequence[Any] | None = None) -> ProblemState:
    """The problem's state for its strategy.

    `problem` needs `id` and `question` (a Problem, or a row); `steps`, when the caller has just
    read them (Step objects or `STATE_STEPS` rows), saves reading them again.
    """
    conn = session.connection()
    params = {"problem_id": problem.id}
    if steps is None:
        steps = conn.execute(STATE_STEPS, params).all()
    by_id = {s.id: s for s in steps}
    # An output is written in the transaction that marks its step done: no done step of a kind,
    # no output of that kind, and no need to ask (this runs twice per model step).
    done_kinds = {s.kind for s in steps if s.status == StepStatus.DONE}
    solutions: dict[str, SolutionView] = {}
    for sol in conn.execute(_STATE_SOLUTIONS, params) if done_kinds & _SOLUTION_KINDS else ():
        raw = sol.response_text
        solutions[by_id[sol.step_id].key] = SolutionView(
            id=sol.id,
            step_key=by_id[sol.step_id].key,
            round=sol.round,
            author=sol.author,  # type: ignore[arg-type]
            kind=sol.kind,
            steps=tuple(sol.steps or ()),
            answer=sol.answer,
            text=prompts.render_solution(sol.steps or [], sol.answer, raw),
            parse_error=sol.parse_error,
        )
    reviews: dict[str, ReviewView] = {}
    for rev in conn.execute(_STATE_REVIEWS, params) if StepKind.REVIEW.value in done_kinds else ():
        raw = rev.response_text
        issues = tuple(ReviewIssue(i.get("step"), str(i.get("description", ""))) for i in rev.issues or [])
        scores = (rev.logical_consistency, rev.calculation_accuracy, rev.step_completeness)
        reviews[by_id[rev.step_id].key] = ReviewView(
            id=rev.id,
            step_key=by_id[rev.step_id].key,
            round=rev.round,
            reviewer=rev.reviewer,  # type: ignore[arg-type]
            target_solution_id=rev.target_solution_id,
            verdict=Verdict(rev.verdict),
            scores=scores,
            issues=issues,
            suggested_answer=rev.suggested_answer,
            text=prompts.render_review(
                rev.verdict,
                scores,
                [(i.step, i.description) for i in issues],
                rev.suggested_answer,
                raw,
                rev.structured,
            ),
        )
    return ProblemState(
        question=problem.question,
        steps={s.key: StepView(s.key, s.kind, s.role, s.round, s.status) for s in steps},  # type: ignore[arg-type]
        solutions=solutions,
        reviews=reviews,
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
