"""`rstar report` on jobs that are not there, and on a finished job written straight to the tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from db.models import Job, JobStatus, ModelCall, Output, Problem, Step, utcnow
from db.session import session_scope


def test_unknown_job_is_a_usage_error(sqlite_url: str, settings_env: pytest.MonkeyPatch) -> None:
    from db import migrate

    migrate.upgrade(sqlite_url)
    settings_env.setenv("RSTAR_DATABASE_URL", sqlite_url)
    result = CliRunner().invoke(app, ["report", "999"])
    assert result.exit_code == 2 and "no job 999" in result.stderr


def _hand_job(sqlite_url: str) -> int:
    """A finished cot job of three problems written straight to the tables: "$1,000.00" equals
    the reference 1000; "7" does not equal 8; one failed."""
    from db import migrate

    migrate.upgrade(sqlite_url)
    now = utcnow()
    with session_scope(sqlite_url) as s:
        job = Job(
            name="hand",
            strategy="cot",
            params={"temperature": 0.0},
            models=[{"name": "A", "url": "a"}],
            status=JobStatus.FINISHED,
            created_at=now,
            finished_at=now,
        )
        s.add(job)
        s.flush()
        # Three problems: "$1,000.00" equals the reference 1000; "7" does not equal 8; one failed.
        for item, final, ref, status in (
            ("a", "$1,000.00", "1000", "answered"),
            ("b", "7", "8", "answered"),
            ("c", None, "3", "failed"),
        ):
            p = Problem(
                job_id=job.id,
                item_id=item,
                line=1,
                question="q",
                reference_answer=ref,
                status=status,
                final_answer=final,
                started_at=now,
                finished_at=now,
            )
            s.add(p)
            s.flush()
            step = Step(
                problem_id=p.id, key="r1.generate.A", kind="generate", model="A", round=1, status="done"
            )
            s.add(step)
            s.flush()
            call = ModelCall(
                step_id=step.id,
                problem_id=p.id,
                attempt=1,
                endpoint="a",
                request={},
                outcome="ok",
                prompt_tokens=100,
                completion_tokens=20 if item != "c" else None,
                latency_ms=500.0,
            )
            s.add(call)
            s.flush()
            if status == "answered":
                s.add(
                    Output(
                        problem_id=p.id,
                        step_id=step.id,
                        model_call_id=call.id,
                        round=1,
                        model="A",
                        kind="generate",
                        payload={"steps": ["x"], "answer_raw": final, "structured": True},
                        answer=final,
                    )
                )
        return job.id


def test_report_of_a_cot_job_by_hand(
    sqlite_url: str, settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_env.setenv("RSTAR_DATABASE_URL", sqlite_url)
    job_id = _hand_job(sqlite_url)
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["report", str(job_id), "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = (out / "summary.csv").read_text().splitlines()
    head, row = summary[0].split(","), summary[1].split(",")
    got = dict(zip(head, row, strict=True))
    assert (got["correct"], got["judged"], got["answered"], got["failed"]) == ("1", "3", "2", "1")
    assert float(got["calls_per_problem"]) == 1.0 and float(got["generated_tokens_per_problem"]) == 40 / 3
    assert float(got["model_s_per_problem"]) == 0.5
    assert "33.3% (1/3)" in (out / "report.md").read_text()


@pytest.mark.parametrize("columns", [60, 80, 120, 250])
def test_tables_break_no_word_at_any_terminal_width(
    sqlite_url: str, settings_env: pytest.MonkeyPatch, columns: int
) -> None:
    """Rich folds a column narrower than its words: at 80 columns the summary's headers read
    "unanswere d". Every word of every heading and cell is printed whole, and no line is wider
    than the terminal."""
    from cli.report import SUMMARY_HEAD, summary_cells
    from db.reports import load_report
    from db.session import session_scope

    settings_env.setenv("RSTAR_DATABASE_URL", sqlite_url)
    job_id = _hand_job(sqlite_url)
    result = CliRunner().invoke(app, ["report", str(job_id)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    words = set(result.stdout.replace("│", " ").replace("┃", " ").split())
    with session_scope(sqlite_url) as s:
        cells = summary_cells(load_report(session=s, job_ids=[job_id], max_rounds_limit=10).jobs[0])
    expected = {w for text in (*SUMMARY_HEAD, *cells) for w in text.split()}
    assert expected <= words, sorted(expected - words)
