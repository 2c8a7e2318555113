"""Migration 0005 (sampled sequences: requests and sequences per call, several outputs per step) on
a database written by release cc38284 (tests/data/release_0004): every row is still there, old calls
count one request and one sequence (none when they failed), and `rstar results`, `show` and
`report` print what that release printed. On SQLite (its file) and PostgreSQL (the same rows in
its 0004 schema). The downgrade goes back losslessly, and is refused, changing nothing, once a
call sampled several sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from db import migrate
from db.session import dispose_all
from tests.test_migration_0003 import (
    _records,
    _run,
    assert_same_show,
    assert_same_tables,
    open_release_db,
)

RELEASE = Path(__file__).resolve().parent / "data" / "release_0004"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
TABLES = ("jobs", "problems", "steps", "model_calls", "outputs", "selections")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release cc38284 left it (revision 0004), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0004", tables=TABLES)
    dispose_all()


def _rows(url: str, table: str) -> list[dict[str, object]]:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine, only=[table])
    t = meta.tables[table]
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(*t.primary_key))]
    engine.dispose()
    return rows


def assert_rows_kept(url: str, before: dict[str, list[dict[str, object]]]) -> None:
    """Every row and every value of `before` as it was; new columns may stand beside them."""
    for table, rows in before.items():
        after = _rows(url, table)
        assert [{k: r[k] for k in old} for r, old in zip(after, rows, strict=True)] == rows, table


def assert_round_trip_is_lossless(url: str, tables: tuple[str, ...], *, up: str, down: str) -> None:
    """Upgrading to `up` and back to `down` leaves every row of `tables` as it was, and the analyst
    views stand again."""
    before = {t: _rows(url, t) for t in tables}
    migrate.upgrade(url, up)
    migrate.downgrade(url, down)
    assert migrate.current_revision(url) == down
    assert {t: _rows(url, t) for t in tables} == before
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM problem_results")).scalar() == len(
            before["problems"]
        )
    engine.dispose()


def assert_prints_as_released(
    golden: Path, jobs: list[dict[str, Any]], tmp_path: Path
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """`rstar results` (both formats), `show` of every problem and `report`'s tables print what the
    release printed for its jobs (`golden/`; later releases may add fields and columns). Returns
    what `results` printed now, by (job stem, format), for checks of the new fields."""
    printed = {}
    for job in jobs:
        stem = f"{job['id']}-{job['name']}"
        for fmt in ("jsonl", "csv"):
            old = _records((golden / f"results-{stem}.{fmt}").read_text(), fmt)
            new = _records(_run("results", str(job["id"]), "--format", fmt), fmt)
            assert [{k: r[k] for k in o} for r, o in zip(new, old, strict=True)] == old, (stem, fmt)
            printed[stem, fmt] = new
        for item in job["problems"]:
            assert_same_show(golden / f"show-{stem}-{item}.txt", job["id"], item)
    out = tmp_path / "report"
    _run("report", *(str(j["id"]) for j in jobs), "-o", str(out))
    assert_same_tables((golden / "report.md").read_text(), (out / "report.md").read_text())
    return printed


def test_upgrade_keeps_every_row_counts_old_calls_and_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0005")
    assert migrate.current_revision(url) == "0005"
    assert_rows_kept(url, before)
    calls = _rows(url, "model_calls")
    assert all(c["requests"] == 1 and c["sequences"] == (1 if c["outcome"] == "ok" else 0) for c in calls)
    assert any(c["outcome"] != "ok" for c in calls)
    assert all(o["seq"] == 0 for o in _rows(url, "outputs"))

    migrate.upgrade(url)  # what today's code prints needs today's schema
    for new in assert_prints_as_released(GOLDEN, JOBS, tmp_path).values():
        assert all(str(r["requests"]) == str(r["model_calls"]) for r in new)  # one request per call

    # The analyst views count requests and sequences apart.
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT SUM(requests), SUM(sequences) FROM problem_results")).one()
        assert tuple(total) == (len(calls), sum(1 for c in calls if c["outcome"] == "ok"))
        assert conn.execute(sa.text("SELECT COUNT(*) FROM call_log WHERE sequences IS NULL")).scalar() == 0
    engine.dispose()


def test_downgrade_to_0004_is_lossless_and_refused_once_a_call_sampled_several(release_db: str) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url)
    migrate.downgrade(url, "0004")
    assert migrate.current_revision(url) == "0004"
    assert {t: _rows(url, t) for t in TABLES} == before

    migrate.upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # what an rstar step leaves: one call of 3 sequences, 3 outputs
        call = conn.execute(sa.text("SELECT id, step_id FROM model_calls WHERE outcome = 'ok' LIMIT 1")).one()
        conn.execute(sa.text("UPDATE model_calls SET sequences = 3 WHERE id = :id"), {"id": call.id})
    engine.dispose()
    with pytest.raises(migrate.DowngradeRefusedError, match="1 model calls sampled several sequences"):
        migrate.downgrade(url, "0004")
    assert migrate.current_revision(url) == migrate.head_revision(url)  # nothing undone
    assert _rows(url, "model_calls")[0].keys() >= {"requests", "sequences"}
