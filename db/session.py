"""One engine per database URL per process, and the session factory everything uses."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()

# JSON columns without the spaces json.dumps puts after separators: a tenth of a call's record.
# (ASCII escapes stay: a lone surrogate in a model's reply must not reach the driver raw.)
compact_json = functools.partial(json.dumps, separators=(",", ":"))

# Enough connections for every worker thread plus the dispatching done between calls.
DEFAULT_POOL_SIZE = 40
# Seconds a SQLite writer waits for the database lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 60
# Seconds a thread waits for its turn at the database (`_turn`) before it goes on anyway.
TURN_TIMEOUT = SQLITE_BUSY_TIMEOUT


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE below is what runs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers queue on the busy timeout instead of failing with "database is locked" when
        # a read transaction tries to upgrade to a write lock under WAL.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(
                    url,
                    connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
                    pool_size=pool_size,
                    json_serializer=compact_json,
                )
                _configure_sqlite(engine)
            else:
                # A bounded connect: while the database is unreachable, tasks fail fast and retry.
                # No pool_pre_ping: its round trip on every checkout cost ~1.4 ms of worker CPU per
                # model call (docs/throughput.md). A connection found dead in use invalidates the
                # pool and the work is retried like any outage (tasks/base.py lost_connection).
                connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
                engine = create_engine(
                    url,
                    pool_size=pool_size,
                    max_overflow=20,
                    connect_args=connect_args,
                    json_serializer=compact_json,
                )
            _engines[url] = engine
        return engine


def session_factory(url: str) -> sessionmaker[Session]:
    engine = get_engine(url)
    with _lock:
        factory = _factories.get(url)
        if factory is None:
            factory = sessionmaker(engine, expire_on_commit=False)
            _factories[url] = factory
        return factory


# Sessions (transactions) one process runs at a time on a non-SQLite database; None: no limit.
# Set by workers.celery_app from RSTAR_DB_SESSIONS.
_session_limit: int | None = None
_turns: dict[str, threading.BoundedSemaphore] = {}
_in_turn = threading.local()  # .depth: sessions this thread has open inside its turn


def limit_sessions(limit: int | None) -> None:
    """At most `limit` sessions at a time in this process, per database (SQLite: always one)."""
    global _session_limit
    with _lock:
        _session_limit = limit
        _turns.clear()


def _turn_for(url: str, limit: int) -> threading.BoundedSemaphore:
    turn = _turns.get(url)  # without the lock: this runs twice per model call
    if turn is None:
        with _lock:
            turn = _turns.setdefault(url, threading.BoundedSemaphore(limit))
    return turn


@contextmanager
def _turn(url: str) -> Iterator[None]:
    """This process's threads take turns here for a session's whole transaction.

    SQLite admits one writer at a time, and every transaction here is one (BEGIN IMMEDIATE); a
    thread that finds the lock taken waits in SQLite's busy handler, which sleeps and retries in 1
    to 100 ms steps. With dozens of worker threads that polling cost more CPU than the work, and a
    freed lock went unused until a sleeper woke; here the next thread wakes at once. Other
    processes still meet in the busy handler.

    On PostgreSQL a few sessions at a time (`limit_sessions`) keep the dozens of threads that come
    back from model calls together from all holding transactions, row locks and connections while
    they wait for the interpreter lock between round trips: two at a time spent ~10% less CPU per
    model call and kept more requests in flight than no limit, one or four (docs/throughput.md).

    A thread already in its turn (a session opened inside another) goes on. A turn not had within
    TURN_TIMEOUT goes on too, so the limit can slow a process but never stop it.
    """
    depth = getattr(_in_turn, "depth", 0)
    limit = 1 if url.startswith("sqlite") else _session_limit
    turn = _turn_for(url, limit) if depth == 0 and limit is not None else None
    acquired = turn is not None and turn.acquire(timeout=TURN_TIMEOUT)
    _in_turn.depth = depth + 1
    try:
        yield
    finally:
        _in_turn.depth = depth
        if turn is not None and acquired:
            turn.release()


@contextmanager
def _transaction(factory: sessionmaker[Session], url: str) -> Iterator[Session]:
    """A session of `factory` in this thread's turn, committed on success, rolled back on any
    exception."""
    with _turn(url):
        session = factory()
        try:
            with session.begin():
                yield session
        finally:
            session.close()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any exception."""
    with _transaction(session_factory(url), url) as session:
        yield session


_autocommit: dict[str, sessionmaker[Session]] = {}
_readers: dict[str, sessionmaker[Session]] = {}


def _reader_factory(url: str) -> sessionmaker[Session]:
    with _lock:
        factory = _readers.get(url)
        if factory is not None:
            return factory
    if url.startswith("sqlite"):
        # An engine of its own: the writers' engine opens every transaction with BEGIN IMMEDIATE,
        # which would take the write lock for a page view. Under WAL a plain reader blocks no one.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT})

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
            cur.close()

    else:
        engine = get_engine(url).execution_options(postgresql_readonly=True)
    with _lock:
        return _readers.setdefault(url, sessionmaker(engine, expire_on_commit=False))


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A session that can only read (SQLite `query_only`, a PostgreSQL READ ONLY transaction),
    ended at the end: for the viewer, which must never write, nor hold the write lock."""
    session = _reader_factory(url)()
    try:
        yield session
    finally:
        session.close()  # ends the transaction; what was read stays readable (not expired)


@contextmanager
def autocommit_scope(url: str) -> Iterator[Session]:
    """A session whose statements each commit on their own, on PostgreSQL: for work whose every
    write is a single statement, it saves the round trips of BEGIN and COMMIT. On SQLite, which
    has no round trips to save, the same as `session_scope`."""
    if url.startswith("sqlite"):
        with session_scope(url) as session:
            yield session
        return
    engine = get_engine(url)
    with _lock:
        factory = _autocommit.get(url)
        if factory is None:
            # Shares the engine's pool; the isolation level is reset when a connection goes back.
            factory = sessionmaker(
                engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
            )
            _autocommit[url] = factory
    with _transaction(factory, url) as session:
        yield session


def dispose_all() -> None:
    """Close every pool; used after fork and by tests that drop databases."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        for factory in _readers.values():
            bind = factory.kw["bind"]
            (getattr(bind, "engine", None) or bind).dispose()
        _engines.clear()
        _readers.clear()
        _factories.clear()
        _autocommit.clear()
