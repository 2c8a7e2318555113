"""Fixtures of the reliability suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from db import migrate
from tests.support import RedisServer
from workers.celery_app import app as default_app
from workers.celery_app import create_app
from workers.settings import get_settings


@pytest.fixture
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test's own (overrides the shared test database): other test sessions
    flushing that database, or consuming its control queue, must not touch these jobs."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def cli_env(
    postgres_url: str, redis_url: str, settings_env: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    """In-process `rstar` commands (CliRunner) on a migrated PostgreSQL database and the private
    Redis database: settings from the environment, and a Celery app on that broker. Set more
    RSTAR_* variables on the returned monkeypatch, then call `get_settings.cache_clear()`."""
    migrate.upgrade(postgres_url)
    settings_env.setenv("RSTAR_DATABASE_URL", postgres_url)
    settings_env.setenv("RSTAR_BROKER_URL", redis_url)
    settings_env.setenv("RSTAR_MODEL_A_URL", "http://127.0.0.1:9")
    settings_env.setenv("RSTAR_CHECK_MODELS", "false")  # no server: the steps wait in their queues
    get_settings.cache_clear()
    celery = create_app(get_settings())
    celery.set_current()
    try:
        yield settings_env
    finally:
        celery.close()
        default_app.set_current()
