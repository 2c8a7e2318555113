"""The one model step, for every strategy and kind: claim the step, ask the strategy for the
request, call the model once, let the strategy parse the reply, save one output row, plan.

The retry policy is
here, keyed on `workers.errors.RetryableError`: backoff doubling from `retry_backoff`, capped at
`retry_backoff_max`, with full jitter, at most `max_retries` retries counted from the attempts
recorded in the database (so a redelivered message does not reset the budget).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import timedelta

from celery import Task
from celery.utils.log import get_task_logger
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from db.calls import NewCall, attempt_recorded, new_call, record_call
from db.claims import Claim, claim_step, fail_step, release_step, step_is_done
from db.models import CallOutcome
from db.outputs import Written, save_outputs
from db.session import autocommit_scope, session_scope
from db.state import remembered_outputs
from rstar.problem_types import get_problem_type
from rstar.records import recorded_texts
from rstar.strategies import get_strategy
from rstar.strategies.base import ProblemState, StepSpec, Strategy, parse_reply
from rstar.types import ModelRequest
from tasks.dispatch import Dispatch, advance_and_enqueue, enqueue, lock_problem, plan_next, settled
from tasks.leases import keeper
from tasks.reuse import request_hash, reuse_recorded
from workers import replicas
from workers.client import (
    ModelClient,
    ModelReply,
    endpoint_down,
    mark_not_answering,
    stored_text,
    truncate,
)
from workers.errors import ModelServerError, RetryableError, UnavailableError
from workers.redact import same_endpoint
from workers.settings import Settings, get_settings

logger = get_task_logger(__name__)

# (session, claim, the reply's sequences, the model call: its id, or a new one to record with the
# outputs) -> the step's outputs as written (its output rows).
OutputWriter = Callable[[Session, Claim, tuple[str, ...], int | NewCall], Written]

_clients: dict[str, ModelClient] = {}
_clients_lock = threading.Lock()
_run = threading.local()  # .claimed: this thread's task run holds a step's lease


def with_credentials(endpoint: str, settings: Settings) -> str:
    """The job's endpoint (stored without credentials) as this worker was given it, credentials
    and all: by `rstar worker --endpoint URL` (RSTAR_WORKER_ENDPOINTS) or RSTAR_MODEL_A/B_URL. They
    stay in this process's memory; the client sends them as an Authorization header."""
    given = settings.worker_endpoints.get_secret_value().split() if settings.worker_endpoints else []
    for url in (*given, settings.model_a_url, settings.model_b_url):
        if url and same_endpoint(url, endpoint):
            return url
    return endpoint


def client_for(endpoint: str, settings: Settings) -> ModelClient:
    with _clients_lock:
        client = _clients.get(endpoint)
        if client is None:
            token = settings.api_token.get_secret_value() if settings.api_token else None
            client = ModelClient(
                with_credentials(endpoint, settings),
                kind=settings.server_kind,
                timeout=settings.request_timeout,
                token=token,
                max_in_flight=settings.max_in_flight,
                share=settings.workers_per_endpoint,
            )
            _clients[endpoint] = client
        return client


def backoff_delay(retries: int, settings: Settings) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation): anywhere from
    0 to the cap, so the retries of steps that failed together (a 429 burst) spread over the whole
    window instead of bunching in its upper half. Callers that need a floor apply their own
    (`retry_on_database_error`: half a lease while the step is claimed)."""
    cap = min(settings.retry_backoff_max, settings.retry_backoff * (2**retries))
    return random.uniform(0.0, cap)


class StepTask(Task):
    """Base for step tasks: at-least-once delivery, database outages retried without limit."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = None  # model-call retries are bounded by attempts recorded in the database

    def retry_on_database_error(self, exc: Exception) -> None:
        settings = get_settings()
        delay = backoff_delay(min(self.request.retries, 6), settings)
        if getattr(_run, "claimed", False):
            # The step stays leased to this task id, unrenewed: the retry takes it back once the
            # lease is half gone (db.claims.claim_step), so do not come back earlier than that.
            delay = max(delay, settings.lease_seconds / 2)
        logger.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
        raise self.retry(exc=exc, countdown=delay)


def run_model_step(task: StepTask, step_id: int, kind: str | None = None) -> str:
    """Run one model step; `kind`, for a message of the old per-kind tasks, is the only kind of
    step it may touch."""
    _run.claimed = False
    try:
        return _run_model_step(task, step_id, kind)
    except DBAPIError as exc:
        if not lost_connection(exc):
            raise
        task.retry_on_database_error(exc)
        raise  # unreachable: retry raises


def lost_connection(exc: DBAPIError) -> bool:
    """The database went away (retry), as opposed to a statement it refused (a bug: raise).
    InterfaceError too: a connection the server closed under us ("connection already closed")."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def output_writer(strategy: Strategy, spec: StepSpec) -> OutputWriter:
    """How the step's reply becomes its output rows: the strategy parses its sequences, then one
    insert per output."""

    def write(session: Session, claim: Claim, texts: tuple[str, ...], call: int | NewCall) -> Written:
        return save_outputs(
            session=session,
            claim=claim,
            outputs=[
                (parsed, truncate(parsed.text if parsed.text is not None else texts[0]))
                for parsed in parse_reply(strategy, spec, texts)
            ],
            model_call=call,
            parent_id=claim.parent_id,
        )

    return write


def _run_model_step(task: StepTask, step_id: int, kind: str | None) -> str:
    settings = get_settings()
    url = settings.database_url
    if keeper.holds(step_id):
        # Redis gave back this task's message (its visibility timeout ran out, e.g. while the
        # database was down) and a thread of this process still works on the step, holding a
        # paid reply it has not recorded yet: leave the step to it rather than call again.
        logger.info("step %d: a run in this process holds it; this delivery leaves it to that run", step_id)
        return "skipped"
    lease = timedelta(seconds=settings.lease_seconds)  # renewed by tasks.leases while we work
    request: ModelRequest | None = None
    with autocommit_scope(url) as session:
        claim = claim_step(
            session=session, step_id=step_id, task_id=task.request.id or "", lease=lease, kind=kind
        )
        if isinstance(claim, Claim):
            # Inside the claim's transaction: the state reads the outputs it needs on first use.
            # The type as it reads this question's answers (a choice's option text is its letter),
            # so the outputs store canonical answers.
            strategy = get_strategy(
                claim.strategy,
                claim.params,
                kind=get_problem_type(claim.problem_type).for_question(claim.state.question),
                max_rounds_limit=settings.max_rounds_limit,
            )
            spec = StepSpec(claim.key, claim.kind, claim.model, claim.round)
            claim = replace(claim, parent_id=strategy.parent(spec, claim.state))
            if len(claim.replicas) > 1 and claim.parent_id is not None:
                served = served_by(claim.state, claim.parent_id)
                prefer = next((u for u in claim.replicas if served and same_endpoint(u, served)), None)
                claim = replace(claim, prefer=prefer)
            write_output = output_writer(strategy, spec)
            if claim.recorded is None:
                request = strategy.build_request(spec, claim.state)
            # Read outside this run's writes (it wrote none): the next step of the problem here
            # reads only what is new.
            remembered_outputs.remember(session, claim.problem_id, claim.state.question, claim.outputs)
    if claim is None:
        return "missing"
    if isinstance(claim, int):
        advance_and_enqueue(claim)  # a crash may have come after the output, before the dispatch
        return "skipped"
    _run.claimed = True
    # Held until the reply is recorded, not only while the call runs: a lease renewed while the
    # recording waits out a database outage is one no other run takes over when it is back.
    with keeper.hold(claim.step_id, task.request.id or ""):
        return _call_and_record(
            task, claim, attempt=claim.attempts + 1, request=request, write_output=write_output
        )


def _call_and_record(
    task: StepTask, claim: Claim, *, attempt: int, request: ModelRequest | None, write_output: OutputWriter
) -> str:
    settings = get_settings()
    assert claim.endpoint is not None and claim.model is not None
    reply: ModelReply | None = None
    endpoint = ""  # of a new reply: the client's URL
    if request is None:
        assert claim.recorded is not None
        call_id = claim.recorded.id
        texts = recorded_texts(claim.recorded.response_text, claim.recorded.sequences)
    else:
        with replica_for(claim, request, settings) as url:
            client = client_for(url, settings)
            endpoint = client.base_url
            try:
                reused = reuse_recorded(claim, attempt, request, client, settings)
                reply = None if reused else client.complete(request)
            except ModelServerError as exc:
                if isinstance(exc, UnavailableError) and exc.http_status == 503:
                    mark_not_answering(endpoint, exc)  # unhealthy: its replicas take its work
                try:
                    return _handle_call_error(task, claim, attempt, exc, settings, endpoint=endpoint)
                except IntegrityError:  # another run of this step recorded this attempt first
                    logger.info("step %s: attempt %d already recorded by another run", claim.key, attempt)
                    return "skipped"
        if reused:
            call_id, texts = reused
        else:
            assert reply is not None
            call_id, texts = None, reply.sequences
    try:
        outcome = _record_and_plan(
            claim,
            attempt,
            write_output,
            settings,
            reply=reply,
            endpoint=endpoint,
            call_id=call_id,
            texts=texts,
        )
    except IntegrityError:
        # Another run of this step got there first: it recorded this attempt (and will write the
        # output), or it already wrote the output (then make sure its dispatch happened).
        with session_scope(settings.database_url) as session:
            done = step_is_done(session=session, step_id=claim.step_id)
            recorded = reply is not None and attempt_recorded(
                session=session, step_id=claim.step_id, attempt=attempt
            )
        if not (done or recorded):
            raise
        logger.info("step %s: attempt %d already handled by another run", claim.key, attempt)
        if done:
            advance_and_enqueue(claim.problem_id)
        return "skipped"
    enqueue(settled(outcome))
    return "done"


def _record_and_plan(
    claim: Claim,
    attempt: int,
    write_output: OutputWriter,
    settings: Settings,
    *,
    reply: ModelReply | None,
    endpoint: str,
    call_id: int | None,
    texts: tuple[str, ...],
) -> list[Dispatch] | int:
    """One transaction for all that follows a model call: record the reply (a new `reply` from
    `endpoint`; else `call_id` is the call already recorded), write the step's output and plan the
    problem's next steps. A new reply is paid for: while the database is unreachable, keep trying
    (up to `db_outage_grace` seconds) rather than lose it and call again."""
    deadline = time.monotonic() + settings.db_outage_grace
    pause = 0.25
    while True:
        try:
            with session_scope(settings.database_url) as session:
                # First: the write can then count the problem's steps as the plan must see them.
                locked = lock_problem(session, claim.problem_id)
                call: int | NewCall
                if reply is not None:
                    call = _new_call(claim, attempt, endpoint, reply)  # recorded with the output
                else:
                    assert call_id is not None
                    call = call_id
                written = write_output(session, claim, texts, call)
                # A fork: this transaction's own outputs, given to the plan, may yet roll back.
                cache = claim.outputs.fork()
                cache.wrote(claim.step_id, written.outputs)
                planned = plan_next(
                    session,
                    claim.problem_id,
                    settings.max_rounds_limit,
                    cache=cache,
                    finished=claim.kind,
                    locked=locked,
                    counts=written.counts,
                )
            # Committed: what the plan read, this step's outputs included, may be kept.
            remembered_outputs.remember(session, claim.problem_id, claim.state.question, cache)
            return planned
        except DBAPIError as exc:
            if reply is None or not lost_connection(exc) or time.monotonic() + pause > deadline:
                raise
            logger.warning(
                "database unavailable while recording step %s (%s); retrying in %.1f s",
                claim.key,
                type(exc).__name__,
                pause,
            )
            time.sleep(pause)
            # Back within a quarter lease of the database's return: the recovery sweep takes an
            # expired step back only after the database has been up a whole lease, so the run
            # holding the reply records it before another run can take the step and pay again.
            pause = min(pause * 2, 5.0, settings.lease_seconds / 4)
        except Exception:
            # A bug in writing the output or planning must not lose a paid reply: keep the call.
            if reply is not None:
                with session_scope(settings.database_url) as session:
                    record_call(session=session, call=_new_call(claim, attempt, endpoint, reply))
            raise


def served_by(state: ProblemState, output_id: int) -> str | None:
    """The endpoint whose call produced the output (a copied call names the original's; None for
    an output no call produced, or one the state does not hold)."""
    return next((o.endpoint for o in state.outputs.values() if o.id == output_id), None)


def replica_for(claim: Claim, request: ModelRequest, settings: Settings) -> AbstractContextManager[str]:
    """The server this call goes to: the model's one endpoint, or the replica `workers.replicas`
    picks; counted busy with the call's sequences while the block runs."""
    if not claim.replicas:  # no model of that name in the roster: nothing to choose from
        return nullcontext(claim.endpoint or "")
    return replicas.chooser.replica(
        claim.replicas,
        prefer=claim.prefer,
        limit_of=lambda url: client_for(url, settings).in_flight.limit,
        weight=request.n,
        down_seconds=settings.replica_down_seconds,
    )


def other_replica_up(claim: Claim, endpoint: str) -> bool:
    """Whether a replica of the step's model other than `endpoint` is answering, as far as this
    process knows: then a step that failed there retries at once, on it."""
    return any(not same_endpoint(u, endpoint) and not endpoint_down(u) for u in claim.replicas)


def _new_call(claim: Claim, attempt: int, endpoint: str, reply: ModelReply) -> NewCall:
    return new_call(
        step_id=claim.step_id,
        problem_id=claim.problem_id,
        attempt=attempt,
        endpoint=endpoint,
        server_kind=reply.server_kind,
        model=reply.model,
        request=reply.request,
        response=reply.response,
        response_text=stored_text(reply),
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        latency_ms=reply.latency_ms,
        outcome=CallOutcome.OK,
        request_hash=request_hash(claim.endpoint or endpoint, reply.request),
        requests=reply.requests,
        sequences=len(reply.sequences),
    )


def _handle_call_error(
    task: StepTask, claim: Claim, attempt: int, exc: ModelServerError, settings: Settings, *, endpoint: str
) -> str:
    retryable = isinstance(exc, RetryableError)
    with session_scope(settings.database_url) as session:
        failed_call = new_call(
            step_id=claim.step_id,
            problem_id=claim.problem_id,
            attempt=attempt,
            endpoint=endpoint,
            server_kind=None,
            model=None,
            request=exc.request or {},
            response=exc.response,
            response_text=exc.body,
            finish_reason=None,
            prompt_tokens=exc.prompt_tokens,
            completion_tokens=exc.completion_tokens,
            latency_ms=exc.latency_ms,
            outcome=CallOutcome.RETRYABLE_ERROR if retryable else CallOutcome.PERMANENT_ERROR,
            http_status=exc.http_status,
            error=f"{type(exc).__name__}: {exc.message}",
            request_hash=request_hash(claim.endpoint or endpoint, exc.request) if exc.request else None,
            requests=exc.requests,
            sequences=exc.sequences,
        )
        record_call(session=session, call=failed_call)
        # The budget counts attempts since `rstar retry` last reset it (retry_base).
        tried = attempt - claim.retry_base
        if retryable and tried <= settings.max_retries:
            release_step(session=session, step_id=claim.step_id)
        else:
            why = f"{type(exc).__name__} after {tried} attempt(s): {exc.message}"
            fail_step(session=session, step_id=claim.step_id, error=why)
            retryable = False
    if retryable:
        # Where another replica answers, at once: the retry goes there (workers/replicas.py).
        down = endpoint_down(endpoint)
        delay = 0.0 if down and other_replica_up(claim, endpoint) else backoff_delay(tried - 1, settings)
        # An endpoint that is not answering was reported once (workers.client): not once per step.
        level = logging.DEBUG if down else logging.INFO
        logger.log(
            level, "step %s attempt %d failed (%s); retry in %.1f s", claim.key, attempt, exc.message, delay
        )
        raise task.retry(exc=exc, countdown=delay)
    logger.warning("step %s failed for good: %s", claim.key, exc.message)
    advance_and_enqueue(claim.problem_id)  # marks the problem failed; the rest of the job goes on
    return "failed"
