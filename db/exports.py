"""Reading a job into the rows `rstar.exports` flattens (the I/O half of `rstar export`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import problem_search
from db.jobs import problem_results
from db.models import Job, Output, Problem, Selection, Step
from db.reports import UnknownJobError
from rstar.exports import ProblemExport, SolutionOut
from rstar.strategies.base import SOLUTION_KINDS


def load_export(*, session: Session, job_id: int) -> tuple[Job, list[ProblemExport]]:
    """The job and its problems in input order, each with its solution outputs by id.

    Raises:
        UnknownJobError: no such job.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id}")
    in_job = Problem.job_id == job_id
    solutions: dict[int, list[SolutionOut]] = {}
    rows = session.execute(
        select(
            Output.problem_id, Output.id, Step.key, Output.model, Output.kind, Output.round, Output.parent_id,
            Output.payload, Output.answer, Output.text,
        )
        .join(Problem, Problem.id == Output.problem_id)
        .join(Step, Step.id == Output.step_id)
        .where(in_job, Output.kind.in_(SOLUTION_KINDS))
        .order_by(Output.id)
    )  # fmt: skip
    for r in rows:
        solutions.setdefault(r.problem_id, []).append(
            SolutionOut(
                id=r.id,
                step_key=r.key,
                model=r.model,
                kind=r.kind,
                round=r.round,
                parent_id=r.parent_id,
                steps=tuple(str(x) for x in (r.payload or {}).get("steps") or ()),
                answer=r.answer,
                reply=r.text,
            )
        )
    chosen = dict(
        session.execute(
            select(Selection.problem_id, Selection.output_id)
            .join(Problem, Problem.id == Selection.problem_id)
            .where(in_job)
        ).all()
    )
    results = {r.id: r for r in problem_results(session=session, job_id=job_id)}
    problems = []
    for p in session.scalars(select(Problem).where(in_job).order_by(Problem.id)):
        res = results[p.item_id]
        report = problem_search(session=session, job=job, problem=p)
        if report is not None:  # a search: its candidate paths are its solutions
            solutions[p.id] = search_paths(report)
        problems.append(
            ProblemExport(
                item_id=p.item_id,
                question=p.question,
                reference=p.reference_answer,
                answer=p.final_answer,
                status=p.status,
                rounds_used=p.rounds_used,
                chosen_output_id=chosen.get(p.id),
                model_calls=res.model_calls,
                prompt_tokens=res.prompt_tokens,
                completion_tokens=res.completion_tokens,
                solutions=tuple(solutions.get(p.id, ())),
                meta=p.meta,
            )
        )
    return job, problems


def search_paths(report: Any) -> list[SolutionOut]:
    """A search's candidate trajectories (rstar), each as one "solution": the path's steps from
    the root, its terminal node's answer and text, and the discriminator's verdict."""
    paths = []
    for c in report.candidates:
        node = report.tree.nodes[c.node]
        out = node.output
        verdict = report.verdicts.get(c.node) if report.verdicts is not None else None
        paths.append(
            SolutionOut(
                id=node.id,
                step_key=out.step_key,
                model=out.model,
                kind=str(node.kind),
                round=out.round,
                parent_id=out.parent_id,
                steps=tuple(report.tree.steps(node.id)),
                answer=c.answer,
                reply=out.text,
                search_path=True,
                consistent=verdict.consistent if verdict is not None else None,
            )
        )
    return paths
