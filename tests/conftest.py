"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when it answers), a private
Redis database, and settings pointed at them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db import migrate
from db.session import dispose_all
from tests.support import flushed_redis, unavailable
from workers.celery_app import app as default_app
from workers.celery_app import create_app
from workers.settings import get_settings

POSTGRES_ADMIN_URL = os.environ.get(
    "RSTAR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("RSTAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


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
