"""Reading finished jobs into the plain rows `rstar.reports` aggregates (the I/O half of a report)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import queries
from db.models import Job, ModelCall, Problem, Review, Solution
from rstar.reports import JobRows, ProblemRow, ReviewRow, SolutionRow, state_up_to_round
from rstar.strategies import ParamError, get_strategy


class UnknownJobError(LookupError):
    """A job id that is not in the database."""


def load_job_rows(*, session: Session, job_ids: Sequence[int], max_rounds_limit: int = 10) -> list[JobRows]:
    """The rows of each job, in the order given.

    Raises:
        UnknownJobError: a job id is not in the database.
    """
    return [_load_job(session, job_id, max_rounds_limit) for job_id in job_ids]


def _load_job(session: Session, job_id: int, max_rounds_limit: int) -> JobRows:
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id}")
    latency = dict(
        session.execute(
            select(ModelCall.problem_id, func.sum(ModelCall.latency_ms))
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id)
            .group_by(ModelCall.problem_id)
        ).all()
    )
    solutions: dict[int, list[SolutionRow]] = {}
    for s in session.scalars(
        select(Solution).join(Problem, Problem.id == Solution.problem_id).where(Problem.job_id == job_id)
    ):
        solutions.setdefault(s.problem_id, []).append(
            SolutionRow(s.id, s.round, s.author, s.kind, s.answer, s.parent_id)
        )
    reviews: dict[int, list[ReviewRow]] = {}
    for r in session.scalars(
        select(Review).join(Problem, Problem.id == Review.problem_id).where(Problem.job_id == job_id)
    ):
        reviews.setdefault(r.problem_id, []).append(
            ReviewRow(r.round, r.reviewer, r.verdict, r.target_solution_id)
        )
    try:
        strategy = get_strategy(job.strategy, job.params, max_rounds_limit=max_rounds_limit)
    except ParamError:
        strategy = None  # a strategy this version does not know: no replay per round
    results = {r.id: r for r in queries.problem_results(session=session, job_id=job_id)}
    rows = []
    problems = session.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
    for p in problems:
        res = results[p.item_id]
        by_round: tuple[str | None, ...] = ()
        if strategy is not None and p.status == "answered" and (p.rounds_used or 0) > 1:
            state = queries.load_state(session=session, problem_id=p.id, question=p.question)
            earlier = [
                strategy.select(state_up_to_round(state, r)).answer for r in range(1, p.rounds_used or 0)
            ]
            by_round = (*earlier, p.final_answer)
        rows.append(
            ProblemRow(
                item_id=p.item_id,
                status=p.status,
                final_answer=p.final_answer,
                reference_answer=p.reference_answer,
                rounds_used=p.rounds_used,
                model_calls=res.model_calls,
                prompt_tokens=res.prompt_tokens,
                completion_tokens=res.completion_tokens,
                wall_time_s=res.wall_time_s,
                model_seconds=round((latency.get(p.id) or 0.0) / 1000, 3),
                solutions=tuple(sorted(solutions.get(p.id, []), key=lambda s: s.id)),
                reviews=tuple(reviews.get(p.id, [])),
                answer_by_round=by_round,
            )
        )
    wall = None
    if job.finished_at is not None and job.created_at is not None:
        wall = round((job.finished_at - job.created_at).total_seconds(), 3)
    return JobRows(job.id, job.name, job.strategy, dict(job.params), tuple(rows), wall)
