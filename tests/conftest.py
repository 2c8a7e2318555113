"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when it answers), a private
Redis, and settings pointed at them.

The session starts a redis-server of its own on a free port (unless RSTAR_TEST_REDIS_URL names
one) and the tests flush only its databases: the Redis on 6379 is the user's. A sentinel key
written there before the tests must still be there after them, or the session fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db import migrate
from db.session import dispose_all
from tests.support import RedisServer, flushed_redis, unavailable
from workers.celery_app import app as default_app
from workers.celery_app import create_app
from workers.settings import get_settings

POSTGRES_ADMIN_URL = os.environ.get(
    "RSTAR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("RSTAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
"""The tests' Redis database: the session's own redis-server once `pytest_configure` started it."""
DEFAULT_REDIS = "redis://127.0.0.1:6379"
NO_REDIS = "redis://redis-server-is-not-installed:1/14"
"""What the tests get when they cannot start a Redis of their own: nothing answers there."""
SENTINEL = "rstar-tests:sentinel:" + uuid.uuid4().hex
"""A key of the default Redis's databases the tests must leave alone (they might flush them)."""


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's redis-server and point RSTAR_TEST_REDIS_URL (and the benchmark test's
    database) at it, before the test modules read them; plant the sentinel in the default Redis."""
    global REDIS_URL
    if "RSTAR_TEST_REDIS_URL" not in os.environ:
        if shutil.which("redis-server") is None:
            # Never the user's Redis instead: the tests flush their databases.
            REDIS_URL = os.environ["RSTAR_TEST_REDIS_URL"] = NO_REDIS
        else:
            server = RedisServer(Path(tempfile.mkdtemp(prefix="rstar-test-redis-"))).start()
            config.stash[_REDIS_KEY] = server
            base = server.url.rsplit("/", 1)[0]
            REDIS_URL = os.environ["RSTAR_TEST_REDIS_URL"] = f"{base}/14"
            os.environ.setdefault("RSTAR_TEST_BENCH_REDIS_URL", f"{base}/12")
    config.stash[_SENTINELS_KEY] = _plant_sentinels()


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_REDIS_KEY, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.tmp, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    lost = _lost_sentinels(session.config.stash.get(_SENTINELS_KEY, []))
    if lost:
        session.config.get_terminal_writer().line(
            f"error: the tests flushed the default Redis's database(s) {lost}: its data is the user's",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_REDIS_KEY = pytest.StashKey["RedisServer"]()
_SENTINELS_KEY = pytest.StashKey["list[int]"]()
_WATCHED_DATABASES = (5, 12, 14)
"""The default Redis's databases the tests used to flush (and the accuracy benchmark's)."""


def _plant_sentinels() -> list[int]:
    import redis

    planted = []
    for db in _WATCHED_DATABASES:
        try:
            with redis.Redis.from_url(f"{DEFAULT_REDIS}/{db}", socket_connect_timeout=1) as client:
                client.set(SENTINEL, "1", ex=24 * 3600)
            planted.append(db)
        except redis.RedisError:
            pass  # no default Redis: nothing of the user's to lose
    return planted


def _lost_sentinels(planted: list[int]) -> list[int]:
    import redis

    lost = []
    for db in planted:
        try:
            with redis.Redis.from_url(f"{DEFAULT_REDIS}/{db}", socket_connect_timeout=1) as client:
                if not client.delete(SENTINEL):
                    lost.append(db)
        except redis.RedisError:
            pass
    return lost


@pytest.fixture(autouse=True)
def _fresh_server_knowledge() -> None:
    """Each test starts knowing no server: a fake server of an earlier test may have had this
    test's port, and the client caches what a URL said it was (CI once saw a "closed" port sized as
    the llama-cpp server an earlier test had run there)."""
    from workers.client import forget_servers

    forget_servers()


def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    if not _postgres_available():
        unavailable(f"PostgreSQL does not answer at {POSTGRES_ADMIN_URL}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"rstar_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_admin).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: object) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/rstar.db"  # type: ignore[operator]
    dispose_all()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs on SQLite and on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def migrated(db_url: str) -> str:
    migrate.upgrade(db_url)
    return db_url


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = flushed_redis(REDIS_URL)
    yield REDIS_URL
    client.flushdb()
    client.close()


class SettingsEnv(pytest.MonkeyPatch):
    """A monkeypatch whose every change of the environment drops the cached settings. Threads an
    earlier test left running in this process (the lease keeper, the recovery sweep) read the
    settings at any moment, and what they read between two changes must not stay cached."""

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        get_settings.cache_clear()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        get_settings.cache_clear()


@pytest.fixture
def settings_env() -> Iterator[SettingsEnv]:
    """Point in-process settings at the test's services: RSTAR_* variables cleared, and the cached
    settings dropped whenever the test changes one and when it ends."""
    env = SettingsEnv()
    for key in list(os.environ):
        if key.startswith("RSTAR_") and not key.startswith("RSTAR_TEST_"):
            env.delenv(key)
    get_settings.cache_clear()
    try:
        yield env
    finally:
        env.undo()
        get_settings.cache_clear()


@pytest.fixture
def app_env(settings_env: pytest.MonkeyPatch, migrated: str, redis_url: str) -> Iterator[Celery]:
    """In-process settings and a Celery app on the test's database and Redis (for tasks run with
    `.apply()` in this process: what they enqueue lands in the private Redis database)."""
    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    settings_env.setenv("RSTAR_BROKER_URL", redis_url)
    get_settings.cache_clear()
    app = create_app(get_settings())
    app.set_current()
    try:
        yield app
    finally:
        app.close()
        default_app.set_current()
