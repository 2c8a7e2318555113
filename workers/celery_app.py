"""The Celery app factory. `celery -A workers.celery_app worker` and `rstar worker` both load `app`.

Delivery is at least once: a task's message is acknowledged only after the task returns
(`acks_late`), and a worker killed mid-task gives its message back (`reject_on_worker_lost`). The
tasks are idempotent, so running one twice costs nothing. Redis redelivers an unacknowledged
message after `visibility_timeout`, so that must outlast the longest task plus its retry delay.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

from db.session import limit_sessions
from workers import redis_transport, shutdown  # noqa: F401  shutdown: Ctrl-C (on worker_ready)
from workers.redact import without_userinfo
from workers.settings import Settings, get_settings

CONTROL_QUEUE = "rstar.control"
TASK_MODULES = ["tasks.step", "tasks.select"]


def queue_for_endpoint(url: str) -> str:
    """One queue per model endpoint, so the workers consuming it bound that server's load.

    Named after the URL without its credentials: queue names are shown (CLI, Flower, Redis keys),
    and a submitter and a worker given the URL with and without them must agree on the queue."""
    bare = without_userinfo(url).strip().rstrip("/")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"^[a-z]+://", "", bare)).strip("-")
    return f"rstar.model.{slug.lower()}"


redis_transport.install()  # redis:// brokers: one redis-py client per channel (see that module)


def broker_transport_options(s: Settings) -> dict[str, int]:
    """The Redis transport's: how long a reserved message may go unacknowledged before it is given
    to another worker, and how often the workers look for such messages of dead ones."""
    visibility = s.visibility_timeout or 2 * s.task_time_limit + int(s.retry_backoff_max) + 60
    return {
        "visibility_timeout": visibility,
        # Look for messages of dead workers often enough for that timeout (kombu's default
        # scans every 100 s).
        "unacked_restore_interval": max(1, min(10, visibility // 4)),
        "unacked_restore_throttle": 1,
    }


def create_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    limit_sessions(s.db_sessions)
    # tasks.recovery starts the recovery sweep in each worker process (see that module).
    app = Celery("rstar", broker=s.broker_url, include=[*TASK_MODULES, "tasks.recovery"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=s.task_time_limit,
        task_ignore_result=True,
        task_default_queue=CONTROL_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # Reconnect to a restarted broker for as long as it takes.
        broker_connection_max_retries=None,
        broker_transport_options=broker_transport_options(s),
        # Task events cost four Redis publishes per task (sent, received, started, succeeded):
        # 1.4 of a worker's ~11 ms of CPU per model call in bench/throughput.py. Flower switches
        # the workers' events on while it runs (its --enable_events, on by default), so they are
        # off unless RSTAR_TASK_EVENTS=true.
        worker_send_task_events=s.task_events,
        task_send_sent_event=s.task_events,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


# Celery's per-task lines come from these two loggers; both check their level once, at start-up.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@after_setup_logger.connect
def _quiet_per_task_lines(**_: Any) -> None:
    if not get_settings().task_log:
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


app = create_app()
