"""db/session.py: a process's threads take turns for database sessions (SQLite: one at a time;
otherwise `RSTAR_DB_SESSIONS`), and a session opened inside another does not wait for a turn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from db.session import autocommit_scope, limit_sessions, session_scope
from workers.settings import get_settings


@pytest.fixture
def session_limit() -> Iterator[Callable[[int | None], None]]:
    """`limit_sessions` for the test; the configured limit again afterwards."""
    yield limit_sessions
    limit_sessions(get_settings().db_sessions)


def _most_at_once(url: str, threads: int) -> int:
    """Run `threads` threads that each hold a session (with a statement run) for 50 ms; the most
    that were inside a session at the same time."""
    inside = most = 0
    count = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal inside, most
        try:
            with session_scope(url) as session:
                session.execute(text("SELECT 1"))
                with count:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.05)
                with count:
                    inside -= 1
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert not errors, errors
    assert not any(t.is_alive() for t in pool)
    return most


def test_sqlite_sessions_one_at_a_time(sqlite_url: str, session_limit: Callable[[int], None]) -> None:
    session_limit(2)
    assert _most_at_once(sqlite_url, 6) == 1


@pytest.mark.postgres
def test_postgres_sessions_at_most_the_limit(postgres_url: str, session_limit: Callable[[int], None]) -> None:
    session_limit(2)
    assert _most_at_once(postgres_url, 8) == 2


@pytest.mark.postgres
def test_a_session_inside_another_does_not_wait_for_a_turn(
    postgres_url: str, session_limit: Callable[[int], None]
) -> None:
    session_limit(1)
    started = time.monotonic()
    with session_scope(postgres_url) as outer, autocommit_scope(postgres_url) as inner:
        assert inner.execute(text("SELECT 1")).scalar() == 1
        assert outer.execute(text("SELECT 2")).scalar() == 2
    assert time.monotonic() - started < 5  # a wait for the turn would last 60 s
    # and the turn is free again afterwards
    assert _most_at_once(postgres_url, 3) == 1
