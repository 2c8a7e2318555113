"""The audit trail of one problem, read in one go for `rstar show` (and tests)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelCall, Problem, Review, Selection, Solution, Step


@dataclass(frozen=True)
class StepTrail:
    step: Step
    calls: list[ModelCall]
    solution: Solution | None
    review: Review | None


@dataclass(frozen=True)
class ProblemTrail:
    problem: Problem
    steps: list[StepTrail]
    selection: Selection | None


def problem_trail(*, session: Session, job_id: int, item_id: str) -> ProblemTrail | None:
    problem = session.scalar(select(Problem).where(Problem.job_id == job_id, Problem.item_id == item_id))
    if problem is None:
        return None
    pid = problem.id
    steps = session.scalars(select(Step).where(Step.problem_id == pid).order_by(Step.round, Step.id)).all()
    calls = session.scalars(select(ModelCall).where(ModelCall.problem_id == pid).order_by(ModelCall.id)).all()
    solutions = {s.step_id: s for s in session.scalars(select(Solution).where(Solution.problem_id == pid))}
    reviews = {r.step_id: r for r in session.scalars(select(Review).where(Review.problem_id == pid))}
    selection = session.scalar(select(Selection).where(Selection.problem_id == pid))
    trails = [
        StepTrail(
            step=s,
            calls=[c for c in calls if c.step_id == s.id],
            solution=solutions.get(s.id),
            review=reviews.get(s.id),
        )
        for s in steps
    ]
    return ProblemTrail(problem=problem, steps=trails, selection=selection)
