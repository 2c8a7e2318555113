"""Migration 0011 (packed responses) on a database written by release 7c8a3f8 (tests/data/release_0010):
every call's raw response is stored packed and reads back as the value it was, the other rows and
columns are kept, `rstar results`, `show` and `report` print what that release printed, and the
bytes stored for the responses shrink. SQLite (the file) and PostgreSQL (the same rows); the
downgrade goes back losslessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import migrate
from db.models import ModelCall
from db.session import dispose_all, session_scope
from rstar.records import expanded_response, unpack_json
from tests.support import count_errors
from tests.test_migration_0003 import open_release_db
from tests.test_migration_0005 import _rows, assert_prints_as_released, assert_round_trip_is_lossless

DATA = Path(__file__).resolve().parent / "data"
RELEASE = DATA / "release_0010"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
COPIED = ("jobs", "problems", "steps", "model_calls", "outputs", "selections", "shared_texts")
TABLES = (*COPIED, "job_counts")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release 7c8a3f8 left it (revision 0010), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0010", tables=COPIED)
    dispose_all()


def _stored_bytes(url: str) -> int:
    engine = sa.create_engine(url)
    function = "octet_length" if url.startswith("postgresql") else "length"  # a BLOB's length is its bytes
    with engine.connect() as conn:
        total = conn.scalar(sa.text(f"SELECT SUM({function}(response)) FROM model_calls"))
    engine.dispose()
    return int(total or 0)


def _without_response(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k != "response"}


def test_upgrade_packs_every_response_keeps_every_value_and_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    old_calls = {c["id"]: c for c in before["model_calls"]}
    assert any(c["response"] for c in old_calls.values())
    migrate.upgrade(url, "0011")
    assert migrate.current_revision(url) == "0011"

    for table in TABLES:
        after = _rows(url, table)
        if table != "model_calls":
            kept = [{k: r[k] for k in old} for r, old in zip(after, before[table], strict=True)]
            assert kept == before[table], table
            continue
        assert len(after) == len(old_calls)
        for row in after:
            old = old_calls[row["id"]]
            assert _without_response(row) == _without_response(old)
            assert (None if row["response"] is None else unpack_json(row["response"])) == old["response"]
    migrate.upgrade(url)  # what today's code reads needs today's schema
    with session_scope(url) as s:
        assert count_errors(s) == []
        calls = s.scalars(sa.select(ModelCall).order_by(ModelCall.id)).all()
        # What the viewer shows as received and a reused call copies: the values of before.
        assert {c.id: c.response for c in calls} == {i: c["response"] for i, c in old_calls.items()}
        shown = {c.id: expanded_response(c.response, c.response_text, c.sequences) for c in calls}
        assert shown == {
            i: expanded_response(c["response"], c["response_text"], c["sequences"])
            for i, c in old_calls.items()
        }
    assert_prints_as_released(GOLDEN, JOBS, tmp_path)


def test_packed_responses_take_fewer_bytes(release_db: str) -> None:
    url = release_db
    plain = sum(
        len(json.dumps(c["response"], separators=(",", ":")).encode())
        for c in _rows(url, "model_calls")
        if c["response"] is not None
    )
    migrate.upgrade(url)
    packed = _stored_bytes(url)
    assert 0 < packed < plain


def test_downgrade_to_0010_is_lossless(release_db: str) -> None:
    assert_round_trip_is_lossless(release_db, TABLES, up="0011", down="0010")
