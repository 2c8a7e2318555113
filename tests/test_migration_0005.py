"""Migration 0005 (sampled sequences: requests and sequences per call, several outputs per step) on
a database written by release cc38284 (tests/data/release_0004): every row is still there, old calls
count one request and one sequence (none when they failed), and `rstar results`, `show` and
`report` print what that release printed. On SQLite (its file) and PostgreSQL (the same rows in
its 0004 schema). The downgrade goes back losslessly, and is refused, changing nothing, once a
call sampled several sequences.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import migrate
from db.session import dispose_all
from tests.test_migration_0003 import _normal, _panels, _records, _run, _step_titles, assert_same_tables
from workers.settings import get_settings

RELEASE = Path(__file__).resolve().parent / "data" / "release_0004"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
TABLES = ("jobs", "problems", "steps", "model_calls", "outputs", "selections")


def _copy_rows(source: str, target: str) -> None:
    src, dst = sa.create_engine(source), sa.create_engine(target)
    src_meta, dst_meta = sa.MetaData(), sa.MetaData()
    src_meta.reflect(src, only=TABLES)
    dst_meta.reflect(dst, only=TABLES)
    with src.connect() as read, dst.begin() as write:
        for name in TABLES:
            table = src_meta.tables[name]
            rows = [dict(r._mapping) for r in read.execute(sa.select(table).order_by(table.c.id))]
            if rows:
                write.execute(dst_meta.tables[name].insert(), rows)
            write.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT MAX(id) FROM {name}))"
                )
            )
    src.dispose()
    dst.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite"
        shutil.copy(RELEASE / "jobs.sqlite", path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url, "0004")
        _copy_rows(f"sqlite:///{RELEASE / 'jobs.sqlite'}", url)
    assert migrate.current_revision(url) == "0004"
    settings_env.setenv("RSTAR_DATABASE_URL", url)
    settings_env.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield url
    dispose_all()


def _rows(url: str, table: str) -> list[dict[str, object]]:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine, only=[table])
    t = meta.tables[table]
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]
    engine.dispose()
    return rows


def test_upgrade_keeps_every_row_counts_old_calls_and_prints_what_the_release_printed(
    release_db: str, tmp_path: Path
) -> None:
    url = release_db
    before = {t: _rows(url, t) for t in TABLES}
    migrate.upgrade(url)
    assert migrate.current_revision(url) == "0005" == migrate.head_revision(url)
    for table in TABLES:
        after = _rows(url, table)
        # Every row and every value as it was; the new columns beside them.
        assert [{k: r[k] for k in old} for r, old in zip(after, before[table], strict=True)] == before[table]
    calls = _rows(url, "model_calls")
    assert all(c["requests"] == 1 and c["sequences"] == (1 if c["outcome"] == "ok" else 0) for c in calls)
    assert any(c["outcome"] != "ok" for c in calls)
    assert all(o["seq"] == 0 for o in _rows(url, "outputs"))

    for job in JOBS:
        stem = f"{job['id']}-{job['name']}"
        for fmt in ("jsonl", "csv"):
            old = _records((GOLDEN / f"results-{stem}.{fmt}").read_text(), fmt)
            new = _records(_run("results", str(job["id"]), "--format", fmt), fmt)
            assert [{k: r[k] for k in o} for r, o in zip(new, old, strict=True)] == old, (stem, fmt)
            assert all(str(r["requests"]) == str(r["model_calls"]) for r in new)  # one request per call
        for item in job["problems"]:
            golden = GOLDEN / f"show-{stem}-{item}.txt"
            if not golden.exists():
                continue
            old_titles, old_body = _panels(golden.read_text())
            new_titles, new_body = _panels(_run("show", str(job["id"]), item))
            assert _step_titles(new_titles) == _step_titles(old_titles), (stem, item)
            new_lines = iter(_normal(line) for line in new_body)
            missing = [line for line in map(_normal, old_body) if not any(line == n for n in new_lines)]
            assert not missing, (stem, item, missing[:3])

    out = tmp_path / "report"
    _run("report", *(str(j["id"]) for j in JOBS), "-o", str(out))
    assert_same_tables((GOLDEN / "report.md").read_text(), (out / "report.md").read_text())

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
    assert migrate.current_revision(url) == "0005"
    assert _rows(url, "model_calls")[0].keys() >= {"requests", "sequences"}
