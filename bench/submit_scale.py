"""Submitting a very large job: wall time, peak memory, what the broker holds; and `kill -9` trials.

    python -m bench.submit_scale --problems 1000000 --database postgres -o FILE
    python -m bench.submit_scale --problems 100000 --database sqlite
    python -m bench.submit_scale --problems 3000 --kill-trials 10 --database postgres

Writes N problems (GSM8K training questions, each made unique by a suffix) to a JSONL file and runs
`rstar submit FILE --strategy rstar` as a process of its own against a fresh database and a private
`redis-server`, with the model check off (no server is needed to store a job): its wall time and
peak memory, and the broker's memory and message count after it.

`--kill-trials K` then runs K trials on a job of `--problems` cot problems against the throughput
simulator: `rstar submit` killed with SIGKILL at a random moment of its run (uniform over a first,
uninterrupted submit's wall time), then one `rstar worker` and nothing else. A trial passes when
the submit left no job, or a job that the worker alone finishes with every problem answered and
exactly one recorded call per model step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.services import private_redis
from bench.simulator import SimConfig, SimulatorProcess
from bench.throughput import (
    DEFAULT_PG_ADMIN,
    GSM8K,
    fresh_database,
    load_questions,
)
from bench.ui_pages import REPO, run_rstar


def write_problems(path: Path, n: int, dataset: Path = GSM8K) -> int:
    """N problems cycled from the dataset (synthetic questions where it is absent), each question
    made unique; returns the file's bytes."""
    if dataset.exists():
        with dataset.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = [{"question": q} for q in load_questions(100, dataset)]
    with path.open("w", encoding="utf-8") as out:
        for i, row in zip(range(n), itertools.cycle(rows), strict=False):
            item = {"id": f"p{i}", "question": f"{row['question']} (#{i})"}
            if "answer" in row:
                item["answer"] = row["answer"]
            out.write(json.dumps(item) + "\n")
    return path.stat().st_size


def broker_state(url: str) -> tuple[float, int]:
    """The broker's used memory (MB) and the messages waiting in its queues."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        used = int(client.info("memory")["used_memory"]) / 2**20
        messages = sum(int(client.llen(k)) for k in client.scan_iter(count=1000) if client.type(k) == b"list")
    finally:
        client.close()
    return used, messages


def job_counts(db_url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from db.models import Job, ModelCall, Problem, Step
    from db.session import dispose_all, session_scope

    try:
        with session_scope(db_url) as s:
            counts = {
                "jobs": s.scalar(select(func.count()).select_from(Job)) or 0,
                "steps": s.scalar(select(func.count()).select_from(Step)) or 0,
                "model steps": s.scalar(select(func.count()).select_from(Step).where(Step.model.is_not(None)))
                or 0,
                "calls": s.scalar(select(func.count()).select_from(ModelCall)) or 0,
                "finished jobs": s.scalar(
                    select(func.count()).select_from(Job).where(Job.finished_at.is_not(None))
                )
                or 0,
            }
            for status, n in s.execute(select(Problem.status, func.count()).group_by(Problem.status)):
                counts[status] = n
    finally:
        dispose_all()
    return counts


@contextmanager
def migrated(args: argparse.Namespace, tmp: Path) -> Iterator[str]:
    from db import migrate

    with fresh_database(args.database, tmp, args.postgres_admin_url) as url:
        migrate.upgrade(url)
        yield url


def _env(db_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    env.update({"RSTAR_DATABASE_URL": db_url, "RSTAR_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def measure_submit(args: argparse.Namespace, tmp: Path) -> list[str]:
    path = tmp / "problems.jsonl"
    size = write_problems(path, args.problems, args.dataset)
    with migrated(args, tmp) as db_url, private_redis(tmp) as broker:
        env = _env(
            db_url,
            broker,
            RSTAR_CHECK_MODELS="false",
            RSTAR_JOB_WINDOW=str(args.window),
            RSTAR_MAX_PROBLEMS_PER_JOB=str(args.problems),
            RSTAR_MAX_INPUT_BYTES=str(max(size * 2, 512 * 2**20)),
        )
        before, _ = broker_state(broker)
        url = "http://127.0.0.1:9"
        ran = run_rstar(["submit", str(path), "--strategy", "rstar", "--model-a", url, "--model-b", url], env)
        after, messages = broker_state(broker)
        counts = job_counts(db_url)
    return [
        f"`rstar submit` of {args.problems:,} rstar problems ({size / 2**20:.0f} MB of JSONL"
        f"{'' if args.dataset.exists() else ', synthetic questions'}) into "
        f"{'PostgreSQL' if args.database == 'postgres' else 'SQLite'}, window {args.window:,}:",
        "",
        "| wall | peak memory | broker memory after (before) | messages queued"
        " | problems waiting / pending | steps |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {ran.wall:.0f} s | {ran.peak_mb:.0f} MB | {after:.1f} MB ({before:.1f}) | {messages:,} "
        f"| {counts.get('waiting', 0):,} / {counts.get('pending', 0):,} | {counts['steps']:,} |",
    ]


def kill_trials(args: argparse.Namespace, tmp: Path) -> list[str]:
    rng = random.Random(args.seed)
    path = tmp / "trial.jsonl"
    write_problems(path, args.problems, args.dataset)
    sim = SimConfig(max_concurrent_requests=64, time_scale=0.01)
    rows: list[str] = []
    failures = 0
    with SimulatorProcess(sim, log=tmp / "simulator.log") as server:
        submit = ["submit", str(path), "--strategy", "cot", "--model-a", server.url]
        extra = {
            "RSTAR_MAX_PROBLEMS_PER_JOB": str(args.problems),
            "RSTAR_RECOVERY_INTERVAL": "1",
            "RSTAR_REQUEUE_GRACE": "3",
            "RSTAR_JOB_WINDOW": str(args.window),
        }
        with (
            migrated(args, tmp) as db_url,
            private_redis(tmp) as broker,
        ):
            whole = run_rstar(submit, _env(db_url, broker, **extra)).wall
        for trial in range(1, args.kill_trials + 1):
            at = rng.uniform(0, whole)
            with (
                migrated(args, tmp) as db_url,
                private_redis(tmp) as broker,
            ):
                env = _env(db_url, broker, **extra)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", *submit],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(at)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                counts = job_counts(db_url)
                if counts["jobs"] == 0:
                    rows.append(f"| {trial} | {at:.2f} s | no job | - | pass |")
                    continue
                t = time.perf_counter()
                log = tmp / f"worker{trial}.log"
                with log.open("wb") as out:
                    worker = subprocess.Popen(
                        [sys.executable, "-m", "cli.main", "worker"],
                        env={**env, "RSTAR_MODEL_A_URL": server.url},
                        cwd=REPO,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                    try:
                        deadline = time.monotonic() + args.trial_timeout
                        while job_counts(db_url)["finished jobs"] == 0 and time.monotonic() < deadline:
                            time.sleep(2)
                    finally:
                        worker.send_signal(signal.SIGTERM)
                        worker.wait(timeout=60)
                took = time.perf_counter() - t
                counts = job_counts(db_url)
                ok = (
                    counts["finished jobs"] == 1
                    and counts.get("answered", 0) == args.problems
                    and counts["calls"] == counts["model steps"]
                )
                failures += not ok
                rows.append(
                    f"| {trial} | {at:.2f} s | job stored ({counts.get('answered', 0):,} answered, "
                    f"{counts['calls']:,} calls for {counts['model steps']:,} model steps) | {took:.0f} s "
                    f"| {'pass' if ok else 'FAIL'} |"
                )
    return [
        f"`kill -9` of `rstar submit` ({args.problems:,} cot problems, window {args.window:,}) at a random "
        f"moment of its {whole:.1f} s (seed {args.seed}), then one `rstar worker` against the simulator:",
        "",
        "| trial | killed after | what it left | worker alone finished it in | |",
        "|---:|---:|---|---:|---|",
        *rows,
        "",
        f"{args.kill_trials - failures} of {args.kill_trials} trials pass.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=100_000)
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--dataset", type=Path, default=GSM8K, help="GSM8K-style JSONL to cycle through")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--window", type=int, default=1024, help="RSTAR_JOB_WINDOW")
    parser.add_argument("--kill-trials", type=int, default=0, help="run this many kill -9 trials instead")
    parser.add_argument("--trial-timeout", type=float, default=900, help="seconds a trial's worker gets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", "-o", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rstar-submit-") as tmp:
        lines = kill_trials(args, Path(tmp)) if args.kill_trials else measure_submit(args, Path(tmp))
    command = "python -m bench.submit_scale " + " ".join(sys.argv[1:] if argv is None else list(argv))
    report = "\n".join([f"`{command}` on {os.cpu_count()} cores.", "", *lines]) + "\n"
    print(report)
    if args.output:
        with args.output.open("a", encoding="utf-8") as f:
            f.write("\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
