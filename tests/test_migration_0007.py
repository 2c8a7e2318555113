"""Migration 0007 (problem tallies) on a database written by release a69534f
(tests/data/release_0006): every row is still there; each answered or failed problem now carries
its cost summed from its model calls and each answered one with a reference its judgement; the
viewer's counts and pages, which read them, agree with the model calls; and `rstar results`,
`show` and `report` print what that release printed. On SQLite (its file) and PostgreSQL (the same
rows in its 0006 schema). The downgrade goes back losslessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from db import browse, migrate
from db.session import dispose_all, session_scope
from rstar.reports import judge
from tests.test_migration_0003 import open_release_db
from tests.test_migration_0005 import (
    _rows,
    assert_prints_as_released,
    assert_round_trip_is_lossless,
    assert_rows_kept,
)

RELEASE = Path(__file__).resolve().parent / "data" / "release_0006"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
TABLES = ("jobs", "problems", "steps", "model_calls", "outputs", "selections")
TALLIES = ("calls", "requests", "sequences", "prompt_tokens", "completion_tokens")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release a69534f left it (revision 0006), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0006", tables=TABLES)
    dispose_all()


def _sums(calls: list[dict[str, object]], problem_id: object) -> dict[str, int]:
    mine = [c for c in calls if c["problem_id"] == problem_id]
    sums = {name: sum(int(c[name] or 0) for c in mine) for name in TALLIES[1:]}  # type: ignore[call-overload]
    return {"calls": len(mine), **sums}


def test_upgrade_tallies_finished_problems_and_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0007")
    assert migrate.current_revision(url) == "0007"
    assert_rows_kept(url, before)

    calls = before["model_calls"]
    problems = _rows(url, "problems")
    statuses = {p["status"] for p in problems}
    assert {"answered", "failed"} <= statuses  # the release's jobs have both kinds to tally
    for p in problems:
        if p["status"] in ("answered", "failed"):
            assert {k: p[k] for k in TALLIES} == _sums(calls, p["id"]), p["item_id"]
        else:
            assert all(p[k] is None for k in TALLIES), p["item_id"]
        if p["status"] == "answered" and p["reference_answer"] is not None:
            assert p["correct"] == judge("answered", p["final_answer"], p["reference_answer"])
        else:
            assert p["correct"] is None
    assert any(p["correct"] is True for p in problems) and any(p["correct"] is False for p in problems)

    # The viewer's overview reads the tallies (counted by 0009, which today's code needs): the same
    # totals as the model calls themselves.
    migrate.upgrade(url)
    with session_scope(url) as s:
        for overview in browse.job_overviews(session=s):
            mine = {p["id"] for p in problems if p["job_id"] == overview.id}
            own = [c for c in calls if c["problem_id"] in mine]
            assert overview.model_calls == len(own)
            assert overview.sequences == sum(int(c["sequences"] or 0) for c in own)  # type: ignore[call-overload]
            judged = [p for p in problems if p["job_id"] == overview.id and p["reference_answer"] is not None]
            assert overview.right == sum(
                judge(str(p["status"]), p["final_answer"], p["reference_answer"])  # type: ignore[arg-type]
                for p in judged
            )

    assert_prints_as_released(GOLDEN, JOBS, tmp_path)


def test_downgrade_to_0006_is_lossless(release_db: str) -> None:
    assert_round_trip_is_lossless(release_db, TABLES, up="0007", down="0006")
