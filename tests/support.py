"""Test helpers: GSM8K samples, a scripted "oracle" pair of models, a real Celery worker process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

from db.models import ModelCall, Problem
from rstar.reports import judge
from tests.fakeserver import FakeRequest, Reply

REPO = Path(__file__).resolve().parent.parent
# The first 200 problems of GSM8K's training split, committed so the tests do not depend on where
# the repository is cloned (tests/data/README.md).
GSM8K = REPO / "tests" / "data" / "gsm8k_train_head.jsonl"


def gsm8k_rows(n: int, *, offset: int = 0) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with GSM8K.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < offset:
                continue
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    if len(rows) < n:
        raise ValueError(f"{GSM8K} has no {n} problems after line {offset}")
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reference(answer: str) -> str:
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def question_of(prompt: str) -> str:
    """The problem text the prompt quotes (the first <<< ... >>> block)."""
    m = re.search(r"<<<\n(.*?)\n>>>", prompt, re.S)
    return m.group(1) if m else ""


def kind_of(prompt: str) -> str:
    if "Review another student's solution" in prompt:
        return "review"
    if "Here is your earlier solution" in prompt:
        return "refine"
    return "generate"


def solution_json(answer: str) -> str:
    return json.dumps(
        {"steps": ["Read the problem.", f"Compute the result: {answer}."], "final_answer": answer}
    )


def review_json(verdict: str, answer: str | None = None) -> str:
    body: dict[str, object] = {
        "issues": [] if verdict == "correct" else [{"step": 2, "description": "the result is wrong"}],
        "scores": {
            "logical_consistency": 5,
            "calculation_accuracy": 5 if verdict == "correct" else 2,
            "step_completeness": 4,
        },
        "verdict": verdict,
    }
    if answer is not None:
        body["correct_answer"] = answer
    return json.dumps(body)


@dataclass
class Oracle:
    """A deterministic model pair that knows the answers.

    `wrong_first` holds questions this model gets wrong in its first solution (it writes the right
    answer plus one); it fixes them when refining. As a reviewer it accepts right answers and
    rejects wrong ones, giving the right answer.
    """

    answers: dict[str, str]
    wrong_first: set[str]

    def __call__(self, request: FakeRequest) -> Reply | str:
        prompt = request.prompt
        question = question_of(prompt)
        right = self.answers.get(question)
        if right is None:
            return Reply(status=422, error=f"unknown question in prompt: {question[:60]!r}")
        kind = kind_of(prompt)
        if kind == "generate":
            return solution_json(str(int(right) + 1) if question in self.wrong_first else right)
        if kind == "refine":
            return solution_json(right)
        shown = re.search(r"Final answer: (\S+)", prompt)
        given = shown.group(1) if shown else None
        return review_json("correct", None) if given == right else review_json("incorrect", right)


def oracle_pair(rows: list[dict[str, str]], *, b_wrong_every: int = 2) -> tuple[Oracle, Oracle]:
    answers = {r["question"]: reference(r["answer"]) for r in rows}
    wrong_b = {r["question"] for i, r in enumerate(rows) if i % b_wrong_every == 0}
    return Oracle(answers, set()), Oracle(answers, wrong_b)


def service_env(db_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    env.update({"RSTAR_DATABASE_URL": db_url, "RSTAR_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def rstar(args: list[str], env: dict[str, str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def celery_worker(
    env: dict[str, str], queues: list[str], *, concurrency: int = 8, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process (threads pool) on the given queues; warm-stopped at exit."""
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "--queues", ",".join(queues), "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.25, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")


def unavailable(reason: str) -> NoReturn:
    """A test's prerequisite is missing: fail in CI (where everything must be there), else skip."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def flushed_redis(url: str) -> Any:
    """A client of the tests' private Redis database, emptied; skip (locally) or fail (in CI)
    when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        unavailable(
            "redis-server is not installed (apt-get install redis-server): the tests start one of their own"
            if "redis-server-is-not-installed" in url
            else f"Redis does not answer at {url}"
        )
    client.flushdb()
    return client


def require_llama_server() -> Path:
    """The llama-server binary (scripts/build_llama_server.sh), or skip (locally) / fail (in CI)."""

    from localmodels.servers import LocalServerError, llama_server_binary

    try:
        return llama_server_binary(build=False)
    except LocalServerError as exc:
        unavailable(str(exc))


def require_real_model() -> Path:
    """The SmolLM2 file and llama-cpp-python, or skip (locally) / fail (in CI, where both must be)."""
    import importlib.util

    from localmodels.fetch import is_cached, model_path
    from workers.settings import get_settings

    models_dir = get_settings().models_dir
    missing = None
    if importlib.util.find_spec("llama_cpp") is None:
        missing = "llama-cpp-python is not installed (scripts/bootstrap.sh installs it)"
    elif not is_cached("smollm2-135m", models_dir):
        missing = f"SmolLM2 is not in {models_dir}: run `rstar models fetch`"
    if missing:
        unavailable(missing)
    return model_path("smollm2-135m", models_dir)


# -- outputs read as the seed's solutions and reviews --------------------------------------------


def solution_rows(session: Any, *where: Any) -> list[SimpleNamespace]:
    """The solution outputs (generated, refined, completed) matching `where` (on `Output`), with
    the fields tests check: id, problem_id, step_id, model_call_id, round, author, kind, parent_id,
    steps, answer_raw, answer, structured, parse_error."""
    from sqlalchemy import select

    from db.models import Output
    from rstar.strategies.base import SOLUTION_KINDS

    rows = session.scalars(select(Output).where(Output.kind.in_(SOLUTION_KINDS), *where).order_by(Output.id))
    return [
        SimpleNamespace(
            id=o.id, problem_id=o.problem_id, step_id=o.step_id, model_call_id=o.model_call_id, round=o.round,
            author=o.model, kind=o.kind, parent_id=o.parent_id, steps=o.payload.get("steps"),
            answer_raw=o.payload.get("answer_raw"), answer=o.answer, structured=o.payload.get("structured"),
            parse_error=o.parse_error,
        )
        for o in rows
    ]  # fmt: skip


def review_rows(session: Any, *where: Any) -> list[SimpleNamespace]:
    """The review outputs matching `where` (on `Output`): id, problem_id, step_id, model_call_id,
    round, reviewer, target_solution_id, verdict, logical_consistency, calculation_accuracy,
    step_completeness, issues, suggested_answer, structured, parse_error."""
    from sqlalchemy import select

    from db.models import Output
    from rstar.strategies.base import REVIEW_KINDS

    rows = session.scalars(select(Output).where(Output.kind.in_(REVIEW_KINDS), *where).order_by(Output.id))
    out = []
    for o in rows:
        scores = list(o.payload.get("scores") or [None, None, None])
        out.append(
            SimpleNamespace(
                id=o.id, problem_id=o.problem_id, step_id=o.step_id, model_call_id=o.model_call_id,
                round=o.round, reviewer=o.model, target_solution_id=o.parent_id,
                verdict=o.payload.get("verdict"),
                logical_consistency=scores[0], calculation_accuracy=scores[1], step_completeness=scores[2],
                issues=o.payload.get("issues"), suggested_answer=o.payload.get("suggested_answer"),
                structured=o.payload.get("structured"), parse_error=o.parse_error,
            )
        )  # fmt: skip
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on its own port, without persistence: a restart loses every message."""

    def __init__(self, tmp: Path, *, password: str | None = None) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.tmp),
                "--logfile", str(self.tmp / "redis.log")]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pong, timeout=10, interval=0.05, what=f"redis-server on port {self.port}")
        return self

    def _pong(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tally_errors(problems: Sequence[Problem], calls: Sequence[ModelCall]) -> list[str]:
    """Where a problem's stored tallies (migration 0007) disagree with its recorded calls: a
    finished one carries their sums and its judgement, an open one nothing."""
    errors = []
    for p in problems:
        mine = [c for c in calls if c.problem_id == p.id]
        stored = (p.calls, p.requests, p.sequences, p.prompt_tokens, p.completion_tokens)
        if p.status in ("answered", "failed"):
            counted = (
                len(mine),
                sum(c.requests or 0 for c in mine),
                sum(c.sequences or 0 for c in mine),
                sum(c.prompt_tokens or 0 for c in mine),
                sum(c.completion_tokens or 0 for c in mine),
            )
            if stored != counted:
                errors.append(f"{p.item_id}: tallies {stored}, calls say {counted}")
        elif stored != (None,) * 5:
            errors.append(f"{p.item_id}: {p.status} with tallies {stored}")
        judged = None
        if p.status == "answered" and p.reference_answer is not None:
            judged = judge(p.status, p.final_answer, p.reference_answer)
        if p.correct != judged:
            errors.append(f"{p.item_id}: correct {p.correct}, judged {judged}")
    return errors


def count_errors(session: Any) -> list[str]:
    """Where the counts the database keeps (`job_counts`, migration 0009's triggers) disagree with
    the problems themselves, grouped as the triggers group them; a negative count is an error too."""
    from sqlalchemy import Integer, cast, func, select

    from db.jobs import TALLIES
    from db.models import JobCount

    p = Problem
    key = (
        p.job_id,
        p.status,
        p.final_answer.is_not(None),
        p.reference_answer.is_not(None),
        func.coalesce(cast(p.correct, Integer), -1),
        func.coalesce(p.rounds_used, -1),
    )
    tallies = tuple(TALLIES)
    sums = (func.count(), *(func.coalesce(func.sum(getattr(p, t)), 0) for t in tallies))
    truth = {
        (r[0], r[1], bool(r[2]), bool(r[3]), r[4], r[5]): tuple(r[6:])
        for r in session.execute(select(*key, *sums).group_by(*key)).all()
    }
    kept = {
        (r.job_id, r.status, bool(r.answered), bool(r.referenced), r.correct, r.rounds): (
            r.n,
            *(getattr(r, t) for t in tallies),
        )
        for r in session.execute(select(JobCount.__table__)).all()
        if r.n != 0 or any(getattr(r, t) for t in tallies)
    }
    errors = [
        f"job_counts {k}: {kept.get(k)}, problems say {v}" for k, v in truth.items() if kept.get(k) != v
    ]
    errors += [f"job_counts {k}: {v}, no such problems" for k, v in kept.items() if k not in truth]
    return errors
