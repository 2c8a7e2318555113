"""`rstar demo`: the whole system on one machine, for real: two local models, Redis, a Celery worker,
Flower and SQLite. It starts what it needs and stops everything it started."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from cli.render import make_console, print_error
from db import migrate
from db.jobs import problem_results, status_counts
from db.models import TERMINAL_PROBLEM_STATES, CallOutcome, ModelCall, Problem
from db.session import session_scope
from localmodels.fetch import DEFAULT_MODEL, PRESETS, ModelFetchError, fetch_model
from localmodels.servers import LocalServerError, LocalServerSet, free_port, serve_local, stop_group
from workers.settings import get_settings

SAMPLE = Path(__file__).resolve().parent / "data" / "gsm8k_sample.jsonl"  # package data: in the wheel too
console = make_console()
YES_NO = {True: "yes", False: "no", None: "-"}


def _fail(message: str, code: int = 1) -> typer.Exit:
    # Escaped: a server's log tail has brackets Rich would read as markup. Not wrapped: the first
    # line is the cause, whole.
    print_error(console, message)
    return typer.Exit(code)


def _check_redis(broker_url: str) -> None:
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        raise _fail(
            f"no Redis answers at {broker_url} ({type(exc).__name__}). Start one with\n"
            '    redis-server --daemonize yes --port 6379 --save ""\n'
            "or `docker run -d -p 6379:6379 redis:7`, or point RSTAR_BROKER_URL at yours, then run again."
        ) from None


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, grace=20.0)


def _finished(db_url: str, job_id: int) -> tuple[int, int]:
    with session_scope(db_url) as s:
        counts = status_counts(session=s, job_id=job_id)
    return sum(counts[st.value] for st in TERMINAL_PROBLEM_STATES), sum(counts.values())


def _calls_answered(db_url: str, job_id: int) -> tuple[int, int]:
    """(model calls that got a reply, model calls) recorded for the job."""
    with session_scope(db_url) as s:
        rows = s.execute(
            select(ModelCall.outcome, func.count())
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id)
            .group_by(ModelCall.outcome)
        ).all()
    counts = {outcome: n for outcome, n in rows}
    return counts.get(CallOutcome.OK.value, 0), sum(counts.values())


def _exited(servers: LocalServerSet) -> str | None:
    """Which model servers exited, how, and their logs' last lines; None while all run."""
    try:
        servers.check()
    except LocalServerError as exc:
        return str(exc)
    return None


def _check_outcome(servers: LocalServerSet, db_url: str, job_id: int) -> None:
    """A finished job is no success when the servers died or not one model call was answered
    (every problem then fails with "connection refused", and the table alone looks like bad luck)."""
    answered, calls = _calls_answered(db_url, job_id)
    causes = [] if answered else [f"no model call succeeded: {answered} of {calls} calls answered"]
    if exited := _exited(servers):
        causes.append(exited)
    if causes:
        raise _fail("; ".join(causes))


def demo_command(
    model: Annotated[
        str, typer.Option(help=f"Local model: {', '.join(PRESETS)} or a .gguf path.")
    ] = DEFAULT_MODEL,
    model_b: Annotated[
        str | None,
        typer.Option(
            help="Model B, when it is to differ from A (heterogeneous models checking each other): "
            f"{', '.join(PRESETS)} or a .gguf path."
        ),
    ] = None,
    problems: Annotated[int, typer.Option(help="How many GSM8K problems to run.", min=1, max=100)] = 5,
    max_rounds: Annotated[int, typer.Option(help="Review rounds at most.", min=1, max=10)] = 3,
    database_url: Annotated[
        str, typer.Option(help="Where the audit trail goes.")
    ] = "sqlite:///rstar-demo.db",
    keep_running: Annotated[bool, typer.Option(help="Leave everything up until Ctrl-C at the end.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1800.0,
) -> None:
    """Fetch a small model, start two local model servers, a worker and Flower, solve problems from
    GSM8K with mutual reasoning, and print the results."""
    started = time.monotonic()
    settings = get_settings()
    broker = settings.broker_url
    _check_redis(broker)
    try:
        model_file = fetch_model(model, models_dir=settings.models_dir, progress=True)
        model_b_file = (
            fetch_model(model_b, models_dir=settings.models_dir, progress=True) if model_b else None
        )
    except ModelFetchError as exc:
        raise _fail(str(exc), 2 if isinstance(exc, ValueError) else 1) from None
    migrate.upgrade(database_url)
    logs = Path(tempfile.mkdtemp(prefix="rstar-demo-"))
    names = model_file.name + (f" (A) and {model_b_file.name} (B)" if model_b_file else "")
    console.print(
        Text.assemble(("rstar demo", "bold"), f": model {names}, database {database_url}, logs in {logs}")
    )

    with ExitStack() as stack:
        try:
            # Aliases: the calls record which model served them ("smollm2-135m", not "dummy").
            aliases = {
                "alias_a": model if model in PRESETS else None,
                "alias_b": model_b if model_b in PRESETS else None,
            }
            servers = stack.enter_context(serve_local(model_file, model_b_file, log_dir=logs, **aliases))
        except LocalServerError as exc:
            raise _fail(str(exc)) from None
        console.print(f"model servers: A {servers.url_a}, B {servers.url_b}")
        env = {
            **os.environ,
            "RSTAR_DATABASE_URL": database_url,
            "RSTAR_BROKER_URL": broker,
            "RSTAR_MODELS": f"A={servers.url_a},B={servers.url_b}",
            # One request at a time per llama.cpp server: a call may wait for the ones before it.
            "RSTAR_REQUEST_TIMEOUT": str(max(settings.request_timeout, 600)),
        }
        from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint  # not at start-up: see cli.main

        queues = [CONTROL_QUEUE, queue_for_endpoint(servers.url_a), queue_for_endpoint(servers.url_b)]
        celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        worker = _spawn(
            [*celery, "worker", "--pool", "threads", "--concurrency", "8", "--queues", ",".join(queues),
             "--loglevel", "INFO", "--task-events", "--hostname", f"rstar-demo-{os.getpid()}@%h"],
            env, logs / "worker.log",
        )  # fmt: skip
        stack.callback(_stop, worker)
        flower_port, password = free_port(), secrets.token_urlsafe(9)
        flower_url = f"http://127.0.0.1:{flower_port} (user rstar, password {password})"
        flower = _spawn(
            [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1",
             f"--basic-auth=rstar:{password}"],
            env, logs / "flower.log",
        )  # fmt: skip
        stack.callback(_stop, flower)
        console.print(
            f"worker and Flower started: http://127.0.0.1:{flower_port} (user rstar, password {password})"
        )

        sample = logs / "problems.jsonl"
        with SAMPLE.open(encoding="utf-8") as f:
            sample.write_text(
                "".join(line for _, line in zip(range(problems), f, strict=False)), encoding="utf-8"
            )
        sub = subprocess.run(
            [sys.executable, "-m", "cli.main", "submit", str(sample),
             "--name", f"demo-{model}" + (f"-{model_b}" if model_b else ""),
             "--max-rounds", str(max_rounds), "--seed", "0"],
            env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        if sub.returncode != 0:
            raise _fail(f"submit failed:\n{sub.stderr}")
        job_id = int(sub.stdout.strip())
        console.print(f"job {job_id}: {problems} problems submitted")

        with Progress(TextColumn("solving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:  # fmt: skip
            task = bar.add_task("", total=problems)
            stopped: str | None = None  # why the job cannot finish
            while stopped is None:
                done, total = _finished(database_url, job_id)
                bar.update(task, completed=done, total=total)
                if done == total:
                    break
                if worker.poll() is not None:
                    stopped = f"the worker exited ({worker.returncode}); see {logs / 'worker.log'}"
                elif time.monotonic() - started > timeout:
                    stopped = f"timed out after {timeout:.0f} s; see {logs}"
                elif not (stopped := _exited(servers)):
                    time.sleep(1.0)
        if stopped:  # said after the progress bar's last line: the cause is what the output ends with
            raise _fail(stopped)

        _print_results(database_url, job_id, time.monotonic() - started)
        _check_outcome(servers, database_url, job_id)
        console.print(
            f"\nFlower: {flower_url}\n"
            f"The audit trail of one problem:  RSTAR_DATABASE_URL={database_url} rstar show {job_id} "
            f"gsm8k-train-7374\n"
            f"Or query it directly:  sqlite3 {database_url.removeprefix('sqlite:///')} "
            f"'select item_id, status, final_answer, reference_answer, rounds_used from problems where "
            f"job_id = {job_id}'"
        )
        if keep_running:
            console.print("Everything is still running; press Ctrl-C to stop it.")
            try:
                while worker.poll() is None:
                    if exited := _exited(servers):
                        raise _fail(exited)
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
        console.print("stopping the worker, Flower and the model servers")


def _print_results(db_url: str, job_id: int, elapsed: float) -> None:
    with session_scope(db_url) as s:
        rows = problem_results(session=s, job_id=job_id)
    table = Table(title=f"job {job_id}: results")
    for col in ("id", "answer", "reference", "correct", "rounds", "calls", "tokens", "seconds", "status"):
        table.add_column(col, overflow="fold", min_width=4)
    for r in rows:
        table.add_row(
            r.id, str(r.final_answer), str(r.reference_answer), YES_NO[r.correct],
            str(r.rounds_used), str(r.model_calls), str(r.prompt_tokens + r.completion_tokens),
            f"{r.wall_time_s or 0:.1f}", r.status + (f" ({r.error})" if r.error else ""),
        )  # fmt: skip
    console.print(table)
    judged = [r for r in rows if r.correct is not None]
    right = sum(1 for r in judged if r.correct)
    tokens = sum(r.completion_tokens for r in rows)
    gen_seconds = sum(r.wall_time_s or 0 for r in rows)
    calls = sum(r.model_calls for r in rows)
    per_problem = elapsed / max(len(rows), 1)
    console.print(
        f"accuracy {right}/{len(rows)} against the references; {calls} model calls, {tokens} generated "
        f"tokens; wall time {elapsed:.0f} s ({per_problem:.0f} s per problem)"
    )
    summary = {"job": job_id, "correct": right, "problems": len(rows), "wall_s": round(elapsed, 1),
               "generated_tokens": tokens, "problem_seconds": round(gen_seconds, 1)}  # fmt: skip
    console.print(json.dumps(summary), highlight=False)
