"""Migration 0008 (compact records) on a database written by release d8f57ed
(tests/data/release_0007): each request's system prompt is stored once and named by digest, and
each output's text that is its call's sequence is stored only there, and yet every request reads
back as it was sent and every output's text as it was, `rstar results`, `show` and `report`
print what that release printed, and the viewer shows each call's request as sent. On a database
of the release before that (release_0006), whose raw responses still hold their texts, those are
left out too and read back as received. SQLite (the file) and PostgreSQL (the same rows); the downgrade goes
back losslessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from markupsafe import escape
from sqlalchemy import select

from db import migrate
from db.calls import requests_as_sent
from db.models import ModelCall, Output
from db.session import dispose_all, session_scope
from rstar.records import SHARED_TEXTS, TEXTS_STORED_APART, expanded_request, expanded_response
from tests.test_migration_0003 import _count, open_release_db
from tests.test_migration_0005 import (
    _rows,
    assert_prints_as_released,
    assert_round_trip_is_lossless,
    assert_rows_kept,
)

DATA = Path(__file__).resolve().parent / "data"
RELEASE = DATA / "release_0007"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
TABLES = ("jobs", "problems", "steps", "model_calls", "outputs", "selections")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release d8f57ed left it (revision 0007), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0007", tables=TABLES)
    dispose_all()


def _size(rows: list[dict[str, object]], column: str) -> int:
    return sum(len(json.dumps(r[column])) for r in rows)


def _assert_calls_read_as_before(url: str, before: list[dict[str, object]]) -> list[dict[str, object]]:
    """Every call's other columns as they were, its request as sent and its response as received
    the same as before; the calls after the upgrade."""
    after = _rows(url, "model_calls")
    engine = sa.create_engine(url)
    shared = sa.inspect(engine).has_table("shared_texts")
    engine.dispose()
    texts = {r["digest"]: r["text"] for r in _rows(url, "shared_texts")} if shared else {}
    for new, old in zip(after, before, strict=True):
        assert {k: v for k, v in new.items() if k not in ("request", "response")} == {
            k: v for k, v in old.items() if k not in ("request", "response")
        }
        assert expanded_request(new["request"], texts) == old["request"], new["id"]
        seqs = old["sequences"]
        assert expanded_response(new["response"], new["response_text"], seqs) == expanded_response(  # type: ignore[arg-type]
            old["response"],
            old["response_text"],
            seqs,  # type: ignore[arg-type]
        ), new["id"]
    return after


def _assert_outputs_read_as_before(url: str, before: list[dict[str, object]]) -> None:
    """Every output's columns as they were but its text, which reads back as it was, stored with
    it only where it is not its call's sequence."""
    after = _rows(url, "outputs")
    with session_scope(url) as s:
        texts = dict(s.execute(select(Output.id, Output.text)).tuples().all())
    for new, old in zip(after, before, strict=True):
        assert {k: new[k] for k in old if k != "text"} == {k: v for k, v in old.items() if k != "text"}
        assert texts[new["id"]] == old["text"], new["id"]
        assert (new["text"] is None) == (new["text_seq"] is not None), new["id"]
    moved = [o for o in after if o["text_seq"] is not None]
    assert len(moved) > 0.8 * sum(o["text"] is not None for o in before)


def test_upgrade_stores_each_system_prompt_once_and_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0008")
    assert migrate.current_revision(url) == "0008"
    assert_rows_kept(url, {t: rows for t, rows in before.items() if t not in ("model_calls", "outputs")})
    calls = _assert_calls_read_as_before(url, before["model_calls"])
    _assert_outputs_read_as_before(url, before["outputs"])

    # The release's strategies send a handful of distinct system prompts over dozens of calls.
    systems = {
        m["content"]
        for c in before["model_calls"]
        for m in c["request"]["messages"]  # type: ignore[index]
        if m["role"] == "system"
    }
    assert {r["text"] for r in _rows(url, "shared_texts")} == systems
    assert all(SHARED_TEXTS in c["request"] for c in calls)  # type: ignore[operator]
    assert len(calls) > 4 * len(systems)
    # Each request is smaller by its system prompt, less the digest that names it.
    prompts = sum(len(json.dumps(c["request"]["messages"][0]["content"])) for c in before["model_calls"])  # type: ignore[index]
    saved = _size(before["model_calls"], "request") - _size(calls, "request")
    assert saved > prompts - 120 * len(calls) > 0

    migrate.upgrade(url)  # what today's code prints needs today's schema
    assert_prints_as_released(GOLDEN, JOBS, tmp_path)
    _assert_viewer_shows_requests_as_sent(url, before["model_calls"])


def _assert_viewer_shows_requests_as_sent(url: str, calls: list[dict[str, object]]) -> None:
    from fastapi.testclient import TestClient

    from web.app import create_app

    client = TestClient(create_app(database_url=url))
    problems = {p["id"]: p for p in _rows(url, "problems")}
    for problem_id in sorted({c["problem_id"] for c in calls})[:6]:  # type: ignore[type-var]
        p = problems[problem_id]
        page = client.get(f"/jobs/{p['job_id']}/problems/{p['item_id']}")
        assert page.status_code == 200
        for c in (c for c in calls if c["problem_id"] == problem_id):
            assert str(escape(json.dumps(c["request"], indent=2, ensure_ascii=False))) in page.text, c["id"]


def test_requests_as_sent_gives_every_request_as_the_release_recorded_it(release_db: str) -> None:
    before = {c["id"]: c["request"] for c in _rows(release_db, "model_calls")}
    migrate.upgrade(release_db)
    with session_scope(release_db) as s:
        calls = s.scalars(select(ModelCall).order_by(ModelCall.id)).all()
        assert all(SHARED_TEXTS in c.request for c in calls)
        assert requests_as_sent(session=s, calls=calls) == before


def test_downgrade_to_0007_is_lossless(release_db: str) -> None:
    """Every row as it was, but the responses the release stored without their texts, which come
    back whole (as every release before reads them)."""
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url, "0008")
    migrate.downgrade(url, "0007")
    assert migrate.current_revision(url) == "0007"
    assert_rows_kept(url, {t: rows for t, rows in before.items() if t != "model_calls"})
    calls = _assert_calls_read_as_before(url, before["model_calls"])
    assert not any(TEXTS_STORED_APART in (c["response"] or {}) for c in calls)  # type: ignore[operator]
    assert any(TEXTS_STORED_APART in (c["response"] or {}) for c in before["model_calls"])  # type: ignore[operator]
    assert [c["request"] for c in calls] == [c["request"] for c in before["model_calls"]]
    # The analyst views stand again after SQLite rebuilt `outputs`.
    assert _count(url, "problem_results") == len(before["problems"])


def test_a_database_of_release_0006_goes_to_the_head_and_back_unchanged(release_0006_db: str) -> None:
    assert_round_trip_is_lossless(release_0006_db, TABLES, up="head", down="0006")


@pytest.fixture(params=["sqlite", "postgresql"])
def release_0006_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as release a69534f left it (revision 0006): its responses hold their texts."""
    yield open_release_db(
        request, tmp_path, settings_env, release=DATA / "release_0006", revision="0006", tables=TABLES
    )
    dispose_all()


def test_upgrade_leaves_out_the_texts_older_responses_held_twice(release_0006_db: str) -> None:
    url = release_0006_db
    migrate.upgrade(url, "0007")
    before = _rows(url, "model_calls")
    assert not any(TEXTS_STORED_APART in (c["response"] or {}) for c in before)  # type: ignore[operator]
    migrate.upgrade(url, "0008")
    after = _assert_calls_read_as_before(url, before)
    answered = [c for c in after if c["outcome"] == "ok"]
    assert answered and all(TEXTS_STORED_APART in c["response"] for c in answered)  # type: ignore[operator]
    assert _size(after, "response") < 0.8 * _size(before, "response")


def test_a_text_that_is_not_its_calls_sequence_stays_with_its_output(release_db: str) -> None:
    """A text the strategy cut from its reply, or one recorded cut short, is no sequence verbatim."""
    engine = sa.create_engine(release_db)
    with engine.begin() as conn:
        first = conn.execute(
            sa.text("SELECT id, text FROM outputs WHERE text IS NOT NULL ORDER BY id")
        ).first()
        assert first is not None
        conn.execute(
            sa.text("UPDATE outputs SET text = :t WHERE id = :i"), {"t": first.text[:20], "i": first.id}
        )
    engine.dispose()
    migrate.upgrade(release_db)
    mine = next(o for o in _rows(release_db, "outputs") if o["id"] == first.id)
    assert mine["text"] == first.text[:20] and mine["text_seq"] is None
