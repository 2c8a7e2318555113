"""Migration 0012 (job windows) on a database written by release 7c8a3f8 (tests/data/release_0010):
every row kept, every job without a stored window (so the workers' RSTAR_JOB_WINDOW keeps deciding
it, as it did), `rstar results`, `show` and `report` print what that release printed. SQLite (the
file) and PostgreSQL (the same rows); the downgrade goes back losslessly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from db import migrate
from db.session import dispose_all
from tests.test_migration_0003 import open_release_db
from tests.test_migration_0005 import (
    _rows,
    assert_prints_as_released,
    assert_round_trip_is_lossless,
    assert_rows_kept,
)
from tests.test_migration_0011 import COPIED, GOLDEN, JOBS, RELEASE, TABLES


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release 7c8a3f8 left it (revision 0010), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0010", tables=COPIED)
    dispose_all()


def test_upgrade_keeps_every_row_and_leaves_each_jobs_window_to_the_workers(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    migrate.upgrade(url, "0011")
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0012")
    assert migrate.current_revision(url) == "0012"
    assert_rows_kept(url, before)
    assert [j["job_window"] for j in _rows(url, "jobs")] == [None] * len(JOBS)
    migrate.upgrade(url)
    assert_prints_as_released(GOLDEN, JOBS, tmp_path)


def test_downgrade_to_0011_is_lossless(release_db: str) -> None:
    migrate.upgrade(release_db, "0011")
    assert_round_trip_is_lossless(release_db, TABLES, up="0012", down="0011")
