"""The README's first command for real: `rstar demo` with SmolLM2-135M behind two llama-cpp-python
servers, a real Celery worker, Flower, Redis and SQLite. Slow (a minute or two): it is the proof that
the whole stack runs with real model output."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import ModelCall, Output, Problem, Selection, Step
from db.session import session_scope
from rstar.records import expanded_response
from tests.support import (
    REPO,
    gsm8k_rows,
    require_real_model,
    rstar,
    service_env,
    wait_until,
    write_jsonl,
)


@pytest.mark.realmodel
def test_demo_solves_three_problems_with_real_models(redis_url: str, tmp_path: Path) -> None:
    require_real_model()
    db_url = f"sqlite:///{tmp_path}/demo.db"
    env = service_env(db_url, redis_url)
    run = rstar(
        ["demo", "--problems", "3", "--max-rounds", "2", "--database-url", db_url, "--timeout", "1200"],
        env,
        timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "accuracy" in run.stdout and "Flower: http://127.0.0.1:" in run.stdout

    with session_scope(db_url) as s:
        problems = s.scalars(select(Problem)).all()
        assert len(problems) == 3
        for p in problems:
            assert p.status in ("answered", "failed")
            if p.status == "failed":
                assert p.error  # failed with a reason
            else:
                assert s.scalar(select(Selection).where(Selection.problem_id == p.id)) is not None
        calls = s.scalars(select(ModelCall)).all()
        ok = [c for c in calls if c.outcome == "ok"]
        assert ok, "no successful model call"
        for c in ok:
            # The model's own text, as the llama.cpp server returned it.
            assert c.server_kind == "llama-cpp"
            assert c.response is not None and str(c.response.get("id", "")).startswith("chatcmpl-")
            # Stored once: the response keeps everything but the text, which response_text holds.
            assert c.response["choices"][0]["message"]["content"] is None
            received = expanded_response(c.response, c.response_text, c.sequences)
            assert received is not None and received["choices"][0]["message"]["content"] == c.response_text
            assert c.response_text and c.completion_tokens and c.completion_tokens > 0
            assert c.request["response_format"]["type"] == "json_object"
        assert len({c.response_text for c in ok}) > 1  # not one canned reply
        done_steps = s.scalars(select(Step).where(Step.status == "done", Step.kind != "select")).all()
        outputs = len(s.scalars(select(Output)).all())
        assert outputs == len(done_steps)  # every finished model step left its solution or review
    assert (REPO / "cli" / "data" / "gsm8k_sample.jsonl").exists()


@pytest.mark.realmodel
def test_readme_local_path_answers_without_timeouts(redis_url: str, tmp_path: Path) -> None:
    """The README's local path as a user runs it: `rstar serve-local` (two llama-cpp-python
    servers, each decoding one request at a time), its printed exports, `rstar submit` of 8
    problems, `rstar worker` with no flags. The worker assumed 32 in flight per server and most
    calls waited at the server until they timed out; it now sizes itself from the servers."""
    require_real_model()
    db_url = f"sqlite:///{tmp_path}/local.db"
    env = service_env(db_url, redis_url)
    serve = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve-local"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker: subprocess.Popen[bytes] | None = None
    worker_log = tmp_path / "worker.log"
    try:
        assert serve.stdout is not None
        exports: dict[str, str] = {}
        for line in serve.stdout:  # it prints the exports once both servers answer
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                exports[key] = value
            if "Press Ctrl-C" in line:
                break
        assert set(exports) == {"RSTAR_MODEL_A_URL", "RSTAR_MODEL_B_URL"}, exports
        env.update(exports)
        assert rstar(["db", "upgrade"], env).returncode == 0
        problems = write_jsonl(tmp_path / "p.jsonl", gsm8k_rows(8))
        submit = rstar(["submit", str(problems), "--max-rounds", "1"], env, timeout=300)
        assert submit.returncode == 0, submit.stderr
        with worker_log.open("wb") as log:  # a file: a pipe nobody reads would stall its logging
            worker = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker"], env=env, cwd=REPO, stdout=log, stderr=log
            )

        def finished() -> bool:
            with session_scope(db_url) as s:
                return all(p.status in ("answered", "failed") for p in s.scalars(select(Problem)).all())

        wait_until(finished, timeout=1800, interval=2.0, what="the 8 problems to finish")
        with session_scope(db_url) as s:
            problems_done = s.scalars(select(Problem)).all()
            outcomes = Counter(c.outcome for c in s.scalars(select(ModelCall)).all())
            assert [p.status for p in problems_done] == ["answered"] * 8
            assert set(outcomes) == {"ok"}, outcomes  # no call timed out, none retried
    finally:
        for proc in (worker, serve):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    sizing = next(line for line in worker_log.read_text().splitlines() if line.startswith("worker: "))
    # One in flight per server, as they decode: not 32 assumed.
    assert sizing.count("1 for http://127.0.0.1:") == 2 and "assumed" not in sizing, sizing
