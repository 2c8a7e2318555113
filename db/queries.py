"""Query functions: keyword-only, typed, one transaction's worth of work each (the caller owns it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
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
from rstar.types import ParsedReview, ParsedSolution, ProblemInput, ReviewIssue, Verdict

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
    step = session.get(Step, step_id)
    if step is None or (kind is not None and step.kind != kind):
        return None
    problem = session.get(Problem, step.problem_id)
    assert problem is not None
    job = session.get(Job, problem.job_id)
    assert job is not None
    if job.status == JobStatus.CANCELLED or problem.status in TERMINAL_PROBLEM_STATES:
        return step.problem_id  # checked before taking it, so a cancelled job holds no leases
    now = utcnow()
    recorded_ok = (
        select(ModelCall.id).where(ModelCall.step_id == step_id, ModelCall.outcome == CallOutcome.OK).exists()
    )
    taken = session.execute(
        update(Step)
        .where(
            Step.id == step_id,
            or_(
                Step.status == StepStatus.QUEUED,
                (Step.status == StepStatus.RUNNING)
                & or_(
                    Step.lease_until.is_(None),
                    Step.lease_until < now,
                    (Step.task_id == task_id) & or_(Step.lease_until < now + lease / 2, recorded_ok),
                ),
            ),
        )
        .values(status=StepStatus.RUNNING, task_id=task_id, lease_until=now + lease)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not taken:
        return step.problem_id
    session.refresh(step)
    if problem.status == ProblemStatus.PENDING:
        problem.status = ProblemStatus.RUNNING
        problem.started_at = now
    recorded = session.scalar(
        select(ModelCall).where(ModelCall.step_id == step_id, ModelCall.outcome == CallOutcome.OK).limit(1)
    )
    endpoint = {"A": job.model_a_url, "B": job.model_b_url}.get(step.role or "")
    return Claim(
        step_id=step.id,
        problem_id=problem.id,
        job_id=job.id,
        key=step.key,
        kind=step.kind,
        role=step.role,
        round=step.round,
        attempts=step.attempts,
        endpoint=endpoint,
        strategy=job.strategy,
        params=dict(job.params),
        state=load_state(session=session, problem=problem),
        recorded=recorded,
        retry_base=step.retry_base,
        resume_from=job.resume_from_id,
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


def add_steps(
    *, session: Session, problem_id: int, specs: list[tuple[str, str, str | None, int]]
) -> list[Step]:
    """Insert steps (key, kind, role, round) that do not exist yet; return the ones this call made.

    The unique (problem_id, key) constraint makes concurrent dispatchers agree on one winner.
    """
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
) -> ModelCall:
    call = ModelCall(
        step_id=step_id,
        problem_id=problem_id,
        attempt=attempt,
        endpoint=endpoint,
        server_kind=server_kind,
        model=model,
        request=request,
        response=response,
        response_text=response_text,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        outcome=outcome.value,
        http_status=http_status,
        error=error,
        request_hash=request_hash,
        reused_from_id=reused_from_id,
    )
    session.add(call)
    session.execute(update(Step).where(Step.id == step_id).values(attempts=attempt))
    session.flush()
    return call


def save_solution(
    *, session: Session, claim: Claim, parsed: ParsedSolution, model_call_id: int, parent_id: int | None
) -> None:
    session.add(
        Solution(
            problem_id=claim.problem_id,
            step_id=claim.step_id,
            model_call_id=model_call_id,
            round=claim.round,
            author=claim.role,
            kind=claim.kind,
            parent_id=parent_id,
            steps=list(parsed.steps),
            answer_raw=parsed.answer_raw,
            answer=parsed.answer,
            structured=parsed.structured,
            parse_error=_with_cut_note(session, parsed.parse_error, model_call_id),
        )
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
    session.add(
        Review(
            problem_id=claim.problem_id,
            step_id=claim.step_id,
            model_call_id=model_call_id,
            round=claim.round,
            reviewer=claim.role,
            target_solution_id=target_solution_id,
            verdict=parsed.verdict.value,
            logical_consistency=parsed.logical_consistency,
            calculation_accuracy=parsed.calculation_accuracy,
            step_completeness=parsed.step_completeness,
            issues=[{"step": i.step, "description": i.description} for i in parsed.issues],
            suggested_answer=parsed.suggested_answer,
            structured=parsed.structured,
            parse_error=_with_cut_note(session, parsed.parse_error, model_call_id),
        )
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


def _finish_step(session: Session, step_id: int) -> None:
    session.execute(
        update(Step).where(Step.id == step_id).values(status=StepStatus.DONE, lease_until=None, error=None)
    )
    session.flush()


def fail_problem(*, session: Session, problem_id: int, error: str) -> None:
    session.execute(
        update(Problem)
        .where(Problem.id == problem_id, Problem.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]))
        .values(status=ProblemStatus.FAILED, error=error, finished_at=utcnow())
    )


# -- state for the strategies ----------------------------------------------------------------


def load_state(*, session: Session, problem: Problem) -> ProblemState:
    steps = session.scalars(select(Step).where(Step.problem_id == problem.id)).all()
    by_id = {s.id: s for s in steps}
    texts = dict(
        session.execute(
            select(ModelCall.id, ModelCall.response_text).where(
                ModelCall.problem_id == problem.id, ModelCall.outcome == CallOutcome.OK
            )
        ).all()
    )
    solutions: dict[str, SolutionView] = {}
    for sol in session.scalars(select(Solution).where(Solution.problem_id == problem.id)):
        raw = texts.get(sol.model_call_id) if sol.model_call_id else None
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
    for rev in session.scalars(select(Review).where(Review.problem_id == problem.id)):
        raw = texts.get(rev.model_call_id) if rev.model_call_id else None
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
