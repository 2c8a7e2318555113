"""Migration 0006 (problem metadata) on a database written by release a311160
(tests/data/release_0005): every row is still there, no problem has metadata, and `rstar results`,
`show` and `report` print what that release printed. On SQLite (its file) and PostgreSQL (the same
rows in its 0005 schema). The downgrade goes back losslessly, and is refused, changing nothing,
once a problem has metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import migrate
from db.session import dispose_all
from tests.test_migration_0003 import open_release_db
from tests.test_migration_0005 import (
    _rows,
    assert_prints_as_released,
    assert_round_trip_is_lossless,
    assert_rows_kept,
)

RELEASE = Path(__file__).resolve().parent / "data" / "release_0005"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
TABLES = ("jobs", "problems", "steps", "model_calls", "outputs", "selections")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release a311160 left it (revision 0005), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0005", tables=TABLES)
    dispose_all()


def test_upgrade_keeps_every_row_and_prints_what_the_release_printed(release_db: str, tmp_path: Path) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0006")
    assert migrate.current_revision(url) == "0006"
    assert_rows_kept(url, before)
    assert [p["meta"] for p in _rows(url, "problems")] == [None] * len(before["problems"])

    migrate.upgrade(url)
    for new in assert_prints_as_released(GOLDEN, JOBS, tmp_path).values():
        assert all(r["meta"] in (None, "") for r in new)


def test_downgrade_to_0005_is_lossless_and_refused_once_a_problem_has_metadata(release_db: str) -> None:
    url = release_db
    assert_round_trip_is_lossless(url, TABLES, up="0006", down="0005")

    migrate.upgrade(url, "0006")
    engine = sa.create_engine(url)
    problems = sa.table("problems", sa.column("id", sa.Integer), sa.column("meta", sa.JSON))
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(problems.c.id))).scalar()
        conn.execute(problems.update().where(problems.c.id == first).values(meta={"level": 5}))
    engine.dispose()
    with pytest.raises(migrate.DowngradeRefusedError, match="1 problems have metadata"):
        migrate.downgrade(url, "0005")
    assert migrate.current_revision(url) == "0006"
    assert _rows(url, "problems")[0]["meta"] == {"level": 5}
