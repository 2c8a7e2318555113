"""Turning a validated input file into a job: create everything in one transaction, then enqueue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import current_app

from db.jobs import create_job
from db.migrate import ensure_current, redact_url
from db.models import Job
from db.session import session_scope
from rstar.strategies import get_strategy
from rstar.strategies.base import ProblemState
from rstar.types import ProblemInput
from tasks.dispatch import dispatch_for, enqueue
from workers.redact import scrub, url_password, without_userinfo
from workers.settings import Settings


class BrokerUnavailableError(RuntimeError):
    """The message broker does not answer."""


class ResumeFromError(ValueError):
    """`--resume-from` names a job that does not exist."""


@dataclass(frozen=True)
class Submitted:
    job_id: int
    problems: int
    queues: tuple[str, ...]


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
    model_a_url: str,
    model_b_url: str,
    source: str | None,
    problems: list[ProblemInput],
    resume_from: int | None = None,
) -> Submitted:
    """Validate the parameters, check the schema and broker, store the job, enqueue its first steps.

    Raises:
        ParamError: a strategy parameter is out of range.
        SchemaOutOfDateError: the database needs `rstar db upgrade`.
        BrokerUnavailableError: nothing was written.
        ResumeFromError: `resume_from` is not a job.
    """
    strategy = get_strategy(strategy_name, params, max_rounds_limit=settings.max_rounds_limit)
    ensure_current(settings.database_url)
    check_broker(settings)
    first = strategy.plan(ProblemState(question="", steps={}, solutions={}, reviews={})).steps
    with session_scope(settings.database_url) as session:
        job, steps = create_job(
            session=session,
            name=name,
            strategy=strategy_name,
            params=strategy.params,
            # Credentials in a URL are not stored: the workers hold them (tasks.base.client_for).
            model_a_url=without_userinfo(model_a_url),
            model_b_url=without_userinfo(model_b_url),
            source=source,
            problems=problems,
            first_steps=first,
        )
        if resume_from is not None:
            if session.get(Job, resume_from) is None:
                raise ResumeFromError(f"--resume-from {resume_from}: there is no job {resume_from}")
            job.resume_from_id = resume_from
        dispatches = [dispatch_for(step, job) for step in steps]
        job_id = job.id
    enqueue(dispatches)
    return Submitted(job_id, len(problems), tuple(sorted({d.queue for d in dispatches})))
