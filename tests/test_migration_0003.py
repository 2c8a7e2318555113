"""Migration 0003 (one outputs table, a model roster per job) on a database written by the previous
release: every job, problem, call, solution, review, completion and selection is still there, and
`rstar results`, `rstar show` and `rstar report` print the same answers, accuracies and audit trail
as that release printed (tests/data/previous_release/golden). On SQLite (the release's own file)
and on PostgreSQL (the same rows, loaded into its 0002 schema). `rstar db downgrade` goes back
losslessly, and is refused, changing nothing, when the database holds what 0002 cannot.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from db import migrate
from db.session import dispose_all
from workers.settings import get_settings

RELEASE = Path(__file__).resolve().parent / "data" / "previous_release"
GOLDEN = RELEASE / "golden"
JOBS = json.loads((GOLDEN / "jobs.json").read_text())
# Parents before children: the order to copy the release's rows in.
TABLES = ("jobs", "problems", "steps", "model_calls", "solutions", "reviews", "selections")


def copy_rows(source: str, target: str, tables: tuple[str, ...] = TABLES) -> None:
    """Every row of a release's tables from `source` into `target` (at that release's revision),
    parents before children."""
    src, dst = sa.create_engine(source), sa.create_engine(target)
    # Reflected, so values come out and go in typed (SQLite's JSON text, dates, booleans).
    src_meta, dst_meta = sa.MetaData(), sa.MetaData()
    src_meta.reflect(src, only=tables)
    dst_meta.reflect(dst, only=tables)
    with src.connect() as read, dst.begin() as write:
        for name in tables:
            table = src_meta.tables[name]
            rows = [dict(r._mapping) for r in read.execute(sa.select(table).order_by(*table.primary_key))]
            if rows:
                write.execute(dst_meta.tables[name].insert(), rows)
            if "id" in table.c:  # shared_texts is keyed by its digest, no sequence
                write.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT MAX(id) FROM {name}))"
                    )
                )
    src.dispose()
    dst.dispose()


def open_release_db(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    settings_env: pytest.MonkeyPatch,
    *,
    release: Path,
    revision: str,
    tables: tuple[str, ...],
) -> str:
    """A release's database as it left it (at `revision`), as RSTAR_DATABASE_URL: its SQLite file,
    or the same rows in PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite"
        shutil.copy(release / "jobs.sqlite", path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url, revision)
        copy_rows(f"sqlite:///{release / 'jobs.sqlite'}", url, tables)
    assert migrate.current_revision(url) == revision
    settings_env.setenv("RSTAR_DATABASE_URL", url)
    settings_env.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def release_db(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database as the previous release left it (revision 0002), as RSTAR_DATABASE_URL."""
    yield open_release_db(request, tmp_path, settings_env, release=RELEASE, revision="0002", tables=TABLES)
    dispose_all()


def _run(*args: str) -> str:
    """`rstar ARGS` in this process, printing as the release printed (200 columns, no colour)."""
    import cli.main

    cli.main.console = Console(width=200, no_color=True, color_system=None)
    result = CliRunner().invoke(cli.main.app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def _panels(text: str) -> tuple[list[str], list[str]]:
    """A `rstar show` print-out as (panel titles, body lines without borders or blank lines)."""
    titles, body = [], []
    for line in text.splitlines():
        if line.startswith("╭"):
            titles.append(line.strip("╭╮─ "))
        elif line.startswith("│"):
            content = line[1:-1].strip()
            if content:
                body.append(content)
    return titles, body


CALL_LINE = re.compile(r"^attempt (\d+) · (?:model \S+ · )?(\S+) · (\S+) · (?:served )?(.*)$")


UNKNOWN = re.compile(r"(?:(?<=: )|(?<=· )|(?<=served )|(?<=finish ))None\b")


def _normal(line: str) -> str:
    """A model call's first line without what this release adds (its roster name, "served"), and
    an unknown value as this release prints it: "-" where the release printed Python's None, and
    "tokens unknown" for its "tokens None+None" (a deliberate change: issue 25, item 16)."""
    line = UNKNOWN.sub("-", line.replace("tokens None+None", "tokens unknown"))
    m = CALL_LINE.match(line)
    return f"attempt {m[1]} · {m[2]} · {m[3]} · {m[4]}" if m else line


def _md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The Markdown tables of a report: (header cells, row cells) each."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split(" | ")])
            tables.append((cells, rows))
    return tables


def assert_same_show(golden: Path, job_id: int, item: str) -> list[str] | None:
    """`rstar show JOB ITEM` has the same steps, calls and selection as the release printed, and
    every line of their texts, in order; the new printout's body lines (None: no golden file)."""
    if not golden.exists():
        return None
    old_titles, old_body = _panels(golden.read_text())
    new_titles, new_body = _panels(_run("show", str(job_id), item))
    assert _step_titles(new_titles) == _step_titles(old_titles), (golden.name, item)
    new_lines = iter(_normal(line) for line in new_body)
    missing = [line for line in map(_normal, old_body) if not any(line == n for n in new_lines)]
    assert not missing, (golden.name, missing[:3])
    return new_body


def assert_same_tables(old_md: str, new_md: str) -> None:
    """Every table of `old_md`, in order, is in `new_md` with every row and every cell under the
    same column (the newer report may add columns, and tables between them)."""
    new_tables = iter(_md_tables(new_md))
    for head, rows in _md_tables(old_md):
        for new_head, new_rows in new_tables:
            if set(head) <= set(new_head):
                assert [[r[new_head.index(h)] for h in head] for r in new_rows] == rows, head
                break
        else:
            raise AssertionError(f"no table with the columns {head}")


def _step_titles(titles: list[str]) -> list[tuple[str, ...]]:
    """(round, model, status, step key) of each step panel; the model call ids; the selection's output."""
    out: list[tuple[str, ...]] = []
    for t in titles:
        if m := re.match(r"round (\d+) · (\S+) .* · (\w+) · step (\S+)", t):
            out.append(("step", *m.groups()))
        elif m := re.match(r"model call #(\d+)", t):
            out.append(("call", m[1]))
        elif m := re.match(r"selection \(.*#(\d+)\)", t):
            out.append(("selection", m[1]))
    return out


def test_upgrade_keeps_every_row_and_every_printed_result(release_db: str, tmp_path: Path) -> None:
    url = release_db
    counts = {t: _count(url, t) for t in TABLES}
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision(url)
    assert _count(url, "outputs") == counts["solutions"] + counts["reviews"]
    for table in ("jobs", "problems", "steps", "model_calls", "selections"):
        assert _count(url, table) == counts[table], table

    for job in JOBS:
        stem = f"{job['id']}-{job['name']}"
        # results: every field the release printed, with the same value (one new: the model).
        for fmt in ("jsonl", "csv"):
            old = _records((GOLDEN / f"results-{stem}.{fmt}").read_text(), fmt)
            new = _records(_run("results", str(job["id"]), "--format", fmt), fmt)
            assert [{k: r[k] for k in o} for r, o in zip(new, old, strict=True)] == old, (stem, fmt)
            if fmt == "jsonl":
                assert all(r["model"] in ("A", "B") for r in new if r["status"] == "answered")
        for item in job["problems"]:
            new_body = assert_same_show(GOLDEN / f"show-{stem}-{item}.txt", job["id"], item)
            assert new_body is None or any(
                line.startswith("job ") and "models: A " in line for line in new_body
            )

    # report: the same tables (accuracy, rounds, paired comparisons) and CSV columns.
    out = tmp_path / "report"
    _run("report", *(str(j["id"]) for j in JOBS), "-o", str(out))
    new_md = (out / "report.md").read_text()
    # Every table of the release, every row, every cell under the same column (later releases may
    # add columns: requests and sequences per problem).
    assert_same_tables((GOLDEN / "report.md").read_text(), new_md)
    assert "## Accuracy per model" in new_md
    for name in ("summary.csv", "problems.csv", "paired.csv"):
        old = _records((GOLDEN / name).read_text(), "csv")
        new = _records((out / name).read_text(), "csv")
        assert [{k: r[k] for k in o} for r, o in zip(new, old, strict=True)] == old, name


def test_downgrade_goes_back_losslessly_and_refuses_what_0002_cannot_hold(release_db: str) -> None:
    url = release_db
    before = _dump(url)
    migrate.upgrade(url)
    migrate.downgrade(url, "0002")
    assert migrate.current_revision(url) == "0002"
    after = _dump(url)
    for table in ("jobs", "problems", "steps", "model_calls", "selections", "solutions"):
        assert after[table] == before[table], table

    # Reviews come back under new ids (those of their outputs); nothing refers to a review's id.
    def reviews(dump: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        rows = [{k: v for k, v in r.items() if k != "id"} for r in dump["reviews"]]
        return sorted(rows, key=lambda r: r["step_id"])

    assert reviews(after) == reviews(before) and len(after["reviews"]) > 0

    migrate.upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        models = [{"name": n, "url": f"http://{n.lower()}"} for n in ("A", "B", "C")]
        conn.execute(
            sa.text(
                "INSERT INTO jobs (name, strategy, params, models, status, created_at) "
                "VALUES ('three', 'mutual', '{}', :models, 'finished', CURRENT_TIMESTAMP)"
            ),
            {"models": json.dumps(models)},
        )
    engine.dispose()
    snapshot = _dump(url)
    from cli.main import app

    result = CliRunner().invoke(app, ["db", "downgrade", "0002"])
    assert result.exit_code == 2
    assert "refusing to downgrade" in result.stderr and "A, B, C" in result.stderr
    assert migrate.current_revision(url) == migrate.head_revision(url)
    assert _dump(url) == snapshot


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(n)


def _dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the schema the database is at (reflected: typed), by primary key."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        out = {
            name: [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(*table.primary_key))]
            for name, table in meta.tables.items()
            if name != "alembic_version"
        }
    engine.dispose()
    return out


def _records(text: str, fmt: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


def test_a_new_job_resumed_from_a_migrated_one_pays_for_no_call(
    tmp_path: Path, redis_url: str, settings_env: pytest.MonkeyPatch
) -> None:
    """`--resume-from` across the old and the new shapes: jobs of the new code, resumed from the
    release's mutual and mutual-consistency jobs, send every request those sent, so every call is
    copied. No model server runs at all, and a call that were not reused would fail the problem."""
    from tests.support import celery_worker, rstar, service_env, wait_until

    path = tmp_path / "jobs.sqlite"
    shutil.copy(RELEASE / "jobs.sqlite", path)
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    old = {j["id"]: j for j in JOBS}
    env = service_env(
        url, redis_url, RSTAR_SERVER_KIND="tgi", RSTAR_MAX_RETRIES="0", RSTAR_CHECK_MODELS="false"
    )
    urls = [old[3]["model_a_url"], old[3]["model_b_url"]]
    new: dict[int, int] = {}
    for job_id in (3, 4):
        sub = rstar(
            ["submit", str(RELEASE / "inputs" / "gsm6.jsonl"), "--strategy", old[job_id]["strategy"],
             "--model-a", urls[0], "--model-b", urls[1], "--resume-from", str(job_id)],
            env,
        )  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        new[job_id] = int(sub.stdout.strip())
    from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

    engine = sa.create_engine(url)

    def finished() -> bool:
        with engine.connect() as conn:
            done = conn.execute(
                sa.text("SELECT COUNT(*) FROM jobs WHERE id IN (:a, :b) AND finished_at IS NOT NULL"),
                {"a": new[3], "b": new[4]},
            ).scalar_one()
        return done == 2

    with celery_worker(env, [CONTROL_QUEUE, *(queue_for_endpoint(u) for u in urls)], log=tmp_path / "w.log"):
        wait_until(finished, timeout=120, what="the resumed jobs")
    with engine.connect() as conn:
        for job_id, copy in new.items():
            calls = conn.execute(
                sa.text(
                    "SELECT c.reused_from_id FROM model_calls c JOIN problems p ON p.id = c.problem_id "
                    "WHERE p.job_id = :j"
                ),
                {"j": copy},
            ).all()
            assert len(calls) == sum(old[job_id]["model_calls"].values()) and all(
                c[0] is not None for c in calls
            )
            answers = conn.execute(
                sa.text(
                    "SELECT item_id, status, final_answer FROM problems WHERE job_id = :j ORDER BY item_id"
                ),
                {"j": copy},
            ).all()
            golden = _records((GOLDEN / f"results-{job_id}-{old[job_id]['name']}.jsonl").read_text(), "jsonl")
            assert [tuple(a) for a in answers] == sorted(
                (r["id"], r["status"], r["final_answer"]) for r in golden
            )
            # A copied call's texts are stored once too: its outputs' texts are its sequences.
            stored = conn.execute(
                sa.text(
                    "SELECT o.text, o.text_seq FROM outputs o JOIN problems p ON p.id = o.problem_id "
                    "WHERE p.job_id = :j"
                ),
                {"j": copy},
            ).all()
            assert stored and all(text is None and seq is not None for text, seq in stored)
    engine.dispose()
