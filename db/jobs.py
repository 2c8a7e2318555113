"""Jobs and their problems: creating a job, counting its problems, failing a problem, finishing
the job, reading its results.

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from db.models import (
    TERMINAL_PROBLEM_STATES,
    Job,
    JobStatus,
    ModelCall,
    Output,
    Problem,
    ProblemStatus,
    Selection,
    Step,
    StepStatus,
    utcnow,
)
from rstar.reports import judge
from rstar.strategies.base import StepSpec
from rstar.types import ProblemInput

CREATE_BATCH = 1000
"""Problems inserted per statement by `create_job`."""


_problems_t, _steps_t = Problem.__table__, Step.__table__
_INSERT_PROBLEMS = insert(_problems_t).returning(_problems_t.c.id, sort_by_parameter_order=True)
_INSERT_STEPS = insert(_steps_t)


def create_job(
    *,
    session: Session,
    name: str,
    strategy: str,
    params: dict[str, Any],
    models: list[dict[str, Any]],
    source: str | None,
    problems: Iterable[ProblemInput],
    first_steps: tuple[StepSpec, ...],
) -> tuple[Job, int]:
    """The job (`models`: its roster, [{"name", "url"}, ...]), its problems and each problem's
    first steps, written in the caller's transaction; returns the job and its number of problems.

    Problems and steps go in as plain rows, `CREATE_BATCH` problems a statement (their ids returned
    in order), from an iterable read as it goes: a session held every object of a 100,000-problem
    file until the commit (about 19 KB a problem). `queued_steps` reads the steps back.
    """
    job = Job(
        name=name,
        strategy=strategy,
        params=params,
        models=models,
        source=source,
        status=JobStatus.ACTIVE,
    )
    session.add(job)
    session.flush()
    conn = session.connection()
    count = 0
    given = iter(problems)
    while batch := list(islice(given, CREATE_BATCH)):
        ids = conn.execute(_INSERT_PROBLEMS, [_problem_row(job.id, p) for p in batch]).scalars().all()
        rows = [_step_row(problem_id, spec) for problem_id in ids for spec in first_steps]
        if rows:
            conn.execute(_INSERT_STEPS, rows)
        count += len(ids)
    return job, count


@dataclass(frozen=True)
class QueuedStep:
    """What a queued step's dispatch needs (tasks/dispatch.py)."""

    id: int
    problem_id: int
    model: str | None


def queued_steps(*, session: Session, job_id: int, after: int = 0, limit: int = 5000) -> list[QueuedStep]:
    """The job's queued steps with ids above `after`, in id order, at most `limit`: page through
    them with the last id (a million problems' first steps are never all in memory)."""
    rows = session.execute(
        select(Step.id, Step.problem_id, Step.model)
        .join(Problem, Problem.id == Step.problem_id)
        .where(Problem.job_id == job_id, Step.status == StepStatus.QUEUED, Step.id > after)
        .order_by(Step.id)
        .limit(limit)
    ).all()
    return [QueuedStep(r.id, r.problem_id, r.model) for r in rows]


def _problem_row(job_id: int, p: ProblemInput) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "item_id": p.item_id,
        "line": p.line,
        "question": p.question,
        "reference": p.reference,
        "reference_answer": p.reference_answer,
        "meta": p.meta,
        "status": ProblemStatus.PENDING,
    }


def _step_row(problem_id: int, spec: StepSpec) -> dict[str, Any]:
    return {
        "problem_id": problem_id,
        "key": spec.key,
        "kind": str(spec.kind),
        "model": spec.model,
        "round": spec.round,
    }


def status_counts(*, session: Session, job_id: int) -> Counter[str]:
    rows = session.execute(
        select(Problem.status, func.count()).where(Problem.job_id == job_id).group_by(Problem.status)
    ).all()
    return Counter({status: count for status, count in rows})


def rounds_reached(*, session: Session, job_id: int) -> list[tuple[str, int]]:
    """Per problem, its status and the highest round of its model steps (0: none yet). For rstar a
    step's round is the rollout that asked for it: the rollout a search is in (the last + 1 once
    the discriminator runs)."""
    highest = (
        select(Step.problem_id, func.max(Step.round).label("reached"))
        .join(Problem, Problem.id == Step.problem_id)
        .where(Problem.job_id == job_id, Step.model.is_not(None))
        .group_by(Step.problem_id)
        .subquery()
    )
    rows = session.execute(
        select(Problem.status, func.coalesce(highest.c.reached, 0))
        .select_from(Problem)
        .outerjoin(highest, highest.c.problem_id == Problem.id)
        .where(Problem.job_id == job_id)
    ).all()
    return [(str(r[0]), int(r[1])) for r in rows]


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


def fail_problem(*, session: Session, problem_id: int, error: str) -> None:
    session.execute(
        update(Problem)
        .where(Problem.id == problem_id, Problem.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]))
        .values(status=ProblemStatus.FAILED, error=error, finished_at=utcnow())
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
    model: str | None
    """The model whose output gave the selected answer."""
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    wall_time_s: float | None
    status: str
    error: str | None
    requests: int = 0
    """HTTP requests sent (a call that fanned its samples out counts each)."""
    sequences: int = 0
    """Sequences generated (a call that sampled n counts n)."""
    meta: dict[str, Any] | None = None
    """The input line's "meta" object."""


def problem_results(*, session: Session, job_id: int) -> list[ProblemResult]:
    stats = {
        pid: (n, pt or 0, ct or 0, rq or 0, sq or 0)
        for pid, n, pt, ct, rq, sq in session.execute(
            select(
                ModelCall.problem_id,
                func.count(),
                func.sum(ModelCall.prompt_tokens),
                func.sum(ModelCall.completion_tokens),
                func.sum(ModelCall.requests),
                func.sum(ModelCall.sequences),
            )
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id)
            .group_by(ModelCall.problem_id)
        ).all()
    }
    chosen_by = dict(
        session.execute(
            select(Selection.problem_id, Output.model)
            .join(Output, Output.id == Selection.output_id)
            .join(Problem, Problem.id == Selection.problem_id)
            .where(Problem.job_id == job_id)
        ).all()
    )
    results = []
    for p in session.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)):
        n, pt, ct, rq, sq = stats.get(p.id, (0, 0, 0, 0, 0))
        correct = None
        if p.reference_answer is not None and p.status == ProblemStatus.ANSWERED:
            correct = judge(p.status, p.final_answer, p.reference_answer)
        wall = _seconds(p.started_at, p.finished_at)
        results.append(
            ProblemResult(
                id=p.item_id,
                question=p.question,
                final_answer=p.final_answer,
                reference_answer=p.reference_answer,
                meta=p.meta,
                correct=correct,
                rounds_used=p.rounds_used,
                model=chosen_by.get(p.id),
                model_calls=n,
                prompt_tokens=pt,
                completion_tokens=ct,
                wall_time_s=wall,
                status=p.status,
                error=p.error,
                requests=rq,
                sequences=sq,
            )
        )
    return results


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None
