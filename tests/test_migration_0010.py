"""Migration 0010 (problem types) on a database written by release 0509e30 (tests/data/release_0009):
every job is kept as a `number` job, `rstar results`, `show` and `report` print what that release
printed, and a job of the old release still plans, asks and judges as it did. SQLite (the file) and
PostgreSQL (the same rows); the downgrade goes back losslessly, and is refused while a job has
another type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import migrate
from db.models import Job
from db.session import dispose_all, session_scope
from tests.support import count_errors
from tests.test_migration_0003 import open_release_db
from tests.test_migration_0005 import (
    _rows,
    assert_prints_as_released,
    assert_round_trip_is_lossless,
    assert_rows_kept,
)

DATA = Path(__file__).resolve().parent / "data"
RELEASE = DATA / "release_0009"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
COPIED = ("jobs", "problems", "steps", "model_calls", "outputs", "selections", "shared_texts")
TABLES = (*COPIED, "job_counts")
"""job_counts is compared, not copied: PostgreSQL's triggers count the copied problems (0009)."""


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release 0509e30 left it (revision 0009), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0009", tables=COPIED)
    dispose_all()


def test_upgrade_keeps_every_job_as_a_number_job_that_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0010")
    assert migrate.current_revision(url) == "0010"
    assert_rows_kept(url, before)
    assert {r["problem_type"] for r in _rows(url, "jobs")} == {"number"}
    migrate.upgrade(url)  # what today's code reads and prints needs today's schema
    with session_scope(url) as s:
        assert count_errors(s) == []
        assert [j.problem_type for j in s.scalars(sa.select(Job).order_by(Job.id))] == ["number"] * len(JOBS)
    assert_prints_as_released(GOLDEN, JOBS, tmp_path)


def test_downgrade_to_0009_is_lossless_and_refused_once_a_job_has_another_type(release_db: str) -> None:
    url = release_db
    assert_round_trip_is_lossless(url, TABLES, up="0010", down="0009")

    migrate.upgrade(url, "0010")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET problem_type = 'yes-no' WHERE id = (SELECT MIN(id) FROM jobs)"))
    engine.dispose()
    with pytest.raises(migrate.DowngradeRefusedError, match="1 jobs have a problem type other than number"):
        migrate.downgrade(url, "0009")
    assert migrate.current_revision(url) == "0010"
    assert _rows(url, "jobs")[0]["problem_type"] == "yes-no"
