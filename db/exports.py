"""Reading a job into the rows `rstar.exports` flattens (the I/O half of `rstar export`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import problem_search
from db.jobs import iter_problem_results
from db.models import Job, Output, Problem, Selection, Step
from db.reports import UnknownJobError
from rstar.exports import ProblemExport, SolutionOut
from rstar.problem_types import get_problem_type
from rstar.strategies.base import SOLUTION_KINDS

EXPORT_BATCH = 500
"""Problems read per round of queries (their solutions and search trees held meanwhile)."""


def load_export(*, session: Session, job_id: int) -> tuple[Job, Iterator[ProblemExport]]:
    """The job, and its problems in input order, each with its solution outputs by id, read a
    batch of problems at a time as the caller consumes them (in the caller's transaction): an
    export streams whatever the job's size.

    Raises:
        UnknownJobError: no such job.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id}")
    return job, _problems(session, job)


def _problems(session: Session, job: Job) -> Iterator[ProblemExport]:
    after = 0
    while problems := list(
        session.scalars(
            select(Problem)
            .where(Problem.job_id == job.id, Problem.id > after)
            .order_by(Problem.id)
            .limit(EXPORT_BATCH)
        )
    ):
        ids = [p.id for p in problems]
        yield from _batch(session, job, problems, ids)
        after = ids[-1]


def _batch(session: Session, job: Job, problems: list[Problem], ids: list[int]) -> Iterator[ProblemExport]:
    solutions: dict[int, list[SolutionOut]] = {}
    rows = session.execute(
        select(
            Output.problem_id, Output.id, Step.key, Output.model, Output.kind, Output.round, Output.parent_id,
            Output.payload, Output.answer, Output.text,
        )
        .join(Step, Step.id == Output.step_id)
        .where(Output.problem_id.in_(ids), Output.kind.in_(SOLUTION_KINDS))
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
            select(Selection.problem_id, Selection.output_id).where(Selection.problem_id.in_(ids))
        ).all()
    )
    results = {r.id: r for r in iter_problem_results(session=session, job_id=job.id, problem_ids=ids)}
    kind = get_problem_type(job.problem_type)
    for p in problems:
        res = results[p.item_id]
        report = problem_search(session=session, job=job, problem=p)
        if report is not None:  # a search: its candidate paths are its solutions
            solutions[p.id] = search_paths(report)
        yield ProblemExport(
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
            kind=kind,
        )


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
