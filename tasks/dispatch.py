"""From persisted state to the next Celery tasks: the only place that enqueues work.

`plan_next()` runs in the transaction that writes a step's output (tasks/base.py, which takes the
problem's lock, `lock_problem()`, before that write), or in one of its own (`advance()`), and the
problem row is locked before anything the plan reads, so when A's and B's steps finish together
the later one waits for the earlier one's commit, sees both outputs, and exactly one of them creates
each next step (the unique step key settles any remaining race). Messages are sent only after the
steps are committed (`settle()`); a crash in between leaves queued steps that the recovery sweep
or `rstar resume` re-sends.

A job does not start all its problems at once: `feed()` keeps its window of them (`jobs.job_window`,
set at submit) started and open, in input order, starting the next waiting one as one ends, so the
broker holds what the workers can start soon, not the whole job's steps, and answers stream out
from the first minutes.
Submit starts the first window; every ending problem tops it up; the recovery sweep tops up what a
crash between an ending and its top-up left short.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import current_app
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from db.claims import PROBLEM_AND_JOB, add_steps
from db.jobs import fail_problem, maybe_finish_job, start_problems
from db.models import OPEN_STEP_STATES, TERMINAL_PROBLEM_STATES, Job, JobStatus, Problem, Step, StepStatus
from db.outputs import save_selection
from db.session import session_scope
from db.state import STATE_STEPS, OutputCache, StepCounts, load_state, step_counts
from rstar import roster
from rstar.strategies import get_strategy
from rstar.strategies.base import SELECT_KEY, ProblemState, StepSpec
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint
from workers.settings import get_settings

MODEL_STEP_TASK = "rstar.step"  # tasks/step.py
SELECT_TASK = "rstar.select"  # tasks/select.py


@dataclass(frozen=True)
class Dispatch:
    step_id: int
    task: str
    queue: str


def dispatch_for(step: Any, job: Any) -> Dispatch:
    """A step (Step or row: id, model) and its job (Job or row: models): a model step goes to the
    queue of its model's endpoint, the selection to the control queue."""
    url = roster.url_of(job.models, step.model)
    if url is None:
        return Dispatch(step.id, SELECT_TASK, CONTROL_QUEUE)
    return Dispatch(step.id, MODEL_STEP_TASK, queue_for_endpoint(url))


# While the broker restarts, keep trying to send for about a minute (Celery's default gives up
# after ~1 s); a step whose message is lost anyway is re-sent by tasks/recovery.py.
SEND_RETRY_POLICY = {"max_retries": 30, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}


def enqueue(dispatches: Iterable[Dispatch]) -> int:
    todo = list(dispatches)
    if not todo:
        return 0
    # One producer (and broker connection) from the pool for all of a step's messages.
    with current_app.producer_or_acquire() as producer:
        for d in todo:
            current_app.send_task(
                d.task,
                args=[d.step_id],
                queue=d.queue,
                retry_policy=SEND_RETRY_POLICY,
                producer=producer,
            )
    return len(todo)


def advance(problem_id: int) -> list[Dispatch]:
    """Create the problem's next steps (or fail it) in a transaction of its own; what to enqueue."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        outcome = plan_next(session, problem_id, settings.max_rounds_limit)
    return settled(outcome)


def settled(outcome: list[Dispatch] | int) -> list[Dispatch]:
    """After `plan_next`'s transaction committed: when the problem ended, start the next waiting
    one(s) or close the job; what to send."""
    if isinstance(outcome, int):
        # After the commit, in a transaction of its own: two problems ending together must each
        # see the other's final state, or neither would close the job.
        settings = get_settings()
        with session_scope(settings.database_url) as session:
            started = feed(session, outcome, settings.job_window)
            if not started:
                maybe_finish_job(session=session, job_id=outcome)
        return started
    return outcome


def first_steps(job: Any) -> tuple[StepSpec, ...]:
    """What every problem of the job starts with (a Job, or a row with strategy, params, models
    and problem_type)."""
    strategy = get_strategy(
        job.strategy, job.params, kind=job.problem_type, max_rounds_limit=get_settings().max_rounds_limit
    )
    return strategy.plan(ProblemState.empty(roster.names(job.models))).steps


UNSTORED_WINDOW = 1024
"""The window of a job from before windows were stored (0012) when RSTAR_JOB_WINDOW is unset:
the default of the release that submitted it."""


def feed(session: Session, job_id: int, setting: int | None) -> list[Dispatch]:
    """Within the caller's transaction: start the job's next waiting problems up to its window
    started and open; the dispatches to send once it commits. `setting`: RSTAR_JOB_WINDOW, for a
    job whose window was not stored."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.ACTIVE:
        return []
    window = job.job_window or setting or UNSTORED_WINDOW
    made = start_problems(session=session, job_id=job_id, first_steps=first_steps(job), window=window)
    return [dispatch_for(step, job) for step in made]


_problems_t = Problem.__table__
_jobs_t = Job.__table__
# The problem row, locked (FOR NO KEY UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already
# serialises writers), with what the plan needs of its job: one prebuilt Core statement, since
# this runs after every model step.
_LOCK_PROBLEM = (
    select(*PROBLEM_AND_JOB)
    .join(_jobs_t, _jobs_t.c.id == _problems_t.c.job_id)
    .where(_problems_t.c.id == bindparam("problem_id"))
    .with_for_update(of=_problems_t, key_share=True)
)
_STEPS_WITH_ERROR = STATE_STEPS.add_columns(Step.__table__.c.error)
_STEP_COUNTS = select(*step_counts(bindparam("problem_id")))


def lock_problem(session: Session, problem_id: int) -> Row[Any] | None:
    """Within the caller's transaction: the problem's row, locked, with what its plan needs of its
    job (None: no such problem). Taken before anything that the plan must see is read, so that
    when two steps of the problem finish together the later one sees the earlier one's writes."""
    return session.connection().execute(_LOCK_PROBLEM, {"problem_id": problem_id}).first()


def plan_next(
    session: Session,
    problem_id: int,
    max_rounds_limit: int,
    *,
    cache: OutputCache | None = None,
    finished: str | None = None,
    locked: Row[Any] | None = None,
    counts: StepCounts | None = None,
) -> list[Dispatch] | int:
    """Within the caller's transaction: the dispatches to send once it commits, or the job id when
    this problem just ended (answered, or failed). `cache`: the outputs the step's claim read;
    `finished`: the kind of the step whose end this plan follows (the strategy may say that it
    cannot change the plan: `Strategy.plans_after`). `locked`: the problem's row, when the caller
    took its lock (`lock_problem`); `counts`: the problem's steps counted after that, the
    finished one not open (read here when not given)."""
    conn = session.connection()
    problem = locked if locked is not None else lock_problem(session, problem_id)
    if problem is None or problem.problem_status in TERMINAL_PROBLEM_STATES:
        return []
    job = problem  # the row carries the job's columns too
    if job.job_status == JobStatus.CANCELLED:
        return []
    strategy = get_strategy(
        job.strategy, job.params, kind=job.problem_type, max_rounds_limit=max_rounds_limit
    )
    if finished is not None and not strategy.plans_after(finished, True):
        if counts is None:  # the step's own end is written in this transaction: not open
            counts = StepCounts(*conn.execute(_STEP_COUNTS, {"problem_id": problem_id}).one())
        if not counts.failed and counts.open:
            return []
    steps = conn.execute(_STEPS_WITH_ERROR, {"problem_id": problem_id}).all()
    failed = [s for s in steps if s.status == StepStatus.FAILED]
    if failed:
        fail_problem(session=session, problem_id=problem_id, error=f"{failed[0].key}: {failed[0].error}")
        return job.job_id
    if finished is not None:
        others_open = any(s.model is not None and s.status in OPEN_STEP_STATES for s in steps)
        if not strategy.plans_after(finished, others_open):
            return []
    state = load_state(
        session=session,
        problem_id=problem_id,
        question=problem.question,
        models=job.models,
        steps=steps,
        cache=cache,
    )
    plan = strategy.plan(state)
    existing = {s.key: s for s in steps}
    specs = [(s.key, str(s.kind), s.model, s.round) for s in plan.steps if s.key not in existing]
    if plan.finished and not specs:
        # The selection needs no model: made here, in the transaction of the step that finished
        # the problem, rather than by a task of its own.
        chosen = strategy.select(state)
        select_step = existing.get(SELECT_KEY)
        save_selection(
            session=session,
            problem_id=problem_id,
            select_step_id=select_step.id if select_step is not None else None,
            round_=max((s.round for s in steps), default=1),
            output_id=chosen.output_id,
            answer=chosen.answer,
            reason=chosen.reason,
            rounds_used=chosen.rounds_used,
            reference_answer=problem.reference_answer,
            kind=strategy.kind,
        )
        return job.job_id
    made = add_steps(session=session, problem_id=problem_id, specs=specs)
    return [dispatch_for(step, job) for step in made]


def advance_and_enqueue(problem_id: int) -> None:
    enqueue(advance(problem_id))
