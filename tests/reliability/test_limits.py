"""Limits on what a job may ask for: question length, problems per job (both configurable) and
rounds. Each is refused at submit with a clear message, exit code 2, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.main import app
from db.models import Job, Problem, Step
from db.session import session_scope
from workers.settings import get_settings


def _rows(tmp_path: Path, questions: list[str]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions), encoding="utf-8")
    return path


CASES = {
    "question too long": (
        {"RSTAR_MAX_QUESTION_CHARS": "100"},
        ["What is 1 + 1?", "x" * 101],
        [],
        "line 2, field 'question': too long: 101 characters, the limit is 100",
    ),
    "too many problems": (
        {"RSTAR_MAX_PROBLEMS_PER_JOB": "3"},
        ["q1?", "q2?", "q3?", "q4?"],
        [],
        "line 4: more than 3 problems; split the file",
    ),
    "too many rounds": (
        {},
        ["q1?"],
        ["--max-rounds", "11"],
        "max_rounds must be an integer from 1 to 10, got 11",
    ),
    "rounds over a configured limit": (
        {"RSTAR_MAX_ROUNDS_LIMIT": "2"},
        ["q1?"],
        ["--max-rounds", "3"],
        "max_rounds must be an integer from 1 to 2, got 3",
    ),
    "zero rounds": ({}, ["q1?"], ["--max-rounds", "0"], "max_rounds must be an integer from 1 to 10, got 0"),
    "resume from a job that does not exist": ({}, ["q1?"], ["--resume-from", "999"], "there is no job 999"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_limits_are_refused_with_a_clear_message(
    case: str, postgres_url: str, cli_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env, questions, args, message = CASES[case]
    for key, value in env.items():
        cli_env.setenv(key, value)
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["submit", str(_rows(tmp_path, questions)), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr
    with session_scope(postgres_url) as s:
        for model in (Job, Problem, Step):
            assert s.scalar(select(func.count()).select_from(model)) == 0
