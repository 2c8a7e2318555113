"""The audit trail of one problem, read in one go for `rstar show` (and tests)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.calls import requests_as_sent
from db.models import Job, ModelCall, Output, Problem, Selection, Step
from db.state import load_state
from rstar.strategies import STRATEGIES, get_strategy


@dataclass(frozen=True)
class StepTrail:
    step: Step
    calls: list[ModelCall]
    output: Output | None
    parent: Output | None
    """The output this step's output extends or judges."""
    outputs: tuple[Output, ...] = ()
    """All of its outputs, by seq (a step that sampled several sequences may write several)."""


@dataclass(frozen=True)
class ProblemTrail:
    job: Job
    problem: Problem
    steps: list[StepTrail]
    selection: Selection | None
    chosen: Output | None
    """The output whose answer the selection chose."""
    sent: dict[int, Any]
    """Each model call's request as sent, by call id (stored, its system messages are apart)."""


def problem_trail(*, session: Session, job_id: int, item_id: str) -> ProblemTrail | None:
    problem = session.scalar(select(Problem).where(Problem.job_id == job_id, Problem.item_id == item_id))
    if problem is None:
        return None
    pid = problem.id
    steps = session.scalars(select(Step).where(Step.problem_id == pid).order_by(Step.round, Step.id)).all()
    calls = session.scalars(select(ModelCall).where(ModelCall.problem_id == pid).order_by(ModelCall.id)).all()
    outputs = {o.id: o for o in session.scalars(select(Output).where(Output.problem_id == pid))}
    by_step: dict[int, list[Output]] = {}
    for o in sorted(outputs.values(), key=lambda o: (o.step_id, o.seq)):
        by_step.setdefault(o.step_id, []).append(o)
    selection = session.scalar(select(Selection).where(Selection.problem_id == pid))
    trails = []
    for s in steps:
        outs = by_step.get(s.id, [])
        out = outs[0] if outs else None
        parent = outputs.get(out.parent_id) if out is not None and out.parent_id is not None else None
        step_calls = [c for c in calls if c.step_id == s.id]
        trails.append(StepTrail(step=s, calls=step_calls, output=out, parent=parent, outputs=tuple(outs)))
    chosen = outputs.get(selection.output_id) if selection is not None and selection.output_id else None
    return ProblemTrail(
        job=problem.job,
        problem=problem,
        steps=trails,
        selection=selection,
        chosen=chosen,
        sent=requests_as_sent(session=session, calls=calls),
    )


def problem_search(*, session: Session, job: Job, problem: Problem) -> Any | None:
    """The strategy's account of a search (visits, values, candidates: `report(state)`), for a
    strategy that searches (rstar); None for the others."""
    known = STRATEGIES.get(job.strategy)
    if known is None or not known.searches:
        return None
    report = get_strategy(job.strategy, job.params, kind=job.problem_type).report
    state = load_state(session=session, problem_id=problem.id, question=problem.question, models=job.models)
    return report(replace(state, outputs=dict(state.outputs)))  # read now, inside the session
