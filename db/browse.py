"""What the viewer (`rstar ui`) reads: every job at a glance, a job's problems filtered, sorted and
paged, and two jobs compared on the problems they share.

Correctness is the judgement stored with each answer (`db.jobs.stored_judgement`), as in `rstar results`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, case, func, select
from sqlalchemy.orm import Session

from db.jobs import (
    TALLIES,
    ProblemResult,
    iter_problem_results,
    job_counts,
    problem_results,
    stored_judgement,
)
from db.models import TERMINAL_PROBLEM_STATES, Job, ModelCall, Output, Problem, ProblemStatus, Selection
from rstar import roster
from rstar.reports import PairedComparison, paired_counts, wilson_interval

OUTCOMES = ("correct", "wrong", "unanswered", "failed", "no reference", "open")
"""A problem's outcome, as the filter names it: right or wrong against its reference; answered
with no parsable answer; failed for good; answered with no reference to judge by; not done yet
(waiting, pending, running or cancelled)."""


def _live(column: str) -> Any:
    """A problem's tally as a sort key: stored once finished, summed from its calls while open
    (`db.jobs.TALLIES`, the subquery that stores it)."""
    return case((Problem.calls.is_(None), TALLIES[column]), else_=getattr(Problem, column))


def _seconds(dialect: str) -> Any:
    if dialect == "sqlite":
        seconds = (func.julianday(Problem.finished_at) - func.julianday(Problem.started_at)) * 86400.0
    else:
        seconds = func.extract("epoch", Problem.finished_at - Problem.started_at)
    return func.coalesce(seconds, -1.0)


SORTS: dict[str, Callable[[str], Any]] = {
    "line": lambda dialect: Problem.line,
    "calls": lambda dialect: _live("calls"),
    "sequences": lambda dialect: _live("sequences"),
    "tokens": lambda dialect: _live("prompt_tokens") + _live("completion_tokens"),
    "rounds": lambda dialect: func.coalesce(Problem.rounds_used, -1),
    "time": _seconds,
}
"""The job page's sort keys in SQL, by the database's dialect name (ties in input order)."""


def outcome_of(r: ProblemResult | Problem) -> str:
    return _outcome_from(
        r.status,
        answered=r.final_answer is not None,
        referenced=r.reference_answer is not None,
        right=lambda: stored_judgement(r),
    )


def _outcome_from(status: str, *, answered: bool, referenced: bool, right: Callable[[], bool]) -> str:
    """OUTCOMES' rule, for a problem or a group of `job_counts` (`_outcome` is the same in SQL)."""
    if status == ProblemStatus.FAILED:
        return "failed"
    if status != ProblemStatus.ANSWERED:
        return "open"
    if not answered:
        return "unanswered"
    if not referenced:
        return "no reference"
    return "correct" if right() else "wrong"


def _group_outcome(group: Row[Any]) -> str:
    return _outcome_from(
        group.status, answered=group.answered, referenced=group.referenced, right=lambda: group.correct == 1
    )


@dataclass(frozen=True)
class JobOverview:
    id: int
    name: str
    strategy: str
    models: tuple[str, ...]
    status: str
    created_at: datetime
    finished_at: datetime | None
    problems: int
    done: int
    """Problems answered or failed (a cancelled one is not done: the bar shows work done)."""
    right: int
    judged: int
    """Finished problems with a reference: accuracy is right / judged (failed, unanswered and
    cancelled count wrong); a running job's accuracy is so far, over the problems it finished."""
    model_calls: int
    requests: int
    sequences: int
    tokens: int
    cancelled: int = 0
    problem_type: str = "number"
    """The form of its answers (`rstar.problem_types`)."""

    @classmethod
    def of(cls, job: Job, **counts: int) -> JobOverview:
        """The overview of `job` with these counts (the fields after `finished_at`)."""
        return cls(
            id=job.id,
            name=job.name,
            strategy=job.strategy,
            models=tuple(roster.names(job.models)),
            status=job.status,
            created_at=job.created_at,
            finished_at=job.finished_at,
            problem_type=job.problem_type,
            **counts,
        )

    @property
    def accuracy(self) -> float | None:
        return self.right / self.judged if self.judged else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.right, self.judged)

    @property
    def wall_time_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()


def job_overviews(*, session: Session, job_ids: Sequence[int] | None = None) -> list[JobOverview]:
    """Every job (or those named), newest first, with its progress, accuracy and cost, from the
    tallies finished problems keep (migration 0007) plus the calls of open ones: a handful of
    grouped queries whatever the number of jobs and problems."""
    jobs = select(Job).order_by(Job.id.desc())
    if job_ids is not None:
        jobs = jobs.where(Job.id.in_(job_ids))
    found = list(session.scalars(jobs))
    ids = [j.id for j in found]
    terminal = {s.value for s in TERMINAL_PROBLEM_STATES}
    counts: dict[int, Counter[str]] = {}
    judged: Counter[int] = Counter()
    right: Counter[int] = Counter()
    cost: dict[int, list[int]] = {}
    # The counts the database keeps (migration 0009): judgements and the finished problems'
    # tallies (0 while a problem is open) with no pass over the problems.
    for job_id, groups in job_counts(session=session, job_ids=ids).items():
        total = cost.setdefault(job_id, [0] * len(_TALLIED))
        for g in groups:
            counts.setdefault(job_id, Counter())[g.status] += g.n
            if g.status in terminal:
                judged[job_id] += g.n if g.referenced else 0
                right[job_id] += g.n if g.correct == 1 else 0
            cost[job_id] = total = [a + getattr(g, c) for a, c in zip(total, _TALLIED, strict=True)]
    # Problems without tallies (open, or cancelled) count their calls live: found by status in the
    # (job_id, status) index, so a finished million costs nothing here.
    untallied = [s.value for s in ProblemStatus if s.value not in _TALLIED_STATES]
    busy = [j for j, c in counts.items() if any(c[s] for s in untallied)]
    for job_id, *sums in session.execute(
        select(Problem.job_id, func.count(), *(func.sum(getattr(ModelCall, c)) for c in _TALLIED[1:]))
        .join(Problem, Problem.id == ModelCall.problem_id)
        .where(Problem.job_id.in_(busy), Problem.status.in_(untallied), Problem.calls.is_(None))
        .group_by(Problem.job_id)
    ):
        total = cost.setdefault(job_id, [0] * len(_TALLIED))
        cost[job_id] = [a + (b or 0) for a, b in zip(total, sums, strict=True)]
    out = []
    for j in found:
        c = counts.get(j.id, Counter())
        calls, requests, sequences, prompt, completion = cost.get(j.id, [0] * len(_TALLIED))
        out.append(
            JobOverview.of(
                j,
                problems=sum(c.values()),
                done=sum(n for s, n in c.items() if s in terminal and s != ProblemStatus.CANCELLED),
                cancelled=c[ProblemStatus.CANCELLED],
                right=right[j.id],
                judged=judged[j.id],
                model_calls=calls,
                requests=requests,
                sequences=sequences,
                tokens=prompt + completion,
            )
        )
    return out


_TALLIED = tuple(TALLIES)
"""Problem columns (model_calls' for the sums but `calls`, a count), in the order summed."""
_TALLIED_STATES = (ProblemStatus.ANSWERED.value, ProblemStatus.FAILED.value)
"""The states whose problems carry their tallies (`db.jobs.TALLIES`, written as they end)."""


@dataclass(frozen=True)
class ProblemRow:
    result: ProblemResult
    line: int
    outcome: str

    def __getattr__(self, name: str) -> object:  # the result's fields, for sorting and templates
        return getattr(self.result, name)


@dataclass(frozen=True)
class ProblemPage:
    rows: list[ProblemRow]
    total: int
    """Problems that pass the filter (all pages)."""
    page: int
    pages: int
    outcomes: Counter[str]
    """Every problem of the job by outcome (unfiltered)."""
    models: tuple[str, ...]
    """The models that gave a selected answer, for the filter."""
    rounds: tuple[int, ...]


def job_view(*, session: Session, job_id: int, **listing: Any) -> tuple[JobOverview, ProblemPage] | None:
    """A job's overview and one page of its problems (`problem_page`'s filters); None when there
    is no such job."""
    found = job_overviews(session=session, job_ids=[job_id])
    if not found:
        return None
    return found[0], problem_page(session=session, job_id=job_id, **listing)


def _outcome() -> Any:
    """`outcome_of` in SQL, over the stored judgement."""
    return case(
        (Problem.status == ProblemStatus.FAILED.value, "failed"),
        (Problem.status != ProblemStatus.ANSWERED.value, "open"),
        (Problem.final_answer.is_(None), "unanswered"),
        (Problem.reference_answer.is_(None), "no reference"),
        (Problem.correct.is_(True), "correct"),
        else_="wrong",
    )


def problem_page(
    *,
    session: Session,
    job_id: int,
    outcome: str | None = None,
    model: str | None = None,
    rounds: int | None = None,
    sort: str = "line",
    descending: bool = False,
    page: int = 1,
    per_page: int = 50,
) -> ProblemPage:
    """One page of a job's problems, filtered and sorted in SQL: only the page's rows are read
    whole. `outcome` is one of OUTCOMES, `model` the roster name whose output was selected,
    `rounds` the rounds used; `sort` a key of SORTS (ties in input order)."""
    outcome_expr = _outcome().label("outcome")
    of_job = Problem.job_id == job_id
    # The outcome counts, the rounds seen and, unless the filter is by model, the filtered total,
    # from the counts the database keeps (migration 0009): no pass over the job's problems.
    groups = [
        (_group_outcome(g), None if g.rounds < 0 else g.rounds, g.n)
        for g in job_counts(session=session, job_ids=[job_id]).get(job_id, [])
    ]
    outcomes: Counter[str] = Counter()
    for found_outcome, _, n in groups:
        outcomes[found_outcome] += n
    rounds_seen = tuple(sorted({r for _, r, _ in groups if r is not None}))
    chosen_by = (
        select(Output.model)
        .join(Selection, Selection.output_id == Output.id)
        .where(Selection.problem_id == Problem.id)
        .scalar_subquery()
    )
    query = select(Problem.id, Problem.item_id, Problem.line, outcome_expr).where(of_job)
    if outcome is not None:
        query = query.where(_outcome() == outcome)
    if model is not None:
        query = query.where(chosen_by == model)
    if rounds is not None:
        query = query.where(Problem.rounds_used == rounds)
    if model is None:
        total = sum(
            n for o, r, n in groups if (outcome is None or o == outcome) and (rounds is None or r == rounds)
        )
    else:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    key = SORTS.get(sort, SORTS["line"])(session.get_bind().dialect.name)
    ordered = query.order_by(key.desc() if descending else key, Problem.line)
    picked = session.execute(ordered.offset((page - 1) * per_page).limit(per_page)).all()
    results = {
        r.id: r
        for r in iter_problem_results(session=session, job_id=job_id, problem_ids=[row.id for row in picked])
    }
    rows = [ProblemRow(results[r.item_id], r.line, r.outcome) for r in picked]
    job = session.get(Job, job_id)
    return ProblemPage(
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        outcomes=outcomes,
        models=tuple(sorted(roster.names(job.models))) if job is not None else (),
        rounds=rounds_seen,
    )


@dataclass(frozen=True)
class Comparison:
    """Two jobs on the problems (by item id, with a reference) they share: `rstar report`'s paired
    comparison, and the problems only one of them got right."""

    paired: PairedComparison | None
    """None when they share no problem with a reference."""
    only_first: list[tuple[ProblemResult, ProblemResult]]
    """(first job's result, second job's) where only the first is right."""
    only_second: list[tuple[ProblemResult, ProblemResult]]


def compare_jobs(*, session: Session, first: int, second: int) -> Comparison:
    a = {r.id: r for r in problem_results(session=session, job_id=first) if r.reference_answer is not None}
    b = {r.id: r for r in problem_results(session=session, job_id=second) if r.reference_answer is not None}
    right_a = {i: bool(r.correct) for i, r in a.items()}
    right_b = {i: bool(r.correct) for i, r in b.items()}
    shared = [i for i in a if i in b]
    return Comparison(
        paired=paired_counts(str(first), str(second), right_a, right_b),
        only_first=[(a[i], b[i]) for i in shared if right_a[i] and not right_b[i]],
        only_second=[(a[i], b[i]) for i in shared if right_b[i] and not right_a[i]],
    )


def comparable_jobs(*, session: Session, job_id: int) -> list[tuple[int, str, str, int]]:
    """The other jobs that share problems (item ids) with this one: (id, name, strategy, shared)."""
    if session.scalar(select(Job.id).where(Job.id != job_id).limit(1)) is None:
        return []  # alone: do not read a large job's item ids for nothing
    mine = select(Problem.item_id).where(Problem.job_id == job_id)
    rows = session.execute(
        select(Job.id, Job.name, Job.strategy, func.count())
        .join(Problem, Problem.job_id == Job.id)
        .where(Job.id != job_id, Problem.item_id.in_(mine))
        .group_by(Job.id, Job.name, Job.strategy)
        .order_by(Job.id.desc())
    ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]
