"""Turning a validated input file into a job: create everything in one transaction, then enqueue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import current_app

from db import queries
from db.migrate import ensure_current
from db.session import session_scope
from rstar.strategies import get_strategy
from rstar.strategies.base import ProblemState
from rstar.types import ProblemInput
from tasks.dispatch import dispatch_for, enqueue
from workers.settings import Settings


class BrokerUnavailableError(RuntimeError):
    """The message broker does not answer."""


@dataclass(frozen=True)
class Submitted:
    job_id: int
    problems: int
    queues: tuple[str, ...]


def check_broker(settings: Settings) -> None:
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        raise BrokerUnavailableError(
            f"cannot reach the broker at {settings.broker_url}: {exc}. Start Redis, e.g. "
            "`redis-server --daemonize yes --port 6379`, or set RSTAR_BROKER_URL."
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
) -> Submitted:
    """Validate the parameters, check the schema and broker, store the job, enqueue its first steps.

    Raises:
        ParamError: a strategy parameter is out of range.
        SchemaOutOfDateError: the database needs `rstar db upgrade`.
        BrokerUnavailableError: nothing was written.
    """
    strategy = get_strategy(strategy_name, params, max_rounds_limit=settings.max_rounds_limit)
    ensure_current(settings.database_url)
    check_broker(settings)
    first = strategy.plan(ProblemState(question="", steps={}, solutions={}, reviews={})).steps
    with session_scope(settings.database_url) as session:
        job, steps = queries.create_job(
            session=session,
            name=name,
            strategy=strategy_name,
            params=strategy.params,
            model_a_url=model_a_url,
            model_b_url=model_b_url,
            source=source,
            problems=problems,
            first_steps=first,
        )
        dispatches = [dispatch_for(step, job) for step in steps]
        job_id = job.id
    enqueue(dispatches)
    return Submitted(job_id, len(problems), tuple(sorted({d.queue for d in dispatches})))
