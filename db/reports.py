"""Reading finished jobs into the plain rows `rstar.reports` aggregates, and their problems'
states for its replay of the selection per round (the I/O half of a report)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.jobs import problem_results
from db.models import CallOutcome, Job, ModelCall, Output, Problem, Selection, Step
from db.state import load_state
from rstar import roster
from rstar.problem_types import get_problem_type
from rstar.reports import (
    EndpointRow,
    JobRows,
    ProblemRow,
    Report,
    ReviewRow,
    SolutionRow,
    build_report,
    dataset_of,
    replay_rounds,
    search_row,
)
from rstar.strategies import get_strategy
from rstar.strategies.base import REVIEW_KINDS, SOLUTION_KINDS, ProblemState


class UnknownJobError(LookupError):
    """A job id that is not in the database."""


def load_job_rows(*, session: Session, job_ids: Sequence[int], searches: bool = True) -> list[JobRows]:
    """The rows of each job, in the order given (`answer_by_round` left empty: see
    `rstar.reports.replay_rounds`). `searches`: read each search's account from its strategy
    (a state per problem; the plots do without).

    Raises:
        UnknownJobError: a job id is not in the database.
    """
    return [_load_job(session, job_id, searches=searches) for job_id in job_ids]


def _load_job(session: Session, job_id: int, *, searches: bool) -> JobRows:
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
    reviews: dict[int, list[ReviewRow]] = {}
    outputs = (
        select(
            Output.id,
            Output.problem_id,
            Output.round,
            Output.model,
            Output.kind,
            Output.answer,
            Output.parent_id,
            Output.payload,
        )
        .join(Problem, Problem.id == Output.problem_id)
        .where(Problem.job_id == job_id)
    )
    problem_type = get_problem_type(job.problem_type)
    strategy = get_strategy(job.strategy, job.params, kind=problem_type)
    searching = strategy.searches
    tokens_by_kind: dict[int, dict[str, int]] = {}
    for problem_id, kind, tokens in session.execute(
        select(ModelCall.problem_id, Step.kind, func.sum(ModelCall.completion_tokens))
        .join(Step, Step.id == ModelCall.step_id)
        .join(Problem, Problem.id == ModelCall.problem_id)
        .where(Problem.job_id == job_id)
        .group_by(ModelCall.problem_id, Step.kind)
    ):
        tokens_by_kind.setdefault(problem_id, {})[kind] = int(tokens or 0)
    for o in session.execute(outputs) if not searching else ():
        if o.kind in SOLUTION_KINDS:
            solutions.setdefault(o.problem_id, []).append(
                SolutionRow(o.id, o.round, o.model, o.kind, o.answer, o.parent_id)
            )
        elif o.kind in REVIEW_KINDS and o.parent_id is not None:
            verdict = str((o.payload or {}).get("verdict"))
            reviews.setdefault(o.problem_id, []).append(ReviewRow(o.round, o.model, verdict, o.parent_id))
    results = {r.id: r for r in problem_results(session=session, job_id=job_id)}
    rows = []
    problems = session.scalars(select(Problem).where(Problem.job_id == job_id).order_by(Problem.id)).all()
    chosen = dict(
        session.execute(
            select(Selection.problem_id, Selection.output_id)
            .join(Problem, Problem.id == Selection.problem_id)
            .where(Problem.job_id == job_id)
        ).all()
    )
    for p in problems:
        res = results[p.item_id]
        search = tree = None
        if searching and searches:
            # The strategy's own account of the search: its tree, candidates and answers.
            state = load_state(session=session, problem_id=p.id, question=p.question, models=job.models)
            account = strategy.report(replace(state, outputs=dict(state.outputs)))
            tree = account.tree
            search = search_row(account, chosen.get(p.id)) if p.status == "answered" else None
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
                requests=res.requests,
                sequences=res.sequences,
                tree_nodes=len(tree.nodes) - 1 if tree is not None else None,
                tree_depth=max(n.depth for n in tree.nodes.values()) if tree is not None else None,
                wall_time_s=res.wall_time_s,
                model_seconds=round((latency.get(p.id) or 0.0) / 1000, 3),
                solutions=tuple(sorted(solutions.get(p.id, []), key=lambda s: s.id)),
                reviews=tuple(reviews.get(p.id, [])),
                tokens_by_kind=tokens_by_kind.get(p.id, {}),
                search=search,
                kind=problem_type,
                dataset=dataset_of(p.meta),
            )
        )
    wall = None
    if job.finished_at is not None and job.created_at is not None:
        wall = round((job.finished_at - job.created_at).total_seconds(), 3)
    replicated = any(len(roster.urls_of(job.models, name)) > 1 for name in roster.names(job.models))
    return JobRows(
        job.id,
        job.name,
        job.strategy,
        dict(job.params),
        tuple(rows),
        wall,
        roster.names(job.models),
        _endpoints(session, job_id) if replicated else (),
        problem_type,
    )


def _endpoints(session: Session, job_id: int) -> tuple[EndpointRow, ...]:
    """Calls, tokens and latency per model and server of the job (the replicas' shares)."""
    ok = ModelCall.outcome == CallOutcome.OK
    sent = ModelCall.reused_from_id.is_(None)
    rows = session.execute(
        select(
            Step.model,
            ModelCall.endpoint,
            func.count(),
            func.sum(case((ok, 0), else_=1)),
            func.sum(func.coalesce(ModelCall.requests, 1)),
            func.sum(func.coalesce(ModelCall.sequences, 0)),
            func.sum(func.coalesce(ModelCall.completion_tokens, 0)),
            func.avg(case((sent, ModelCall.latency_ms), else_=None)),
        )
        .join(Step, Step.id == ModelCall.step_id)
        .join(Problem, Problem.id == ModelCall.problem_id)
        .where(Problem.job_id == job_id)
        .group_by(Step.model, ModelCall.endpoint)
        .order_by(Step.model, ModelCall.endpoint)
    ).all()
    return tuple(
        EndpointRow(
            model=str(model),
            endpoint=str(endpoint),
            calls=int(calls),
            failed=int(failed or 0),
            requests=int(requests or 0),
            sequences=int(sequences or 0),
            completion_tokens=int(tokens or 0),
            mean_latency_ms=round(float(latency or 0.0), 1),
        )
        for model, endpoint, calls, failed, requests, sequences, tokens, latency in rows
    )


class _ProblemStates(Mapping[str, ProblemState]):
    """A job's problem states by item id, each read when asked for (a report replays only the
    problems that used more than one round). Valid only inside the session that made it."""

    def __init__(self, session: Session, job_id: int) -> None:
        self._session = session
        self._models = session.scalar(select(Job.models).where(Job.id == job_id)) or []
        self._problems = {
            item_id: (problem_id, question)
            for item_id, problem_id, question in session.execute(
                select(Problem.item_id, Problem.id, Problem.question).where(Problem.job_id == job_id)
            )
        }

    def __getitem__(self, item_id: str) -> ProblemState:
        problem_id, question = self._problems[item_id]
        return load_state(
            session=self._session, problem_id=problem_id, question=question, models=self._models
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._problems)

    def __len__(self) -> int:
        return len(self._problems)


def problem_states(*, session: Session, job_id: int) -> Mapping[str, ProblemState]:
    """The job's problem states by item id, read on first use: use it inside the session."""
    return _ProblemStates(session, job_id)


def load_report(
    *, session: Session, job_ids: Sequence[int], max_rounds_limit: int, searches: bool = True
) -> Report:
    """The report of these jobs (`rstar report`, the viewer's plots), read inside `session`.

    Raises:
        UnknownJobError: a job id is not in the database.
    """
    return build_report(
        [
            replay_rounds(
                job, problem_states(session=session, job_id=job.job_id), max_rounds_limit=max_rounds_limit
            )
            for job in load_job_rows(session=session, job_ids=job_ids, searches=searches)
        ]
    )
