"""The audit trail of one problem, read in one go for `rstar show` (and tests)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Job, ModelCall, Output, Problem, Selection, Step


@dataclass(frozen=True)
class StepTrail:
    step: Step
    calls: list[ModelCall]
    output: Output | None
    parent: Output | None
    """The output this step's output extends or judges."""


@dataclass(frozen=True)
class ProblemTrail:
    job: Job
    problem: Problem
    steps: list[StepTrail]
    selection: Selection | None
    chosen: Output | None
    """The output whose answer the selection chose."""


def problem_trail(*, session: Session, job_id: int, item_id: str) -> ProblemTrail | None:
    problem = session.scalar(select(Problem).where(Problem.job_id == job_id, Problem.item_id == item_id))
    if problem is None:
        return None
    pid = problem.id
    steps = session.scalars(select(Step).where(Step.problem_id == pid).order_by(Step.round, Step.id)).all()
    calls = session.scalars(select(ModelCall).where(ModelCall.problem_id == pid).order_by(ModelCall.id)).all()
    outputs = {o.id: o for o in session.scalars(select(Output).where(Output.problem_id == pid))}
    by_step = {o.step_id: o for o in outputs.values()}
    selection = session.scalar(select(Selection).where(Selection.problem_id == pid))
    trails = []
    for s in steps:
        out = by_step.get(s.id)
        parent = outputs.get(out.parent_id) if out is not None and out.parent_id is not None else None
        trails.append(
            StepTrail(step=s, calls=[c for c in calls if c.step_id == s.id], output=out, parent=parent)
        )
    chosen = outputs.get(selection.output_id) if selection is not None and selection.output_id else None
    return ProblemTrail(job=problem.job, problem=problem, steps=trails, selection=selection, chosen=chosen)
