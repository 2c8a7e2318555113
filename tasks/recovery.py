"""Recovery: no step waits forever for a message that will never come.

The database says what must happen; a message only says "look at step N now". Messages can be lost:
a broker restarted without persistence, a worker killed while it held them, a crash between the
commit of new steps and their enqueue. Every worker process runs a sweep every
`recovery_interval` seconds (one process at a time, by a Redis lock) that:

- re-sends every queued step of the active jobs when the broker lost its data: a marker key set
  at submit time (`rstar:broker-epoch`) is gone, so every message it held is gone too;
- takes back running steps whose lease ran out (their worker died; live workers renew their
  leases, tasks/leases.py) and re-sends them, once this process has reached the database for a
  whole lease period (after an outage every holder gets the chance to renew first);
- moves on open problems with no queued or running step (a crash came between a step's output
  and the dispatch of the next steps), starts waiting problems where a job has fewer than
  `job_window` started (a crash came between a problem's end and the start of the next one), and
  closes jobs whose last problem finished in a crash;
- re-sends queued steps that have waited `requeue_grace` seconds while their queue in the broker
  is empty: their message is not coming (a submit killed while it sent its messages, a worker
  killed holding messages it had reserved, which Redis gives back only after the visibility
  timeout). A step still waiting in a queue that has messages is left alone: a long queue is no
  lost message. Each is sent once per grace at most.

`rstar resume JOB` runs the same recovery for one job, and re-sends all its queued steps.
A duplicate message costs one claim query: the step is already running or done, and is skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import redis
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import SQLAlchemyError

from db import recovery as q
from db.jobs import maybe_finish_job
from db.models import utcnow
from db.session import session_scope
from tasks.dispatch import Dispatch, advance, dispatch_for, enqueue, feed
from workers.settings import Settings, get_settings

logger = logging.getLogger("rstar.recovery")

EPOCH_KEY = "rstar:broker-epoch"
LOCK_KEY = "rstar:recovery-lock"


def _redis(broker_url: str) -> redis.Redis | None:
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)


def mark_broker_epoch(settings: Settings) -> None:
    """Leave the marker whose disappearance tells the sweep that the broker lost its messages."""
    client = _redis(settings.broker_url)
    if client is None:
        return
    try:
        client.set(EPOCH_KEY, str(time.time()), nx=True)
    finally:
        client.close()


# kombu's Redis transport keeps a queue's messages in a list per priority: the queue's name for
# the default priority, the name with a separator and the priority for the others.
_PRIORITY_SEP = "\x06\x16"
_PRIORITIES = (0, 3, 6, 9)


def queue_length(client: redis.Redis, queue: str) -> int:
    names = [queue if p == 0 else f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITIES]
    return sum(int(client.llen(n)) for n in names)


def orphans(client: redis.Redis, settings: Settings) -> list[Dispatch]:
    """Queued steps that waited `requeue_grace` with their queue empty, marked as sent again."""
    cutoff = utcnow() - timedelta(seconds=settings.requeue_grace)
    with session_scope(settings.database_url) as session:
        waiting = [
            dispatch_for(step, job) for step, job in q.queued_steps(session=session, queued_before=cutoff)
        ]
        empty = {queue for queue in {d.queue for d in waiting} if queue_length(client, queue) == 0}
        found = [d for d in waiting if d.queue in empty]
        q.touch_queued(session=session, step_ids=[d.step_id for d in found])
    return found


@dataclass(frozen=True)
class Recovered:
    resent: int = 0
    """Queued steps re-sent."""
    reclaimed: int = 0
    """Running steps taken back from dead workers and re-sent."""
    advanced: int = 0
    """Stalled problems moved on."""
    finished_jobs: int = 0
    started: int = 0
    """First steps of waiting problems, started where a job's window was short."""

    def __bool__(self) -> bool:
        return bool(self.resent or self.reclaimed or self.advanced or self.finished_jobs or self.started)


def recover(*, job_id: int | None = None, resend_queued: bool, expired_before: datetime | None) -> Recovered:
    """Re-send what has no message (all active jobs, or one). See the module docstring."""
    settings = get_settings()
    dispatches: dict[int, Dispatch] = {}
    with session_scope(settings.database_url) as session:
        reclaimed = (
            q.reclaim_expired(session=session, expired_before=expired_before, job_id=job_id)
            if expired_before is not None
            else []
        )
        for step, job in reclaimed:
            dispatches[step.id] = dispatch_for(step, job)
        resent = 0
        if resend_queued:
            for step, job in q.queued_steps(session=session, job_id=job_id):
                if step.id not in dispatches:
                    dispatches[step.id] = dispatch_for(step, job)
                    resent += 1
        stalled = q.stalled_problems(session=session, job_id=job_id)
    for problem_id in stalled:
        for d in advance(problem_id):
            dispatches[d.step_id] = d
    started = 0
    for active in _active_jobs(settings, job_id):
        with session_scope(settings.database_url) as session:
            for d in feed(session, active, settings.job_window):
                dispatches[d.step_id] = d
                started += 1
    finished = 0
    with session_scope(settings.database_url) as session:
        for unfinished in q.unfinished_jobs(session=session):
            if job_id is None or unfinished == job_id:
                finished += int(maybe_finish_job(session=session, job_id=unfinished))
    enqueue(dispatches.values())
    return Recovered(resent, len(reclaimed), len(stalled), finished, started)


def _active_jobs(settings: Settings, job_id: int | None) -> list[int]:
    with session_scope(settings.database_url) as session:
        return q.active_jobs(session=session, job_id=job_id)


class Sweeper:
    """The periodic recovery sweep of one worker process."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db_ok_since: float | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rstar-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(get_settings().recovery_interval):
            try:
                self.sweep()
            except Exception as exc:  # broker or database down: try again next time
                logger.warning("recovery sweep failed: %s: %s", type(exc).__name__, _short(exc))

    def sweep(self) -> Recovered | None:
        """One sweep; None when another process holds this interval's lock."""
        settings = get_settings()
        client = _redis(settings.broker_url)
        try:
            lost = False
            if client is not None:
                hold_ms = max(100, int(settings.recovery_interval * 900))
                if not client.set(LOCK_KEY, str(os.getpid()), nx=True, px=hold_ms):
                    return None
                lost = not client.exists(EPOCH_KEY)
            started = time.monotonic()
            healthy = self._db_ok_since is not None and started - self._db_ok_since >= settings.lease_seconds
            expired_before = utcnow() - timedelta(seconds=settings.lease_seconds / 4) if healthy else None
            try:
                done = recover(resend_queued=lost, expired_before=expired_before)
            except SQLAlchemyError:
                self._db_ok_since = None
                raise
            if self._db_ok_since is None:
                self._db_ok_since = started
            if client is not None and lost:
                client.set(EPOCH_KEY, str(time.time()), nx=True)
            elif client is not None:
                stranded = orphans(client, settings)
                enqueue(stranded)
                done = replace(done, resent=done.resent + len(stranded))
        finally:
            if client is not None:
                client.close()
        if lost:
            logger.warning("the broker lost its messages (restarted without persistence?)")
        if done:
            logger.warning(
                "recovery: re-sent %d queued step(s), took back %d step(s) from dead workers, "
                "moved on %d stalled problem(s), started %d step(s) of waiting problems, "
                "closed %d job(s)",
                done.resent,
                done.reclaimed,
                done.advanced,
                done.started,
                done.finished_jobs,
            )
        return done


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


sweeper = Sweeper()


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    sweeper.stop()


def resume_job(job_id: int) -> tuple[int, Recovered]:
    """Continue a cancelled or stuck job (`rstar resume`, the viewer's button): reopen it and its
    cancelled problems, then re-send its queued steps and those of dead workers. Returns the
    problems reopened and what was re-sent."""
    with session_scope(get_settings().database_url) as session:
        reopened = q.reopen_job(session=session, job_id=job_id)
    return reopened, recover(job_id=job_id, resend_queued=True, expired_before=utcnow())
