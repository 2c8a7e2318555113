"""What the viewer (`rstar ui`) reads: every job at a glance, a job's problems filtered, sorted and
paged, and two jobs compared on the problems they share.

Correctness is `judge` on the stored answers, as in `rstar results` and `rstar report`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.jobs import ProblemResult, problem_results
from db.models import TERMINAL_PROBLEM_STATES, Job, ModelCall, Problem, ProblemStatus
from rstar import roster
from rstar.reports import PairedComparison, judge, paired_counts, wilson_interval

OUTCOMES = ("correct", "wrong", "unanswered", "failed", "no reference", "open")
"""A problem's outcome, as the filter names it: right or wrong against its reference; answered
with no parsable answer; failed for good; answered with no reference to judge by; not done yet
(pending, running or cancelled)."""

SORTS = {
    "line": lambda r: r.line,
    "calls": lambda r: r.model_calls,
    "sequences": lambda r: r.sequences,
    "tokens": lambda r: r.prompt_tokens + r.completion_tokens,
    "rounds": lambda r: r.rounds_used if r.rounds_used is not None else -1,
    "time": lambda r: r.wall_time_s if r.wall_time_s is not None else -1.0,
}


def outcome_of(r: ProblemResult | Problem) -> str:
    if r.status == ProblemStatus.FAILED:
        return "failed"
    if r.status != ProblemStatus.ANSWERED:
        return "open"
    if r.final_answer is None:
        return "unanswered"
    if r.reference_answer is None:
        return "no reference"
    return "correct" if judge(r.status, r.final_answer, r.reference_answer) else "wrong"


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
    """Every job (or those named), newest first, with its progress, accuracy and cost: three
    grouped queries whatever the number of jobs."""
    jobs = select(Job).order_by(Job.id.desc())
    if job_ids is not None:
        jobs = jobs.where(Job.id.in_(job_ids))
    found = list(session.scalars(jobs))
    ids = [j.id for j in found]
    counts: dict[int, Counter[str]] = {}
    for job_id, status, n in session.execute(
        select(Problem.job_id, Problem.status, func.count())
        .where(Problem.job_id.in_(ids))
        .group_by(Problem.job_id, Problem.status)
    ):
        counts.setdefault(job_id, Counter())[status] = n
    right: Counter[int] = Counter()
    judged: Counter[int] = Counter()
    terminal = {s.value for s in TERMINAL_PROBLEM_STATES}
    for job_id, status, answer, ref in session.execute(
        select(Problem.job_id, Problem.status, Problem.final_answer, Problem.reference_answer).where(
            Problem.job_id.in_(ids),
            Problem.reference_answer.is_not(None),
            Problem.status.in_(terminal),
        )
    ):
        judged[job_id] += 1
        right[job_id] += judge(status, answer, ref)
    cost = {
        job_id: (n, rq or 0, sq or 0, (pt or 0) + (ct or 0))
        for job_id, n, rq, sq, pt, ct in session.execute(
            select(
                Problem.job_id,
                func.count(),
                func.sum(ModelCall.requests),
                func.sum(ModelCall.sequences),
                func.sum(ModelCall.prompt_tokens),
                func.sum(ModelCall.completion_tokens),
            )
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id.in_(ids))
            .group_by(Problem.job_id)
        )
    }
    out = []
    for j in found:
        c = counts.get(j.id, Counter())
        calls, requests, sequences, tokens = cost.get(j.id, (0, 0, 0, 0))
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
                tokens=tokens,
            )
        )
    return out


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
    """A job's overview and one page of its problems (`problem_page`'s filters), from one read of
    its results; None when there is no such job."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    results = problem_results(session=session, job_id=job_id)
    terminal = {s.value for s in TERMINAL_PROBLEM_STATES}
    judged = [r for r in results if r.reference_answer is not None and r.status in terminal]
    overview = JobOverview.of(
        job,
        problems=len(results),
        done=sum(r.status in terminal and r.status != ProblemStatus.CANCELLED for r in results),
        cancelled=sum(r.status == ProblemStatus.CANCELLED for r in results),
        right=sum(bool(r.correct) for r in judged),
        judged=len(judged),
        model_calls=sum(r.model_calls for r in results),
        requests=sum(r.requests for r in results),
        sequences=sum(r.sequences for r in results),
        tokens=sum(r.prompt_tokens + r.completion_tokens for r in results),
    )
    return overview, problem_page(session=session, job_id=job_id, results=results, **listing)


def problem_page(
    *,
    session: Session,
    job_id: int,
    results: list[ProblemResult],
    outcome: str | None = None,
    model: str | None = None,
    rounds: int | None = None,
    sort: str = "line",
    descending: bool = False,
    page: int = 1,
    per_page: int = 50,
) -> ProblemPage:
    """One page of a job's problems, from their `results`. `outcome` is one of OUTCOMES, `model`
    the roster name whose output was selected, `rounds` the rounds used; `sort` a key of SORTS."""
    lines = dict(session.execute(select(Problem.item_id, Problem.line).where(Problem.job_id == job_id)).all())
    rows = [ProblemRow(r, lines[r.id], outcome_of(r)) for r in results]
    outcomes = Counter(r.outcome for r in rows)
    models = tuple(sorted({r.result.model for r in rows if r.result.model}))
    rounds_seen = tuple(sorted({r.result.rounds_used for r in rows if r.result.rounds_used is not None}))
    kept = [
        r
        for r in rows
        if (outcome is None or r.outcome == outcome)
        and (model is None or r.result.model == model)
        and (rounds is None or r.result.rounds_used == rounds)
    ]
    kept.sort(key=SORTS.get(sort, SORTS["line"]), reverse=descending)
    pages = max(1, -(-len(kept) // per_page))
    page = min(max(1, page), pages)
    return ProblemPage(
        rows=kept[(page - 1) * per_page : page * per_page],
        total=len(kept),
        page=page,
        pages=pages,
        outcomes=outcomes,
        models=models,
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
    mine = select(Problem.item_id).where(Problem.job_id == job_id)
    rows = session.execute(
        select(Job.id, Job.name, Job.strategy, func.count())
        .join(Problem, Problem.job_id == Job.id)
        .where(Job.id != job_id, Problem.item_id.in_(mine))
        .group_by(Job.id, Job.name, Job.strategy)
        .order_by(Job.id.desc())
    ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]
