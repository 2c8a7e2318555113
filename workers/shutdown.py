"""Ctrl-C on a worker: it leaves within seconds, not after its model calls.

Celery's first Ctrl-C is a warm shutdown: the worker takes no new message but waits for every task,
and a task waits for its model call (up to RSTAR_REQUEST_TIMEOUT, 120 s by default, times its
retries). Its second is a cold shutdown, which the threads pool cannot do: two
`NotImplementedError(... TaskPool does not implement kill_job)` tracebacks, and a third Ctrl-C.

Here the first Ctrl-C starts the same warm shutdown (no new message is taken) and gives the calls in
flight RSTAR_SHUTDOWN_GRACE seconds (5 by default); whatever is still in flight then is left, and the
process exits. Nothing is lost or recorded twice: a step whose call was left keeps its lease until
it expires (RSTAR_LEASE_SECONDS), and the recovery sweep of any worker then sends it again, the
call asked again (tasks/recovery.py). A second Ctrl-C leaves at once. SIGTERM (docker stop,
systemd) keeps Celery's warm shutdown, which waits for the calls.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from celery.signals import worker_ready
from celery.worker import state

from workers.settings import get_settings

__all__ = ["install"]


def _say(text: str) -> None:
    # A signal handler may not take the logging locks; one write to the original stderr is safe.
    with contextlib.suppress(OSError):
        os.write(2, f"worker: {text}\n".encode())


def _in_flight() -> int:
    return len(state.active_requests)


def _leave(code: int) -> None:
    # os._exit: the pool's threads are blocked in HTTP reads that nothing can interrupt, and the
    # interpreter would join them at exit (the very wait Ctrl-C is meant to skip).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _second(signum: int, frame: FrameType | None) -> None:
    _say(f"left at once; {_in_flight()} call(s) in flight will be asked again after their lease")
    _leave(130)


def _first(signum: int, frame: FrameType | None) -> None:
    grace = get_settings().shutdown_grace
    lease = get_settings().lease_seconds
    signal.signal(signal.SIGINT, _second)
    _say(
        f"stopping: no new work; {_in_flight()} call(s) in flight get {grace:g} s to finish, the rest "
        f"are asked again once their lease expires ({lease:g} s). Ctrl-C again to leave at once."
    )
    state.should_stop = 0  # Celery's warm shutdown: the consumer stops taking messages

    def leave_after_grace() -> None:
        deadline = time.monotonic() + grace
        while _in_flight() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _in_flight()
        if left:
            _say(f"left with {left} call(s) in flight; they will be asked again after their lease")
            _leave(0)
        # Nothing in flight: Celery's own shutdown finishes (acks, closes the broker connection);
        # should that hang, leave anyway.
        time.sleep(max(grace, 5.0))
        _leave(0)

    threading.Thread(target=leave_after_grace, name="rstar-shutdown", daemon=True).start()


def install() -> None:
    """Take over SIGINT in this (the worker's main) thread; Celery installed its handler before."""
    signal.signal(signal.SIGINT, _first)


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        install()
