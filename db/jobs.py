"""Jobs and their problems: creating a job, counting its problems, failing a problem, finishing
the job, reading its results.

Like every query module in db/: keyword-only and typed, one transaction's worth of work each
(the caller owns the transaction).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import (
    TERMINAL_PROBLEM_STATES,
    Job,
    JobCount,
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
RESULTS_BATCH = 1000
"""Problems read per query by `iter_problem_results`."""


_problems_t, _steps_t, _calls_t = Problem.__table__, Step.__table__, ModelCall.__table__


def _summed(column: Any) -> Any:
    return (
        select(func.coalesce(func.sum(column), 0))
        .where(_calls_t.c.problem_id == _problems_t.c.id)
        .scalar_subquery()
    )


TALLIES: dict[str, Any] = {
    "calls": select(func.count()).where(_calls_t.c.problem_id == _problems_t.c.id).scalar_subquery(),
    "requests": _summed(_calls_t.c.requests),
    "sequences": _summed(_calls_t.c.sequences),
    "prompt_tokens": _summed(_calls_t.c.prompt_tokens),
    "completion_tokens": _summed(_calls_t.c.completion_tokens),
}
"""A finished problem's tallies, summed from its model calls in the statement that finishes it
(an UPDATE of `problems`): written once per problem, read by every count and page."""
NO_TALLIES: dict[str, Any] = {"correct": None, **dict.fromkeys(TALLIES)}
"""What a problem that is open again carries: readers count its calls while it is."""
_INSERT_PROBLEMS = insert(_problems_t).returning(_problems_t.c.id)
_INSERT_STEPS = insert(_steps_t).returning(_steps_t.c.id, _steps_t.c.problem_id, _steps_t.c.model)


def create_job(
    *,
    session: Session,
    name: str,
    strategy: str,
    params: dict[str, Any],
    models: list[dict[str, Any]],
    source: str | None,
    problems: Iterable[ProblemInput],
    problem_type: str = "number",
) -> tuple[Job, int]:
    """The job (`models`: its roster, [{"name", "url"}, ...]) and its problems, all waiting,
    written in the caller's transaction; returns the job and its number of problems.
    `start_problems` starts them.

    Problems go in as plain rows, `CREATE_BATCH` a statement, from an iterable read as it goes: a
    session held every object of a 100,000-problem file until the commit (about 19 KB a problem).
    """
    job = Job(
        name=name,
        strategy=strategy,
        params=params,
        models=models,
        source=source,
        problem_type=problem_type,
        status=JobStatus.ACTIVE,
    )
    session.add(job)
    session.flush()
    conn = session.connection()
    count = 0
    given = iter(problems)
    while batch := list(islice(given, CREATE_BATCH)):
        # With RETURNING, SQLAlchemy sends the batch as multi-row statements ("insertmanyvalues").
        # Without it psycopg's executemany is a statement a row, and each fires job_counts'
        # statement-level trigger on PostgreSQL (migration 0009): 100,000 problems took 134 s that
        # way against 9 s (and 8 s with no trigger); on SQLite it is faster too.
        conn.execute(_INSERT_PROBLEMS, [_problem_row(job.id, p) for p in batch]).all()
        count += len(batch)
    return job, count


def start_problems(
    *, session: Session, job_id: int, first_steps: tuple[StepSpec, ...], window: int
) -> list[QueuedStep]:
    """Start the job's next waiting problems (input order) until `window` are started and open:
    write their first steps, make them pending. Returns the steps to send once this commits.

    The job's row is locked first (FOR NO KEY UPDATE on PostgreSQL, which rows referring to it do
    not wait for; SQLite serialises writers), so two problems ending together do not both fill the
    same free places; nothing else that runs per step locks it. The count reads the (job_id,
    status) index over at most `window` rows.
    """
    conn = session.connection()
    job = conn.execute(select(Job.status).where(Job.id == job_id).with_for_update(key_share=True)).first()
    if job is None or job.status != JobStatus.ACTIVE:
        return []
    started = session.scalar(
        select(func.count())
        .select_from(Problem)
        .where(Problem.job_id == job_id, Problem.status.in_(_STARTED_OPEN))
    )
    free = window - (started or 0)
    if free <= 0:
        return []
    ids = list(
        session.scalars(
            select(Problem.id)
            .where(Problem.job_id == job_id, Problem.status == ProblemStatus.WAITING)
            .order_by(Problem.id)
            .limit(free)
        )
    )
    if not ids:
        return []
    session.execute(
        update(Problem)
        .where(Problem.id.in_(ids), Problem.status == ProblemStatus.WAITING)
        .values(status=ProblemStatus.PENDING)
        .execution_options(synchronize_session=False)
    )
    rows = [_step_row(problem_id, spec) for problem_id in ids for spec in first_steps]
    if not rows:
        return []
    made = conn.execute(_INSERT_STEPS, rows).all()
    return [QueuedStep(r.id, r.problem_id, r.model) for r in made]


_STARTED_OPEN = [ProblemStatus.PENDING.value, ProblemStatus.RUNNING.value]
_NOT_STARTED = [ProblemStatus.WAITING.value, ProblemStatus.PENDING.value]
"""No worker has taken a step of theirs yet."""


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
        "status": ProblemStatus.WAITING,
    }


def _step_row(problem_id: int, spec: StepSpec) -> dict[str, Any]:
    return {
        "problem_id": problem_id,
        "key": spec.key,
        "kind": str(spec.kind),
        "model": spec.model,
        "round": spec.round,
    }


def job_counts(*, session: Session, job_ids: Sequence[int]) -> dict[int, list[Row[Any]]]:
    """Each job's problems in groups (`JobCount`'s columns), counted by the database as they change
    (migration 0009): a few rows a job whatever its size. Jobs without problems are left out. Rows,
    not ORM objects: a session's identity map would keep a count it read before as it was."""
    counts = JobCount.__table__
    found: dict[int, list[Row[Any]]] = {}
    for row in session.execute(select(counts).where(counts.c.job_id.in_(job_ids), counts.c.n > 0)):
        found.setdefault(row.job_id, []).append(row)
    return found


def status_counts(*, session: Session, job_id: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for row in job_counts(session=session, job_ids=[job_id]).get(job_id, []):
        counts[row.status] += row.n
    return counts


@dataclass(frozen=True)
class RolloutProgress:
    """How far a search job's problems are: rollouts done per problem, and how many are past the
    last rollout, in the discriminator."""

    mean: float
    least: int
    most: int
    judging: int


def rollout_progress(*, session: Session, job_id: int, rollouts: int) -> RolloutProgress | None:
    """For rstar: a step's round is the rollout that asked for it, so a problem whose highest
    model step is in round r has r - 1 rollouts done (past the last: in the discriminator). An
    answered problem has done them all and a waiting or pending one none: only the others' steps are read,
    so the cost follows the problems in progress, not the job's size. None for a job without
    problems."""
    counts = status_counts(session=session, job_id=job_id)
    if not counts:
        return None
    reached = (
        select(func.max(Step.round).label("r"))
        .join(Problem, Problem.id == Step.problem_id)
        .where(
            Problem.job_id == job_id,
            # The states named, not NOT IN: the (job_id, status) index finds them in a finished million.
            Problem.status.in_(
                [s.value for s in ProblemStatus if s not in (ProblemStatus.ANSWERED, *_NOT_STARTED)]
            ),
            Step.model.is_not(None),
        )
        .group_by(Step.problem_id)
        .subquery()
    )
    rows = [int(r) for r in session.scalars(select(reached.c.r))]
    in_progress = [min(rollouts, max(0, r - 1)) for r in rows]
    answered = counts[ProblemStatus.ANSWERED.value]
    pending = sum(counts[s] for s in _NOT_STARTED)
    # Problems neither answered nor pending that have no model step yet have done none.
    idle = sum(counts.values()) - answered - pending - len(rows)
    per = [*in_progress, *([rollouts] if answered else []), *([0] if pending or idle else [])]
    total = sum(in_progress) + answered * rollouts
    return RolloutProgress(
        mean=total / sum(counts.values()),
        least=min(per),
        most=max(per),
        judging=sum(1 for r in rows if r > rollouts),
    )


def maybe_finish_job(*, session: Session, job_id: int) -> bool:
    """Mark the job finished once no problem is left to work on."""
    # One row is enough to say no: this runs each time a problem ends, on jobs of any size.
    open_problem = session.scalar(
        select(Problem.id)
        .where(Problem.job_id == job_id, Problem.status.not_in([s.value for s in TERMINAL_PROBLEM_STATES]))
        .limit(1)
    )
    if open_problem is not None:
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
        .values(status=ProblemStatus.FAILED, error=error, finished_at=utcnow(), correct=None, **TALLIES)
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


def stored_judgement(p: Any) -> bool:
    """Whether an answered problem's answer is right (a Problem, or a row with its columns): the
    worker's judgement, made by the job's problem type and stored with the answer (0007); judged
    here only for rows written before it was stored, all of them number jobs."""
    return p.correct if p.correct is not None else judge(p.status, p.final_answer, p.reference_answer)


def problem_results(*, session: Session, job_id: int) -> list[ProblemResult]:
    return list(iter_problem_results(session=session, job_id=job_id))


def iter_problem_results(
    *,
    session: Session,
    job_id: int,
    problem_ids: Sequence[int] | None = None,
    batch: int = RESULTS_BATCH,
) -> Iterator[ProblemResult]:
    """The job's problems (or those of `problem_ids`) in input order, `batch` rows at a time: a
    finished problem's judgement and cost as stored with its answer, an open one's counted from
    its model calls (a batch's worth at a time), so memory stays flat whatever the job's size."""
    after = 0
    while True:
        query = select(Problem).where(Problem.job_id == job_id, Problem.id > after)
        if problem_ids is not None:
            query = query.where(Problem.id.in_(problem_ids))
        problems = list(session.scalars(query.order_by(Problem.id).limit(batch)))
        if not problems:
            return
        ids = [p.id for p in problems]
        live = _live_tallies(session, [p.id for p in problems if p.calls is None])
        chosen_by = dict(
            session.execute(
                select(Selection.problem_id, Output.model)
                .join(Output, Output.id == Selection.output_id)
                .where(Selection.problem_id.in_(ids))
            ).all()
        )
        for p in problems:
            n, pt, ct, rq, sq = live.get(p.id) or (
                p.calls or 0,
                p.prompt_tokens or 0,
                p.completion_tokens or 0,
                p.requests or 0,
                p.sequences or 0,
            )
            correct = None
            if p.reference_answer is not None and p.status == ProblemStatus.ANSWERED:
                correct = stored_judgement(p)
            yield ProblemResult(
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
                wall_time_s=_seconds(p.started_at, p.finished_at),
                status=p.status,
                error=p.error,
                requests=rq,
                sequences=sq,
            )
        after = problems[-1].id


def _live_tallies(session: Session, problem_ids: Sequence[int]) -> dict[int, tuple[int, int, int, int, int]]:
    """Open problems' cost so far, from their model calls: (calls, prompt tokens, completion
    tokens, requests, sequences)."""
    if not problem_ids:
        return {}
    return {
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
            .where(ModelCall.problem_id.in_(problem_ids))
            .group_by(ModelCall.problem_id)
        ).all()
    }


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None
