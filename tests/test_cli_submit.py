"""`rstar submit` refuses bad input with the line and the field, exit code 2, and writes nothing."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli import problems_file
from cli.main import app
from db.models import Job, Problem, Step
from db.session import session_scope
from rstar.inputs import Overlong, ProblemReader
from rstar.roster import ModelEntry
from rstar.strategies import STRATEGIES
from tests.support import REPO, service_env

GOOD = json.dumps({"question": "What is 2 + 3?", "answer": "#### 5"})

CASES = {
    "not json": ([GOOD, "{not json"], "line 2", None),
    "not an object": ([GOOD, "[1, 2]"], "line 2", None),
    "missing question": ([GOOD, json.dumps({"answer": "4"})], "line 2", "question"),
    "empty question": ([json.dumps({"question": "   "}), GOOD], "line 1", "question"),
    "question not a string": ([json.dumps({"question": 7})], "line 1", "question"),
    "duplicate id": (
        [json.dumps({"id": "a", "question": "q1?"}), GOOD, json.dumps({"id": "a", "question": "q2?"})],
        "line 3",
        "id",
    ),
    "line over 64 KiB": ([GOOD, json.dumps({"question": "x" * 70_000})], "line 2", None),
    "empty file": ([], None, None),
    "only blank lines": (["", "   ", ""], None, None),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_refused_and_nothing_is_written(
    case: str, migrated: str, settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lines, where, field = CASES[case]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    # A broker that does not exist: validation must fail before anything else is touched.
    settings_env.setenv("RSTAR_BROKER_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(app, ["submit", str(path), "--model-a", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert "nothing was submitted" in message
    if where:
        assert where in message
    else:
        assert "empty" in message.lower() or "no problems" in message.lower()
    if field:
        assert f"'{field}'" in message or f'"{field}"' in message or f"field {field}" in message
    with session_scope(migrated) as s:
        for model in (Job, Problem, Step):
            assert s.scalar(select(func.count()).select_from(model)) == 0


TYPED_CASES = {
    "a reference the type cannot read": (
        json.dumps([{"problem": "q1?", "solution": "true"}, {"problem": "q2?", "solution": "maybe"}]),
        ["--type", "yes-no"],
        "record 2, field 'solution': no yes-no answer in it",
    ),
    "an array that does not end": ('[{"problem": "q1?"},', [], "not valid JSON"),
    "an array with a number in it": ('[{"problem": "q1?"}, 3]', [], "record 2: must be a JSON object"),
    "an unknown type": (GOOD + "\n", ["--type", "essay"], "unknown problem type 'essay'"),
    "a worked solution without its boxed answer": (
        json.dumps({"question": "q?", "answer": "First we add.\nThen we divide."}) + "\n",
        ["--type", "latex"],
        "line 1, field 'answer': no latex answer in it",
    ),
    "a renamed field that is not there": (
        GOOD + "\n",
        ["--question-field", "prompt"],
        "line 1, field 'prompt'",
    ),
}


@pytest.mark.parametrize("case", TYPED_CASES, ids=list(TYPED_CASES))
def test_typed_and_array_input_is_refused_with_the_record_and_the_files_field(
    case: str, migrated: str, settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    content, args, want = TYPED_CASES[case]
    path = tmp_path / "in.json"
    path.write_text(content, encoding="utf-8")
    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    settings_env.setenv("RSTAR_BROKER_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(app, ["submit", str(path), *args, "--model-a", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert want in result.stderr
    with session_scope(migrated) as s:
        for model in (Job, Problem, Step):
            assert s.scalar(select(func.count()).select_from(model)) == 0


def test_unreadable_file_and_missing_endpoint(settings_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["submit", str(tmp_path / "nope.jsonl"), "--model-a", "http://x:1"])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    no_endpoint = runner.invoke(app, ["submit", str(tmp_path / "ok.jsonl")])
    assert no_endpoint.exit_code == 2 and "RSTAR_MODEL_A_URL" in no_endpoint.stderr


def test_schema_behind_is_reported(settings_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    settings_env.setenv("RSTAR_DATABASE_URL", sqlite_url)
    result = CliRunner().invoke(app, ["submit", str(tmp_path / "ok.jsonl"), "--model-a", "http://x:1"])
    assert result.exit_code == 2
    assert "rstar db upgrade" in result.stderr


def test_bad_strategy_parameter_is_refused(
    migrated: str, settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    result = CliRunner().invoke(
        app, ["submit", str(tmp_path / "ok.jsonl"), "--model-a", "http://x:1", "--max-rounds", "99"]
    )
    assert result.exit_code == 2 and "max_rounds" in result.stderr
    with session_scope(migrated) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_param_sets_any_strategy_parameter(app_env: object, migrated: str, tmp_path: Path) -> None:
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    args = [
        "submit",
        "--no-check-models",  # no server at http://x:1: the job waits in its queues
        str(tmp_path / "ok.jsonl"),
        "--model-a",
        "http://x:1",
        "--strategy",
        "mutual-consistency",
    ]
    result = CliRunner().invoke(app, [*args, "--param", "margin=3", "--param", "greedy_first=false"])
    assert result.exit_code == 0, result.output
    with session_scope(migrated) as s:
        job = s.scalars(select(Job)).one()
        assert job.params["margin"] == 3 and job.params["greedy_first"] is False
        assert job.params["cut"] == 0.5  # the others keep their defaults


@pytest.mark.parametrize(
    ("param", "message"),
    [("margin", "expected NAME=VALUE"), ("nope=1", "takes no nope"), ("margin=lots", "margin must be")],
)
def test_bad_param_is_refused(
    migrated: str, settings_env: pytest.MonkeyPatch, tmp_path: Path, param: str, message: str
) -> None:
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    args = [
        "submit",
        str(tmp_path / "ok.jsonl"),
        "--model-a",
        "http://x:1",
        "--strategy",
        "mutual-consistency",
    ]
    result = CliRunner().invoke(app, [*args, "--param", param])
    assert result.exit_code == 2 and message in result.stderr
    with session_scope(migrated) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_bad_rosters_are_refused_with_the_reason_and_nothing_is_written(
    app_env: object, migrated: str, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> None:
    from tests.fakeserver import FakeInferenceServer

    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    submit = ["submit", str(tmp_path / "ok.jsonl")]
    with FakeInferenceServer(lambda request: "42") as up:
        cases = [
            (["--model", f"A{up.url}"], "expected NAME=URL"),
            (["--model", f"1st={up.url}"], "the name must be a letter"),
            (["--model", f"a.b={up.url}"], "the name must be a letter"),
            (["--model", "A=ftp://host"], "not an http(s) URL"),
            (["--model", "A=http://host:port"], "port that is not a number"),
            (["--model", f"A={up.url}", "--model", f"A={up.url}"], "'A' is given twice"),
            (["--model-a", up.url, "--model", f"A={up.url}"], "'A' is given twice"),
            (["--model", f"A={up.url}", "--strategy", "mutual"], "needs at least 2 models"),
            (
                ["--model", f"A={up.url}", "--model", "B=http://127.0.0.1:9"],
                "model B at http://127.0.0.1:9 does not answer",
            ),
        ]
        for args, says in cases:
            result = CliRunner().invoke(app, [*submit, *args])
            assert result.exit_code == 2, (args, result.output)
            assert says in result.stderr and "Traceback" not in result.output, (args, result.stderr)
        settings_env.setenv("RSTAR_MODELS", f"A={up.url},B=nonsense")
        result = CliRunner().invoke(app, submit)
        assert result.exit_code == 2 and "RSTAR_MODELS" in result.stderr, result.stderr
    with session_scope(migrated) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_the_roster_is_stored_in_order_and_a_longer_one_is_cut_to_what_the_strategy_uses(
    app_env: object, migrated: str, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> None:
    from tests.fakeserver import FakeInferenceServer

    settings_env.setenv("RSTAR_DATABASE_URL", migrated)
    (tmp_path / "ok.jsonl").write_text(GOOD + "\n")
    with FakeInferenceServer(lambda request: "42") as a, FakeInferenceServer(lambda request: "42") as b:
        roster = ["--model", f"C={a.url}", "--model", f"A=http://user:secret@{b.url[7:]}"]
        three = CliRunner().invoke(
            app, ["submit", str(tmp_path / "ok.jsonl"), *roster, "--strategy", "self-consistency"]
        )
        cot = CliRunner().invoke(app, ["submit", str(tmp_path / "ok.jsonl"), *roster, "--strategy", "cot"])
    assert three.exit_code == 0 and cot.exit_code == 0, (three.output, cot.output)
    assert "not used: A" in cot.stderr and "credentials in the endpoint URLs were not stored" in cot.stderr
    with session_scope(migrated) as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert [m["name"] for m in jobs[0].models] == ["C", "A"]
        assert jobs[0].models[1]["url"] == b.url and "secret" not in json.dumps(jobs[0].models)
        assert [m["name"] for m in jobs[1].models] == ["C"]
        keys = [
            st.key
            for st in s.scalars(
                select(Step)
                .where(Step.problem_id.in_(select(Problem.id).where(Problem.job_id == jobs[0].id)))
                .order_by(Step.id)
            )
        ]
        assert keys[:3] == ["s1.generate.C", "s2.generate.A", "s3.generate.C"]


def test_declared_metadata_is_kept_and_given_back(app_env: object, migrated: str, tmp_path: Path) -> None:
    """A line's "meta" (a data set's own fields) is stored with its problem; `results` and `export`
    give it back (an object in JSONL, its JSON text in CSV) and `show` prints it."""
    meta = {"level": 5, "subject": "Algebra", "note": "=1+1"}
    lines = [json.dumps({"id": "m", "question": "What is 2 + 3?", "answer": "5", "meta": meta}), GOOD]
    (tmp_path / "meta.jsonl").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(
        app, ["submit", "--no-check-models", str(tmp_path / "meta.jsonl"), "--model-a", "http://x:1"]
    )
    assert result.exit_code == 0, result.output
    job = result.stdout.split()[0]
    with session_scope(migrated) as s:
        assert [p.meta for p in s.scalars(select(Problem).order_by(Problem.line))] == [meta, None]

    rows = [json.loads(line) for line in runner.invoke(app, ["results", job]).stdout.splitlines()]
    assert [r["meta"] for r in rows] == [meta, None]
    exported = [json.loads(line) for line in runner.invoke(app, ["export", job]).stdout.splitlines()]
    assert [r["meta"] for r in exported] == [meta, None]
    for command in (["results", job, "--format", "csv"], ["export", job, "--format", "csv"]):
        table = list(csv.DictReader(io.StringIO(runner.invoke(app, command).stdout)))
        assert [r["meta"] for r in table] == [json.dumps(meta), ""], command
    shown = runner.invoke(app, ["show", job, "m"], env={"COLUMNS": "200"}).stdout
    assert 'meta: {"level": 5, "subject": "Algebra", "note": "=1+1"}' in shown


# -- a file read in bounded memory, twice ---------------------------------------------------------


def test_file_lines_report_a_long_line_by_its_length_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"question": "a?"}\r\n' + b"x" * 100 + b"\n\n" + b"y" * 10 + b"\n" + b"last")
    lines = list(problems_file.file_lines(path, max_bytes=1000, max_line_bytes=20))
    assert lines == [b'{"question": "a?"}\r', Overlong(100), b"", b"y" * 10, b"last"]
    with pytest.raises(problems_file.TooLarge):
        list(problems_file.file_lines(path, max_bytes=50, max_line_bytes=20))
    endless = tmp_path / "endless"
    endless.write_bytes(b"0" * 200_000)  # no newline at all: read in chunks until the byte limit
    with pytest.raises(problems_file.TooLarge):
        list(problems_file.file_lines(endless, max_bytes=100_000, max_line_bytes=100))


def test_a_file_changed_between_the_two_passes_is_refused_and_nothing_is_written(
    app_env: object, migrated: str, tmp_path: Path
) -> None:
    from tasks.submit import submit_job
    from workers.settings import get_settings

    path = tmp_path / "in.jsonl"
    path.write_text(
        "\n".join(json.dumps({"id": i, "question": f"What is {i} + 1?"}) for i in range(2500)) + "\n"
    )
    count = problems_file.check(path, ProblemReader(), max_bytes=10**8)
    assert count == 2500
    with path.open("a") as f:  # one more line after the check
        f.write(json.dumps({"question": "And 2 + 2?"}) + "\n")
    again = problems_file.read_again(
        path, ProblemReader(check_duplicates=False), max_bytes=10**8, expected=count
    )
    with pytest.raises(problems_file.FileChanged, match="2501 problems"):
        submit_job(
            settings=get_settings(), name="x", strategy_name="cot", params={}, source=str(path),
            models=[ModelEntry("A", "http://127.0.0.1:9")], problems=again, check_models=False,
        )  # fmt: skip
    with session_scope(migrated) as s:
        for model in (Job, Problem, Step):
            assert s.scalar(select(func.count()).select_from(model)) == 0  # the batches written rolled back


def test_a_pipe_is_submitted_whole(migrated: str, redis_url: str) -> None:
    """/dev/stdin cannot be read twice: it is copied on the first pass. Every problem is stored;
    the first window's are started (64: twice the 32 slots a server not asked is counted), the
    rest wait their turn."""
    data = "\n".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + 1?"}) for i in range(1200)) + "\n"
    args = ["submit", "/dev/stdin", "--no-check-models", "--model-a", "http://x:1", "--strategy", "cot"]
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], input=data, env=service_env(migrated, redis_url),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with session_scope(migrated) as s:
        assert s.scalar(select(func.count()).select_from(Problem)) == 1200
        lines = s.scalars(select(Problem.line).order_by(Problem.id)).all()
        started = s.scalars(select(Problem.line).join(Step).order_by(Problem.id)).all()
        statuses = s.execute(select(Problem.status, func.count()).group_by(Problem.status)).all()
    assert lines == list(range(1, 1201))
    assert started == list(range(1, 65))  # one first step each, in input order
    assert dict(statuses) == {"pending": 64, "waiting": 1136}
    assert "window: 64 problems at once (2 x the 32 in-flight slots of its servers" in done.stderr


def test_strategies_lists_every_parameter_with_its_range_and_default() -> None:
    result = CliRunner().invoke(app, ["strategies", "self-consistency"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.output.splitlines()]
    assert "samples an integer from 1 to 64 8 solutions sampled per problem (k)" in lines
    assert "greedy_first true or false false the first sample greedy (temperature 0), as cot's" in lines
    every = CliRunner().invoke(app, ["strategies"], env={"COLUMNS": "200"})
    assert every.exit_code == 0 and all(f"{name}:" in every.output for name in STRATEGIES)
    unknown = CliRunner().invoke(app, ["strategies", "tot"])
    assert unknown.exit_code == 2 and "unknown strategy 'tot'" in unknown.stderr
