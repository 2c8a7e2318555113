"""Loud failure: a local model server that exits is reported at once, with how it exited and the
last lines of its log, by `LocalServerSet.check()`, `rstar serve-local` and `rstar demo`; and a
worker says once, not per step, that an endpoint is not answering.

The first tests run fake servers (tests.fakeserver) through the real LocalServers machinery, given
as its `python`, that crash the way llama-cpp-python's server did on a machine its build did not
fit: on the first decode, by SIGSEGV. The realmodel tests start the real servers and kill one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select

from cli.demo import _check_outcome
from db.calls import new_call, record_call
from db.jobs import create_job, queued_steps, start_problems
from db.models import CallOutcome, Job, ModelCall
from db.session import session_scope
from localmodels.servers import (
    LocalServer,
    LocalServers,
    LocalServerSet,
    ServerExitedError,
    describe_exit,
    free_port,
    stop_group,
)
from rstar.strategies.base import StepSpec
from rstar.types import ChatMessage, ModelRequest, ProblemInput, StepKind
from tests.fakeserver import FakeInferenceServer
from tests.support import (
    REPO,
    celery_worker,
    gsm8k_rows,
    require_real_model,
    rstar,
    service_env,
    wait_until,
    write_jsonl,
)
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint
from workers.client import ModelClient
from workers.errors import UnavailableError

REQUEST = ModelRequest(messages=(ChatMessage("user", "What is 2 + 3?"),), temperature=0.0, max_tokens=4)

# Stands in for `python -m llama_cpp.server ... --port P ...`: answers GET /v1/models (so it counts
# as ready), and on its first chat completion reads address 0, a real segmentation fault in the
# thread that decodes (os.kill from that thread could let the reply out before the signal lands).
# `at_start`: killed by `signal` before it listens.
FAKE_SERVER = """
import ctypes, os, signal, sys, threading
sys.path.insert(0, {repo!r})
from tests.fakeserver import FakeInferenceServer

def decode(request):
    print("decoding the first request", flush=True)
    ctypes.string_at(0)
    return ""

port = int(sys.argv[sys.argv.index("--port") + 1])
if {at_start!r}:
    print("loading the model: this CPU lacks an instruction", flush=True)
    os.kill(os.getpid(), signal.{signal})
with FakeInferenceServer(decode, kind="llama-cpp", port=port) as srv:
    print("listening on", srv.url, flush=True)
    threading.Event().wait()
"""


def fake_python(tmp_path: Path, *, shell: bool = False, at_start: bool = False, sig: str = "SIGILL") -> str:
    """An executable LocalServers runs in place of the interpreter. `shell`: through /bin/sh, which
    reports a child killed by signal N as exit status 128 + N."""
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER.format(repo=str(REPO), signal=sig, at_start=at_start))
    launcher = tmp_path / "fake-python"
    if shell:
        launcher.write_text(
            f'#!/bin/sh\n"{sys.executable}" "{script}" "$@"\nstatus=$?\n'
            'echo "wrapper: the server exited with $status"\nexit $status\n'
        )
    else:
        launcher.write_text(f"#!{sys.executable}\nexec(open({str(script)!r}).read())\n")
    launcher.chmod(0o755)
    return str(launcher)


def fake_model(tmp_path: Path) -> Path:
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    return model


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0, "exit status 0"),
        (3, "exit status 3"),
        (-11, "segmentation fault (SIGSEGV, signal 11)"),
        (139, "segmentation fault (SIGSEGV, signal 11, exit 139)"),
        (-4, "illegal instruction (SIGILL, signal 4)"),
        (135, "bus error (SIGBUS, signal 7, exit 135)"),
        (-9, "killed (SIGKILL, signal 9)"),
        (134, "aborted (SIGABRT, signal 6, exit 134)"),
        (-int(signal.SIGUSR1), f"killed by SIGUSR1 (SIGUSR1, signal {int(signal.SIGUSR1)})"),
        (255, "exit status 255"),
    ],
)
def test_describe_exit_names_the_signal(code: int, words: str) -> None:
    assert describe_exit(code) == words


@pytest.mark.parametrize(
    ("shell", "how"),
    [
        (False, "segmentation fault (SIGSEGV, signal 11)"),
        (True, "segmentation fault (SIGSEGV, signal 11, exit 139)"),
    ],
    ids=["popen-signal", "shell-exit-139"],
)
def test_server_that_segfaults_on_first_decode_is_reported(tmp_path: Path, shell: bool, how: str) -> None:
    with LocalServers(
        fake_model(tmp_path), python=fake_python(tmp_path, shell=shell), log_dir=tmp_path, startup_timeout=30
    ) as servers:
        servers.check()  # both up: nothing to say
        assert servers.dead() == {}
        a = servers.servers["A"]
        with pytest.raises(UnavailableError):
            ModelClient(servers.url_a, kind="llama-cpp", timeout=10).complete(REQUEST)
        wait_until(lambda: bool(servers.dead()), timeout=10, what="server A to exit")
        assert servers.dead() == {"A": 139 if shell else -11}  # B is still up
        with pytest.raises(ServerExitedError) as err:
            servers.check()
    assert err.value.summary == f"model server A (pid {a.pid}, port {a.port}) exited: {how}"
    message = str(err.value)
    assert message.startswith(err.value.summary + f"; last lines of {tmp_path / 'server-A.log'}:\n")
    assert "    decoding the first request" in message  # the log's tail, indented
    if shell:
        assert "wrapper: the server exited with 139" in message
    assert "server-B" not in message


def test_server_that_dies_while_starting_says_how(tmp_path: Path) -> None:
    servers = LocalServers(
        fake_model(tmp_path),
        single=True,
        python=fake_python(tmp_path, at_start=True),
        log_dir=tmp_path,
        startup_timeout=30,
    )
    with pytest.raises(ServerExitedError) as err:
        servers.start()
    assert re.fullmatch(
        r"model server A \(pid \d+, port \d+\) exited while starting: "
        r"illegal instruction \(SIGILL, signal 4\)",
        err.value.summary,
    )
    assert "this CPU lacks an instruction" in str(err.value)


def test_stop_group_stops_a_session_and_returns_its_status() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 60 & wait"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    assert stop_group(proc, grace=5) == -signal.SIGTERM
    assert stop_group(proc) == -signal.SIGTERM  # already stopped: just its status


def test_endpoint_not_answering_is_logged_once_until_it_answers(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = ModelClient(url, kind="llama-cpp", timeout=10)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    with caplog.at_level(logging.INFO, logger="workers.client"):
        for _ in range(3):  # nothing listens: every call fails, one warning
            with pytest.raises(UnavailableError, match="ConnectError"):
                client.complete(REQUEST)
        assert warnings() == [
            f"endpoint {url} is not answering (ConnectError: [Errno 111] Connection refused); "
            "steps for it will retry with backoff"
        ]
        with FakeInferenceServer(lambda r: "5", kind="llama-cpp", port=port):
            assert client.complete(REQUEST).text == "5"
        assert f"endpoint {url} answers again" in caplog.messages
        with pytest.raises(UnavailableError):  # down again: said again, once
            client.complete(REQUEST)
        with pytest.raises(UnavailableError):
            client.complete(REQUEST)
    assert len(warnings()) == 2


def test_worker_says_once_per_endpoint_that_it_is_not_answering(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    a, b = (f"http://127.0.0.1:{free_port()}" for _ in "AB")  # nothing listens on either
    env = service_env(
        sqlite_url, redis_url, RSTAR_MODEL_A_URL=a, RSTAR_MODEL_B_URL=b,
        RSTAR_CHECK_MODELS="false",  # submitted while the servers are down, as they then stay
        RSTAR_MAX_RETRIES="2", RSTAR_RETRY_BACKOFF="0.1", RSTAR_RETRY_BACKOFF_MAX="0.2",
    )  # fmt: skip
    assert rstar(["db", "upgrade"], env).returncode == 0
    items = [
        {"id": f"p{i}", "question": r["question"], "answer": r["answer"]} for i, r in enumerate(gsm8k_rows(3))
    ]
    sub = rstar(["submit", str(write_jsonl(tmp_path / "problems.jsonl", items)), "--name", "down"], env)
    assert sub.returncode == 0, sub.stderr
    job_id = int(sub.stdout)

    def finished() -> bool:
        with session_scope(sqlite_url) as s:
            job = s.get(Job, job_id)
            return job is not None and job.finished_at is not None

    log = tmp_path / "worker.log"
    with celery_worker(env, [CONTROL_QUEUE, queue_for_endpoint(a), queue_for_endpoint(b)], log=log):
        wait_until(finished, timeout=90, what="every step to fail")
    with session_scope(sqlite_url) as s:
        attempts = s.execute(select(func.count(), func.max(ModelCall.attempt))).one()
    # Retried as before: 1 + 2 retries at most per step (a step whose problem failed stops early).
    assert attempts[1] == 3 and attempts[0] <= 3 * 2 * 3

    text = log.read_text()
    for url in (a, b):
        said = [line for line in text.splitlines() if f"endpoint {url} is not answering" in line]
        assert len(said) == 1, text[-4000:]
        assert "ConnectError" in said[0] and "steps for it will retry with backoff" in said[0]
    assert "retry in" not in text  # the per-step line is DEBUG while the endpoint is reported down
    # A step's final failure is still its own line: one per problem at least (its first step to
    # run out fails the problem), one per step at most.
    assert 3 <= text.count("failed for good") <= 6


def test_demo_outcome_fails_when_no_call_succeeded_or_a_server_died(
    migrated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with session_scope(migrated) as s:
        job, _ = create_job(
            session=s, name="demo", strategy="mutual", params={},
            models=[{"name": "A", "url": "http://a"}, {"name": "B", "url": "http://b"}],
            source=None, problems=[ProblemInput("p1", 1, "What is 2 + 3?", "5", "5")],
        )  # fmt: skip
        first = (StepSpec("r1.generate.A", StepKind.GENERATE, "A", 1),)
        start_problems(session=s, job_id=job.id, first_steps=first, window=1)
        (step,) = queued_steps(session=s, job_id=job.id)
        job_id, step_id, problem_id = job.id, step.id, step.problem_id

    def record(attempt: int, outcome: CallOutcome) -> None:
        with session_scope(migrated) as s:
            call = new_call(
                step_id=step_id, problem_id=problem_id, attempt=attempt, endpoint="http://a",
                server_kind=None, model=None, request={}, response=None, response_text=None,
                finish_reason=None, prompt_tokens=None, completion_tokens=None, latency_ms=1.0,
                outcome=outcome, error="UnavailableError: connection refused",
            )  # fmt: skip
            record_call(session=s, call=call)

    def outcome(servers: LocalServerSet) -> str | None:
        capsys.readouterr()
        try:
            _check_outcome(servers, migrated, job_id)
        except typer.Exit as exc:
            assert exc.exit_code == 1
            return capsys.readouterr().out
        return None

    record(1, CallOutcome.RETRYABLE_ERROR)
    record(2, CallOutcome.RETRYABLE_ERROR)
    running = LocalServerSet(servers={}, log_dir=tmp_path)
    assert outcome(running) == "error: no model call succeeded: 0 of 2 calls answered\n"

    server = LocalServer(
        role="B", model=tmp_path / "m.gguf", host="127.0.0.1", port=1, n_threads=1,
        log_path=tmp_path / "server-B.log",
        command=[sys.executable, "-c", "import os, signal; print('bye', flush=True); os.abort()"],
    )  # fmt: skip
    server.start()
    assert server.process is not None
    server.process.wait(timeout=30)
    server.stop()
    dead = LocalServerSet(servers={"B": server}, log_dir=tmp_path)
    out = outcome(dead)
    assert out is not None and out.startswith(
        "error: no model call succeeded: 0 of 2 calls answered; "
        f"model server B (pid {server.pid}, port 1) exited: aborted (SIGABRT, signal 6); "
        f"last lines of {tmp_path / 'server-B.log'}:\n"
    )
    assert "    bye" in out

    record(3, CallOutcome.OK)
    assert outcome(running) is None  # a call answered, the servers run: the demo succeeded
    out = outcome(dead)
    assert out is not None and out.startswith("error: model server B (pid ")


# -- the real servers, killed -------------------------------------------------------------------------


class Output:
    """A child's merged output, read by a thread so the test can wait for a line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.text[-4000:]}")

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def rest(self, timeout: float = 10) -> str:
        with contextlib.suppress(AssertionError):
            self.wait_for(r"(?!)", timeout)  # drain to the end
        return self.text


@contextlib.contextmanager
def rstar_process(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield proc, Output(proc)
    finally:
        if proc.poll() is None:  # Ctrl-C: it stops what it started
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_pid(parent: int, port: int) -> int:
    """The llama_cpp.server child of `parent` listening on `port`, found in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"llama_cpp.server" in argv and str(port).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no llama_cpp.server child of {parent} on port {port}")


@pytest.mark.realmodel
def test_serve_local_exits_when_a_server_dies() -> None:
    require_real_model()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with rstar_process(["serve-local", "--n-ctx", "512"], env) as (proc, out):
        port = int(out.wait_for(r"model B: http://127\.0\.0\.1:(\d+)", timeout=180)[1])
        out.wait_for(r"Press Ctrl-C", timeout=30)
        pid = server_pid(proc.pid, port)
        os.kill(pid, signal.SIGSEGV)
        assert proc.wait(timeout=30) == 1
        text = out.rest()
    assert (
        f"error: model server B (pid {pid}, port {port}) exited: segmentation fault (SIGSEGV, signal 11)"
        in text
    )
    assert "last lines of " in text and "server-B.log" in text


@pytest.mark.realmodel
def test_demo_fails_at_once_naming_the_server_that_died(redis_url: str, tmp_path: Path) -> None:
    require_real_model()
    db_url = f"sqlite:///{tmp_path}/demo.db"
    args = ["demo", "--problems", "1", "--max-rounds", "1", "--database-url", db_url, "--timeout", "600"]
    with rstar_process(args, service_env(db_url, redis_url)) as (proc, out):
        port = int(out.wait_for(r"model servers: A http://127\.0\.0\.1:(\d+)", timeout=240)[1])
        out.wait_for(r"job \d+: 1 problems submitted", timeout=120)
        pid = server_pid(proc.pid, port)
        os.kill(pid, signal.SIGSEGV)
        killed = time.monotonic()
        error = out.wait_for(r"^error: .*", timeout=30)[0]
        noticed = time.monotonic() - killed
        code = proc.wait(timeout=120)  # after stopping the worker, Flower and server B
        text = out.rest()
    assert code == 1, text[-4000:]
    assert noticed < 15, f"{noticed:.1f} s"
    assert error.startswith(
        f"error: model server A (pid {pid}, port {port}) exited: segmentation fault (SIGSEGV, signal 11); "
        "last lines of "
    ), text[-4000:]
    assert "accuracy" not in text  # it failed before a results table could look like bad luck
