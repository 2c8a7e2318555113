"""Migration 0009 (job counts) on a database written by release 57d5049 (tests/data/release_0008):
every job's problems are counted into `job_counts` as a count over the problems says, the jobs
page, the job page and `rstar status` give the figures the problems give, `rstar results`, `show`
and `report` print what that release printed, and from then on the database keeps the counts as
problems change. SQLite (the file) and PostgreSQL (the same rows); the downgrade goes back
losslessly and leaves no trigger behind.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import app as cli
from db import browse, migrate
from db.jobs import status_counts
from db.models import Problem
from db.session import dispose_all, session_scope
from tests.support import count_errors
from tests.test_migration_0003 import open_release_db
from tests.test_migration_0005 import (
    _rows,
    assert_prints_as_released,
    assert_round_trip_is_lossless,
    assert_rows_kept,
)
from web.app import create_app

DATA = Path(__file__).resolve().parent / "data"
RELEASE = DATA / "release_0008"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
TABLES = ("jobs", "problems", "steps", "model_calls", "outputs", "selections", "shared_texts")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release 57d5049 left it (revision 0008), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0008", tables=TABLES)
    dispose_all()


def test_upgrade_counts_every_jobs_problems_and_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0009")
    assert migrate.current_revision(url) == "0009"
    assert_rows_kept(url, before)
    with session_scope(url) as s:  # the counts, as 0009 made them
        assert count_errors(s) == []
    migrate.upgrade(url)  # what today's code reads and prints needs today's schema
    with session_scope(url) as s:
        assert count_errors(s) == []
        overviews = {o.id: o for o in browse.job_overviews(session=s)}
        states = {j["id"]: status_counts(session=s, job_id=j["id"]) for j in JOBS}
    calls = Counter(c["problem_id"] for c in before["model_calls"])
    for job in JOBS:
        mine = [p for p in before["problems"] if p["job_id"] == job["id"]]
        o = overviews[job["id"]]
        assert states[job["id"]] == Counter(p["status"] for p in mine)
        assert (o.problems, o.done) == (len(mine), sum(p["status"] in ("answered", "failed") for p in mine))
        assert o.judged == sum(
            p["status"] in ("answered", "failed") and p["reference_answer"] is not None for p in mine
        )
        assert o.right == sum(p["correct"] is True for p in mine) > 0
        assert o.model_calls == sum(calls[p["id"]] for p in mine) > 0
    # The job page's outcome counts: what the problems' own outcomes add up to.
    client = TestClient(create_app(database_url=url))
    for job in JOBS:
        with session_scope(url) as s:
            _, listing = browse.job_view(session=s, job_id=job["id"])  # type: ignore[misc]
            problems = s.scalars(sa.select(Problem).where(Problem.job_id == job["id"])).all()
            assert listing.outcomes == Counter(browse.outcome_of(p) for p in problems)
        assert client.get(f"/jobs/{job['id']}").status_code == 200
    assert_prints_as_released(GOLDEN, JOBS, tmp_path)
    status = CliRunner().invoke(cli, ["status", str(JOBS[0]["id"])])
    assert status.exit_code == 0, status.output


def test_after_the_upgrade_the_database_keeps_the_counts(release_db: str) -> None:
    url = release_db
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE problems SET status = 'running', final_answer = NULL, correct = NULL"
                             " WHERE id IN (SELECT MIN(id) FROM problems GROUP BY job_id)"))  # fmt: skip
        conn.execute(sa.text("DELETE FROM problems WHERE id = (SELECT MAX(id) FROM problems)"))
    engine.dispose()
    with session_scope(url) as s:
        assert count_errors(s) == []


def test_downgrade_to_0008_is_lossless_and_leaves_no_trigger(release_db: str) -> None:
    url = release_db
    assert_round_trip_is_lossless(url, TABLES, up="head", down="0008")
    engine = sa.create_engine(url)
    assert not sa.inspect(engine).has_table("job_counts")
    with engine.begin() as conn:  # a trigger left behind would fail on the missing table
        conn.execute(
            sa.text("UPDATE problems SET status = 'running' WHERE id = (SELECT MIN(id) FROM problems)")
        )
        conn.execute(sa.text("DELETE FROM problems WHERE id = (SELECT MAX(id) FROM problems)"))
    engine.dispose()
