"""Turning a validated input file into a job: create everything in one transaction, then enqueue."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from celery import current_app

from db.jobs import QueuedStep, create_job, queued_steps, start_problems
from db.migrate import ensure_current, redact_url
from db.models import Job
from db.session import session_scope
from rstar.roster import ModelEntry, RosterError, build_roster
from rstar.strategies import fit_roster, get_strategy
from rstar.strategies.base import ProblemState
from rstar.types import ProblemInput
from tasks.dispatch import dispatch_for, enqueue
from workers.client import server_info, unreachable
from workers.errors import ModelServerError
from workers.redact import scrub, url_password, without_userinfo
from workers.settings import FALLBACK_SLOTS, Settings

WINDOW_PER_SLOT = 2
"""A job's window, per in-flight slot of its servers: each slot has a problem in its call and one
between calls (planning, recording, in the queue). Measured with one mutual job of 300 problems on
a server of 32 slots: a window of 32 kept it 98% full (docs/results/million.md)."""
MIN_WINDOW = 32


class BrokerUnavailableError(RuntimeError):
    """The message broker does not answer."""


class ResumeFromError(ValueError):
    """`--resume-from` names a job that does not exist."""


class SendError(RuntimeError):
    """The job is stored but not all its first messages went out: the recovery sweep sends them."""

    def __init__(self, job_id: int, reason: str) -> None:
        super().__init__(
            f"job {job_id} is stored, but sending its steps failed ({reason}); a worker's recovery"
            " sweep sends them once their queue is empty (RSTAR_REQUEUE_GRACE), or run"
            f" `rstar resume {job_id}`"
        )
        self.job_id = job_id


@dataclass(frozen=True)
class Submitted:
    job_id: int
    problems: int
    queues: tuple[str, ...]
    models: tuple[str, ...]
    """The roster names the job uses (a strategy that needs fewer takes the first ones)."""
    unused: tuple[str, ...] = ()
    """Names given that the strategy does not use."""
    window: int = 0
    why_window: str = ""
    """How the window was decided, for the line submit prints."""


def job_window(
    roster: Iterable[ModelEntry], settings: Settings, *, ask_servers: bool = True
) -> tuple[int, str]:
    """How many of a job's problems are started at once (tasks/dispatch.py, `feed`), and why:
    RSTAR_JOB_WINDOW when set; else `WINDOW_PER_SLOT` times the in-flight slots of the job's
    servers (each URL once: TGI's max_concurrent_requests, llama-server's slots; one that does not
    say counts RSTAR_MAX_IN_FLIGHT or FALLBACK_SLOTS), at least `MIN_WINDOW`. A window of the
    fleet's size keeps it full and lets the first problems finish first: all of a large job's
    problems started at once would all finish near its end."""
    if settings.job_window is not None:
        return settings.job_window, "RSTAR_JOB_WINDOW"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    urls = {without_userinfo(u): u for m in roster for u in m.urls}
    slots = 0
    for url in urls.values():
        limit = None
        if ask_servers:
            try:  # a configured kind (RSTAR_SERVER_KIND) asks nothing and says no limit
                limit = server_info(url, kind=settings.server_kind, token=token).max_concurrent_requests
            except ModelServerError:
                limit = None  # down now: counted as a server that does not say
        slots += limit or settings.max_in_flight or FALLBACK_SLOTS
    window = max(MIN_WINDOW, WINDOW_PER_SLOT * slots)
    return window, f"{WINDOW_PER_SLOT} x the {slots} in-flight slots of its servers; RSTAR_JOB_WINDOW to set"


def check_roster(models: list[ModelEntry] | tuple[ModelEntry, ...], settings: Settings) -> None:
    """Refuse a model no server of which answers HTTP (each URL asked once): a replica that is
    down takes no work until it answers (workers/replicas.py), but a model needs one that does.

    Raises:
        RosterError: naming the model, its URL (without credentials) and why.
    """
    token = settings.api_token.get_secret_value() if settings.api_token else None
    asked: dict[str, str | None] = {}
    for m in models:
        for url in m.urls:
            bare = without_userinfo(url)
            if bare not in asked:
                asked[bare] = unreachable(url, token=token)
        if all(asked[without_userinfo(u)] is not None for u in m.urls):
            why = scrub(asked[without_userinfo(m.url)] or "", *(url_password(u) for u in m.urls))
            more = f" (nor its {len(m.urls) - 1} other replica(s))" if m.more_urls else ""
            raise RosterError(f"model {m.name} at {without_userinfo(m.url)} does not answer{more}: {why}")


def check_broker(settings: Settings) -> None:
    from tasks.recovery import mark_broker_epoch

    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
        mark_broker_epoch(settings)
    except Exception as exc:
        # The URL may hold a password: never print it whole.
        raise BrokerUnavailableError(
            f"cannot reach the broker at {redact_url(settings.broker_url)}: "
            f"{scrub(str(exc), url_password(settings.broker_url))}. "
            "Start Redis, e.g. `redis-server --daemonize yes --port 6379`, or set RSTAR_BROKER_URL."
        ) from exc


def submit_job(
    *,
    settings: Settings,
    name: str,
    strategy_name: str,
    params: dict[str, Any],
    models: list[ModelEntry] | tuple[ModelEntry, ...],
    source: str | None,
    problems: Iterable[ProblemInput],
    problem_type: str = "number",
    resume_from: int | None = None,
    check_models: bool = True,
    on_stored: Callable[[int], None] | None = None,
) -> Submitted:
    """Validate the parameters and the roster, check the schema, broker and model servers, store
    the job (of type `problem_type`, `rstar.problem_types`: `problems` hold references read by
    it), enqueue the first steps of its first `job_window` problems. `on_stored(job_id)` is
    called once the job is stored, before its messages are sent: a submit interrupted then leaves
    a job whose steps the workers' recovery sweep sends (tasks/recovery.py), and the user has its
    id.
    `problems` is read once, inside the job's transaction: an exception it raises (a file that
    changed since it was checked) rolls everything back.

    Raises:
        ParamError: a strategy parameter is out of range, or the roster is too short for it.
        RosterError: a model is given twice, or (`check_models`) its server does not answer.
        SchemaOutOfDateError: the database needs `rstar db upgrade`.
        BrokerUnavailableError: nothing was written.
        ResumeFromError: `resume_from` is not a job.
    """
    strategy = get_strategy(
        strategy_name, params, kind=problem_type, max_rounds_limit=settings.max_rounds_limit
    )
    roster = build_roster(models)
    used = fit_roster(strategy, [m.name for m in roster])
    roster = tuple(m for m in roster if m.name in used)
    ensure_current(settings.database_url)
    if check_models:
        check_roster(roster, settings)
    check_broker(settings)
    first = strategy.plan(ProblemState.empty(used)).steps
    window, why_window = job_window(roster, settings, ask_servers=check_models)
    with session_scope(settings.database_url) as session:
        job, count = create_job(
            session=session,
            name=name,
            strategy=strategy_name,
            params=strategy.params,
            # Credentials in a URL are not stored: the workers hold them (tasks.base.client_for).
            models=[m.with_urls(without_userinfo).as_json() for m in roster],
            source=source,
            problems=problems,
            problem_type=strategy.kind.name,
        )
        job.job_window = window
        # The first window; the rest wait their turn (tasks/dispatch.py, `feed`): the broker never
        # holds a million problems' steps.
        start_problems(session=session, job_id=job.id, first_steps=first, window=window)
        if resume_from is not None:
            if session.get(Job, resume_from) is None:
                raise ResumeFromError(f"--resume-from {resume_from}: there is no job {resume_from}")
            job.resume_from_id = resume_from
        job_id, stored = job.id, SimpleNamespace(models=list(job.models))
    if on_stored is not None:
        on_stored(job_id)
    queues: set[str] = set()
    after = 0
    try:
        # Page by page from the database: a million problems' steps are never all in memory.
        while page := _queued(settings, job_id, after):
            dispatches = [dispatch_for(step, stored) for step in page]
            enqueue(dispatches)
            queues.update(d.queue for d in dispatches)
            after = page[-1].id
    except Exception as exc:  # the broker went away mid-way (kombu's errors, OSError, ...)
        raise SendError(
            job_id, scrub(f"{type(exc).__name__}: {exc}", url_password(settings.broker_url))
        ) from exc
    unused = tuple(m.name for m in models if m.name not in used)
    return Submitted(job_id, count, tuple(sorted(queues)), used, unused, window, why_window)


def _queued(settings: Settings, job_id: int, after: int) -> list[QueuedStep]:
    with session_scope(settings.database_url) as session:
        return queued_steps(session=session, job_id=job_id, after=after)
