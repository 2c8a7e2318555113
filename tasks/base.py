"""What every stage task shares: claim the step, call the model once, record, write, dispatch.

A stage module only says how to turn the model's reply into its output row. The retry policy is
here, keyed on `workers.errors.RetryableError`: backoff doubling from `retry_backoff`, capped at
`retry_backoff_max`, with full jitter, at most `max_retries` retries counted from the attempts
recorded in the database (so a redelivered message does not reset the budget).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from celery import Task
from celery.utils.log import get_task_logger
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from db import queries
from db.models import CallOutcome
from db.session import session_scope
from rstar.strategies import get_strategy
from rstar.strategies.base import StepSpec
from rstar.types import Role, StepKind
from tasks.dispatch import TASK_FOR_KIND, advance_and_enqueue
from tasks.leases import keeper
from tasks.reuse import request_hash, reuse_recorded
from workers.client import ModelClient, ModelReply, truncate
from workers.errors import ModelServerError, RetryableError
from workers.settings import Settings, get_settings

logger = get_task_logger(__name__)

# The kind of step each stage task works on; a message naming another kind of step is refused.
KIND_OF_TASK = {task: kind for kind, task in TASK_FOR_KIND.items()}

# (session, claim, reply text, model call id) -> None: writes the step's output row.
OutputWriter = Callable[[Session, queries.Claim, str, int], None]

_clients: dict[str, ModelClient] = {}
_clients_lock = threading.Lock()
_run = threading.local()  # .claimed: this thread's task run holds a step's lease


def client_for(endpoint: str, settings: Settings) -> ModelClient:
    with _clients_lock:
        client = _clients.get(endpoint)
        if client is None:
            token = settings.api_token.get_secret_value() if settings.api_token else None
            client = ModelClient(
                endpoint,
                kind=settings.server_kind,
                timeout=settings.request_timeout,
                token=token,
                max_in_flight=settings.max_in_flight,
                share=settings.workers_per_endpoint,
            )
            _clients[endpoint] = client
        return client


def backoff_delay(retries: int, settings: Settings) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation)."""
    cap = min(settings.retry_backoff_max, settings.retry_backoff * (2**retries))
    return random.uniform(cap / 2, cap)


class StepTask(Task):
    """Base for stage tasks: at-least-once delivery, database outages retried without limit."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = None  # model-call retries are bounded by attempts recorded in the database

    def retry_on_database_error(self, exc: Exception) -> None:
        settings = get_settings()
        delay = backoff_delay(min(self.request.retries, 6), settings)
        if getattr(_run, "claimed", False):
            # The step stays leased to this task id, unrenewed: the retry takes it back once the
            # lease is half gone (queries.claim_step), so do not come back earlier than that.
            delay = max(delay, settings.lease_seconds / 2)
        logger.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
        raise self.retry(exc=exc, countdown=delay)


def run_model_step(task: StepTask, step_id: int, write_output: OutputWriter) -> str:
    _run.claimed = False
    try:
        return _run_model_step(task, step_id, write_output)
    except (OperationalError, DBAPIError) as exc:
        if (
            isinstance(exc, DBAPIError)
            and not exc.connection_invalidated
            and not isinstance(exc, OperationalError)
        ):
            raise
        task.retry_on_database_error(exc)
        raise  # unreachable: retry raises


def _run_model_step(task: StepTask, step_id: int, write_output: OutputWriter) -> str:
    settings = get_settings()
    url = settings.database_url
    lease = timedelta(seconds=settings.lease_seconds)  # renewed by tasks.leases while we work
    with session_scope(url) as session:
        claim = queries.claim_step(
            session=session,
            step_id=step_id,
            task_id=task.request.id or "",
            lease=lease,
            kind=KIND_OF_TASK.get(task.name),
        )
    if claim is None:
        return "missing"
    if isinstance(claim, int):
        advance_and_enqueue(claim)  # a crash may have come after the output, before the dispatch
        return "skipped"
    _run.claimed = True
    assert claim.endpoint is not None and claim.role is not None
    strategy = get_strategy(claim.strategy, claim.params, max_rounds_limit=settings.max_rounds_limit)
    role: Role = "A" if claim.role == "A" else "B"
    spec = StepSpec(claim.key, StepKind(claim.kind), role, claim.round)
    claim = replace(claim, links=strategy.links(spec, claim.state))
    if claim.recorded is not None:
        call_id, text = claim.recorded.id, claim.recorded.response_text or ""
    else:
        client = client_for(claim.endpoint, settings)
        attempt = claim.attempts + 1
        with keeper.hold(claim.step_id, task.request.id or ""):
            try:
                request = strategy.build_request(spec, claim.state)
                reused = reuse_recorded(claim, attempt, request, client, settings)
                reply = None if reused else client.complete(request)
            except ModelServerError as exc:
                try:
                    return _handle_call_error(task, claim, attempt, exc, settings)
                except IntegrityError:  # another run of this step recorded this attempt first
                    logger.info("step %s: attempt %d already recorded by another run", claim.key, attempt)
                    return "skipped"
            if reused:
                call_id, text = reused
            else:
                assert reply is not None
                try:
                    call_id = _record_reply(claim, attempt, reply, client, settings)
                except IntegrityError:  # another run of this step recorded this attempt first
                    logger.info("step %s: attempt %d already recorded by another run", claim.key, attempt)
                    return "skipped"
                text = reply.text
    try:
        with session_scope(url) as session:
            write_output(session, claim, text, call_id)
    except IntegrityError:
        with session_scope(url) as session:
            if not queries.step_is_done(session=session, step_id=claim.step_id):
                raise
        logger.info("step %s: output already written by another run", claim.key)
    advance_and_enqueue(claim.problem_id)
    return "done"


def _record_reply(
    claim: queries.Claim, attempt: int, reply: ModelReply, client: ModelClient, settings: Settings
) -> int:
    """Record a successful reply. It is paid for: while the database is unreachable, keep trying
    (up to `db_outage_grace` seconds) rather than lose it and call again."""
    deadline = time.monotonic() + settings.db_outage_grace
    pause = 0.25
    while True:
        try:
            return _record_reply_once(claim, attempt, reply, client, settings)
        except (OperationalError, DBAPIError) as exc:
            lost_connection = isinstance(exc, OperationalError) or exc.connection_invalidated
            if not lost_connection or time.monotonic() + pause > deadline:
                raise
            logger.warning(
                "database unavailable while recording step %s (%s); retrying in %.1f s",
                claim.key,
                type(exc).__name__,
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _record_reply_once(
    claim: queries.Claim, attempt: int, reply: ModelReply, client: ModelClient, settings: Settings
) -> int:
    with session_scope(settings.database_url) as session:
        call = queries.record_call(
            session=session,
            step_id=claim.step_id,
            problem_id=claim.problem_id,
            attempt=attempt,
            endpoint=client.base_url,
            server_kind=reply.server_kind,
            model=reply.model,
            request=reply.request,
            response=reply.response,
            response_text=truncate(reply.text),
            finish_reason=reply.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            latency_ms=reply.latency_ms,
            outcome=CallOutcome.OK,
            request_hash=request_hash(client.base_url, reply.request),
        )
        return call.id


def _handle_call_error(
    task: StepTask, claim: queries.Claim, attempt: int, exc: ModelServerError, settings: Settings
) -> str:
    retryable = isinstance(exc, RetryableError)
    with session_scope(settings.database_url) as session:
        queries.record_call(
            session=session,
            step_id=claim.step_id,
            problem_id=claim.problem_id,
            attempt=attempt,
            endpoint=claim.endpoint or "",
            server_kind=None,
            model=None,
            request=exc.request or {},
            response=None,
            response_text=exc.body,
            finish_reason=None,
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=exc.latency_ms,
            outcome=CallOutcome.RETRYABLE_ERROR if retryable else CallOutcome.PERMANENT_ERROR,
            http_status=exc.http_status,
            error=f"{type(exc).__name__}: {exc.message}",
            request_hash=request_hash(claim.endpoint or "", exc.request) if exc.request else None,
        )
        # The budget counts attempts since `rstar retry` last reset it (retry_base).
        tried = attempt - claim.retry_base
        if retryable and tried <= settings.max_retries:
            queries.release_step(session=session, step_id=claim.step_id)
        else:
            why = f"{type(exc).__name__} after {tried} attempt(s): {exc.message}"
            queries.fail_step(session=session, step_id=claim.step_id, error=why)
            retryable = False
    if retryable:
        delay = backoff_delay(tried - 1, settings)
        logger.info("step %s attempt %d failed (%s); retry in %.1f s", claim.key, attempt, exc.message, delay)
        raise task.retry(exc=exc, countdown=delay)
    logger.warning("step %s failed for good: %s", claim.key, exc.message)
    advance_and_enqueue(claim.problem_id)  # marks the problem failed; the rest of the job goes on
    return "failed"
