"""Queries for recovery and job control: cancel, resume, retry, and finding work whose message was
lost. Keyword-only, one transaction's worth each (the caller owns it), like db/jobs.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from db.jobs import NO_TALLIES
from db.models import (
    OPEN_STEP_STATES,
    TERMINAL_PROBLEM_STATES,
    Job,
    JobStatus,
    Problem,
    ProblemStatus,
    Step,
    StepStatus,
    utcnow,
)

_TERMINAL = [s.value for s in TERMINAL_PROBLEM_STATES]
_OPEN_STEP = [s.value for s in OPEN_STEP_STATES]


def _active(job_id: int | None) -> list[object]:
    where: list[object] = [Job.status == JobStatus.ACTIVE, Problem.status.not_in(_TERMINAL)]
    if job_id is not None:
        where.append(Job.id == job_id)
    return where


def queued_steps(
    *, session: Session, job_id: int | None = None, queued_before: datetime | None = None
) -> list[tuple[Step, Job]]:
    """Queued steps of open problems of active jobs (all jobs, or one); with `queued_before`, only
    those unchanged since then."""
    where = [Step.status == StepStatus.QUEUED, *_active(job_id)]
    if queued_before is not None:
        where.append(Step.updated_at < queued_before)
    rows = session.execute(
        select(Step, Job)
        .join(Problem, Problem.id == Step.problem_id)
        .join(Job, Job.id == Problem.job_id)
        .where(*where)
        .order_by(Step.id)
    ).all()
    return [(step, job) for step, job in rows]


def touch_queued(*, session: Session, step_ids: list[int]) -> None:
    """Mark queued steps as just sent again (their `updated_at`), so that a sweep waits a whole
    grace again before it sends them once more."""
    if step_ids:
        session.execute(
            update(Step)
            .where(Step.id.in_(step_ids), Step.status == StepStatus.QUEUED)
            .values(updated_at=utcnow())
        )


def reclaim_expired(
    *, session: Session, expired_before: datetime, job_id: int | None = None
) -> list[tuple[Step, Job]]:
    """Running steps whose lease ran out before `expired_before` (their worker is gone): put them
    back to queued, each with a conditional update so a run that renewed meanwhile keeps its step."""
    rows = session.execute(
        select(Step, Job)
        .join(Problem, Problem.id == Step.problem_id)
        .join(Job, Job.id == Problem.job_id)
        .where(
            Step.status == StepStatus.RUNNING,
            Step.lease_until.is_not(None),
            Step.lease_until < expired_before,
            *_active(job_id),
        )
        .order_by(Step.id)
    ).all()
    taken = []
    for step, job in rows:
        done = session.execute(
            update(Step)
            .where(
                Step.id == step.id,
                Step.status == StepStatus.RUNNING,
                Step.lease_until < expired_before,
            )
            .values(status=StepStatus.QUEUED, lease_until=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if done:
            taken.append((step, job))
    return taken


def stalled_problems(*, session: Session, job_id: int | None = None) -> list[int]:
    """Started, open problems of active jobs with no queued or running step: a crash came between a
    step's output and the dispatch of what follows it, so nobody will move them on. (A waiting
    problem has no step yet by design: the feeder starts it.)"""
    has_open_step = exists().where(Step.problem_id == Problem.id, Step.status.in_(_OPEN_STEP))
    return list(
        session.scalars(
            select(Problem.id)
            .join(Job, Job.id == Problem.job_id)
            .where(*_active(job_id), Problem.status != ProblemStatus.WAITING, ~has_open_step)
            .order_by(Problem.id)
        )
    )


def active_jobs(*, session: Session, job_id: int | None = None) -> list[int]:
    """Active jobs (all, or this one if it is active), oldest first."""
    where = [Job.status == JobStatus.ACTIVE] + ([Job.id == job_id] if job_id is not None else [])
    return list(session.scalars(select(Job.id).where(*where).order_by(Job.id)))


def unfinished_jobs(*, session: Session) -> list[int]:
    """Active jobs with no open problem left (the last one finished in a crash)."""
    open_problem = exists().where(Problem.job_id == Job.id, Problem.status.not_in(_TERMINAL))
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.ACTIVE, ~open_problem)))


@dataclass(frozen=True)
class Cancelled:
    problems: int
    """Problems that were open and are now cancelled."""
    in_flight: int
    """Steps running when it was cancelled: their calls finish and are recorded, nothing follows."""


def cancel_job(*, session: Session, job_id: int) -> Cancelled:
    """Stop the job: its tasks skip every step from now on (tasks check the job at claim)."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.ACTIVE).values(status=JobStatus.CANCELLED)
    )
    problems = session.execute(
        update(Problem)
        .where(Problem.job_id == job_id, Problem.status.not_in(_TERMINAL))
        .values(status=ProblemStatus.CANCELLED)
        .execution_options(synchronize_session=False)
    ).rowcount
    in_flight = session.scalar(
        select(func.count())
        .select_from(Step)
        .join(Problem, Problem.id == Step.problem_id)
        .where(Problem.job_id == job_id, Step.status == StepStatus.RUNNING)
    )
    return Cancelled(problems, in_flight or 0)


def reopen_job(*, session: Session, job_id: int) -> int:
    """Make a cancelled (or finished) job active again; its cancelled problems become open again:
    running if a worker had started them, pending if they have steps queued, else waiting for the
    feeder. Returns how many problems were reopened."""
    session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.ACTIVE, finished_at=None))
    started = session.execute(
        update(Problem)
        .where(
            Problem.job_id == job_id,
            Problem.status == ProblemStatus.CANCELLED,
            Problem.started_at.is_not(None),
        )
        .values(status=ProblemStatus.RUNNING, finished_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    has_steps = exists().where(Step.problem_id == Problem.id)
    pending = session.execute(
        update(Problem)
        .where(Problem.job_id == job_id, Problem.status == ProblemStatus.CANCELLED, has_steps)
        .values(status=ProblemStatus.PENDING, finished_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    waiting = session.execute(
        update(Problem)
        .where(Problem.job_id == job_id, Problem.status == ProblemStatus.CANCELLED)
        .values(status=ProblemStatus.WAITING, finished_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    return started + pending + waiting


@dataclass(frozen=True)
class Retried:
    problems: int
    steps: int


def retry_failed(*, session: Session, job_id: int) -> Retried:
    """Give the job's failed problems another go: their failed steps are queued again with a fresh
    retry budget; every step that succeeded, and every call recorded, stays as it is."""
    failed = list(
        session.scalars(
            select(Problem.id).where(Problem.job_id == job_id, Problem.status == ProblemStatus.FAILED)
        )
    )
    if not failed:
        return Retried(0, 0)
    steps = session.execute(
        update(Step)
        .where(Step.problem_id.in_(failed), Step.status == StepStatus.FAILED)
        .values(status=StepStatus.QUEUED, error=None, lease_until=None, retry_base=Step.attempts)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.execute(
        update(Problem)
        .where(Problem.id.in_(failed))
        .values(status=ProblemStatus.RUNNING, error=None, finished_at=None, **NO_TALLIES)
        .execution_options(synchronize_session=False)
    )
    session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.ACTIVE, finished_at=None))
    return Retried(len(failed), steps)


def expired_cutoff(grace_seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=grace_seconds)
