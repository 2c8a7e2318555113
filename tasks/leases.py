"""Lease renewal: while a task works on a step, its worker process keeps the step's lease fresh.

A step being worked on is `running` with `lease_until` in the future. One daemon thread per worker
process renews the leases of every step held in that process, every `lease_seconds / 4`, in one
UPDATE. A worker that dies (SIGKILL, OOM, lost machine) stops renewing, so its leases run out
within `lease_seconds`; then a redelivered message, or the recovery sweep (tasks/recovery.py),
takes the step over. A live worker's step is never taken over while it renews, whatever the
broker redelivers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import tuple_, update

from db.models import Step, StepStatus, utcnow
from db.session import session_scope
from workers.settings import get_settings

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """The steps held in this process and the thread that renews their leases."""

    def __init__(self) -> None:
        self._held: dict[tuple[int, str], int] = {}  # (step id, task id) -> holders in this process
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, step_id: int, task_id: str) -> Iterator[None]:
        """Keep the lease of a claimed step fresh for the duration of the block."""
        key = (step_id, task_id)
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rstar-lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                left = self._held.get(key, 1) - 1
                if left:
                    self._held[key] = left
                else:
                    self._held.pop(key, None)

    def holds(self, step_id: int) -> bool:
        """Whether a run in this process works on the step (under any task id)."""
        with self._lock:
            return any(held == step_id for held, _ in self._held)

    def held(self) -> list[tuple[int, str]]:
        with self._lock:
            return list(self._held)

    def renew(self) -> int:
        """Push every held lease `lease_seconds` into the future; returns how many were renewed."""
        held = self.held()
        if not held:
            return 0
        settings = get_settings()
        until = utcnow() + timedelta(seconds=settings.lease_seconds)
        with session_scope(settings.database_url) as session:
            return session.execute(
                update(Step)
                .where(Step.status == StepStatus.RUNNING, tuple_(Step.id, Step.task_id).in_(held))
                .values(lease_until=until)
                .execution_options(synchronize_session=False)
            ).rowcount

    def _run(self) -> None:
        while True:
            time.sleep(max(0.05, get_settings().lease_seconds / 4))
            try:
                self.renew()
            except Exception as exc:  # the database may be down: keep trying, never die
                logger.warning("could not renew step leases: %s", type(exc).__name__)


keeper = LeaseKeeper()
