"""What users type and models write, shown by the commands: never as Rich markup (a traceback), never
with live control characters (a model's ESC sequences rewriting an auditor's terminal), never as
Python's "None"; and URLs that would strand a job refused at submit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from cli.main import app
from db.models import Job, Output, Problem, Step
from db.session import session_scope
from tests.support import REPO
from workers.settings import get_settings

ESC = "\x1b"
HOSTILE = f"2 + 2 is{ESC}[2K{ESC}]0;pwned\x07{ESC}[31m 5\r"
"""Erase the line, retitle the window, turn the text red, return the cursor: what a model may write."""


@pytest.fixture
def cli(migrated: str, settings_env: pytest.MonkeyPatch, redis_url: str) -> str:
    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    settings_env.setenv("RSTAR_BROKER_URL", redis_url)
    settings_env.setenv("RSTAR_CHECK_MODELS", "false")  # no server: the steps wait in their queues
    get_settings.cache_clear()
    return migrated


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout + result.stderr


def _problems(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "q[/]1", "question": f"What is 2 + 2?{HOSTILE}", "answer": "4"}) + "\n")
    return path


def test_names_paths_and_params_that_look_like_markup_are_shown_as_typed(cli: str, tmp_path: Path) -> None:
    path = _problems(tmp_path)
    code, out = run("submit", "[/]/x.jsonl", "--model-a", "http://127.0.0.1:1")
    assert code == 2 and "cannot read [/]/x.jsonl" in out
    code, out = run("submit", str(path), "--param", "[/]=1", "--model-a", "http://127.0.0.1:1")
    assert code == 2 and "takes no [/]; it takes" in out and "max_rounds" in out  # the valid names
    code, out = run("submit", str(path), "--name", "[/] [bold]x", "--model-a", "http://127.0.0.1:1")
    assert code == 0 and ": 1 problem enqueued on" in out, out
    with session_scope(cli) as s:
        job_id = s.scalar(select(Job.id).where(Job.name == "[/] [bold]x"))
    code, out = run("status", str(job_id))
    assert code == 0 and "([/] [bold]x, mutual" in out


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1", "is not a URL"),
        ("http://gpu:8000/?model=x", "has a query or a fragment"),
        ("http://gpu:8000/#x", "has a query or a fragment"),
    ],
)
def test_a_url_that_would_strand_the_job_is_refused(cli: str, tmp_path: Path, url: str, why: str) -> None:
    code, out = run("submit", str(_problems(tmp_path)), "--model-a", url)
    assert code == 2 and why in out and "nothing was submitted" in out
    with session_scope(cli) as s:
        assert s.scalar(select(Job.id)) is None


def test_control_characters_from_a_question_and_a_model_are_shown_escaped(cli: str, tmp_path: Path) -> None:
    code, out = run(
        "submit", str(_problems(tmp_path)), "--name", f"run{ESC}[2J", "--model-a", "http://127.0.0.1:1"
    )
    assert code == 0, out
    with session_scope(cli) as s:
        job_id = s.scalar(select(Job.id))
        problem = s.scalar(select(Problem))
        step = s.scalar(select(Step).where(Step.key == "r1.generate.A"))
        assert problem is not None and step is not None
        # A model's solution, as if a worker had recorded it.
        payload = {"steps": [HOSTILE], "answer_raw": HOSTILE}
        s.add(Output(problem_id=problem.id, step_id=step.id, round=1, model="A", kind="generate",
                     stored_text=HOSTILE, payload=payload, answer="5"))  # fmt: skip
        s.execute(update(Step).where(Step.id == step.id).values(status="done"))
    for args in (("show", str(job_id), "q[/]1"), ("status", str(job_id))):
        code, out = run(*args)
        assert code == 0, out
        assert ESC not in out and "\x07" not in out and "\r" not in out, args
    code, out = run("show", str(job_id), "q[/]1")
    assert "\\x1b[2K\\x1b]0;pwned\\x07\\x1b[31m 5\\r" in out  # every character there, visibly
    # Nothing known is "-", not Python's None.
    assert "final answer: -" in out and "rounds: -" in out and "None" not in out
    code, out = run("report", str(job_id), "-o", str(tmp_path / "report"))
    assert code == 0, out
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert ESC not in markdown and "run\\x1b[2J" in markdown


def test_status_watch_in_a_pipe_shows_the_job_as_it_moves_with_its_age(
    cli: str, tmp_path: Path, redis_url: str
) -> None:
    import subprocess
    from datetime import timedelta

    from db.models import utcnow
    from tests.support import service_env

    code, out = run("submit", str(_problems(tmp_path)), "--model-a", "http://127.0.0.1:1")
    assert code == 0, out
    with session_scope(cli) as s:
        job_id = s.scalar(select(Job.id))
        s.execute(update(Job).values(created_at=utcnow() - timedelta(hours=1, minutes=2)))
    env = {**service_env(cli, redis_url), "RSTAR_CHECK_MODELS": "false"}
    args = [sys.executable, "-m", "cli.main", "status", str(job_id), "--watch", "--interval", "0.2"]
    # The job never finishes (no worker): --watch runs until it is stopped, and shows it meanwhile.
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        subprocess.run(args, env=env, cwd=REPO, capture_output=True, timeout=15)
    shown = (stopped.value.stdout or b"").decode()
    assert f"job {job_id} (" in shown and "pending" in shown
    assert " 1:02:" in shown  # its age since submit, not 0:00:00


HUGE = str(2**63)
"""One more than a database row id can be: the driver overflows on it."""


@pytest.mark.parametrize(
    "args",
    [
        ("status", HUGE), ("show", HUGE, "1"), ("results", HUGE), ("cancel", HUGE), ("resume", HUGE),
        ("retry", HUGE), ("report", HUGE), ("export", HUGE), ("status", "-1"), ("show", "[/]", "1"),
        ("submit", "/dev/null", "--resume-from", HUGE),
    ],
)  # fmt: skip
def test_every_command_refuses_ids_no_row_can_have_without_a_traceback(
    cli: str, args: tuple[str, ...]
) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def test_an_input_without_end_is_refused_before_it_fills_the_memory(
    cli: str, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("RSTAR_MAX_INPUT_BYTES", "100000")
    get_settings.cache_clear()
    code, out = run("submit", "/dev/zero", "--model-a", "http://127.0.0.1:1")
    assert code == 2 and "larger than 100,000 bytes" in out and "nothing was submitted" in out


def test_every_viewer_route_answers_huge_ids_and_garbage_with_a_page_not_a_500(cli: str) -> None:
    from fastapi.testclient import TestClient

    from web.app import create_app

    client = TestClient(create_app(database_url=cli, allow_control=True), raise_server_exceptions=False)
    for path in (f"/jobs/{HUGE}", f"/jobs/{HUGE}/progress", f"/jobs/{HUGE}/plots/accuracy.png",
                 f"/jobs/{HUGE}/problems/x", f"/compare?a={HUGE}&b=1", "/compare?a=[/]&b=1",
                 "/jobs/-1", f"/jobs/1/problems/{'%1b[2J' * 3}", "/?sort=[/]&order=%00"):  # fmt: skip
        response = client.get(path)
        assert response.status_code in (200, 400, 404, 422), (path, response.status_code)
    pressed = client.post(f"/jobs/{HUGE}/cancel", headers={"HX-Request": "true"})
    assert pressed.status_code == 404
