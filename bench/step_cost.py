"""What one model step costs the orchestration, in one thread: CPU and SQL statements per model call.

    python -m bench.step_cost --problems 100 --database postgres
    python -m bench.step_cost --strategy rstar --param rollouts=4 --profile /tmp/rstar.prof

Submits a job (mutual by default) against the simulated server (bench/simulator.py, at a tiny time scale) and
runs every queued step's task in this process, one at a time, with Celery's `Task.apply()`: the
same code a worker runs for a message, minus the consumer and the threads. So it separates what a
step costs from what 80 threads on one interpreter add (compare with `bench.throughput`'s CPU per
call), and counts the statements each step sends, which on PostgreSQL are round trips.
Uses a redis-server of its own (or `--redis-url`, emptied) for the messages the steps send, and a
fresh database. Then the bare driver (bench/bare_driver.py) makes the same strategy's calls on the
same problems and server, in memory, and the CPU per generated sequence of both is printed: the
worker's own cost over the strategy's and the HTTP client's, measured in one run, without what a
loaded machine does to the threaded worker's figure in `bench.throughput`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.bare_driver import run_bare
from bench.services import REDIS_URL_HELP, bench_redis
from bench.simulator import SimConfig, SimulatorProcess
from bench.throughput import DEFAULT_PG_ADMIN, GSM8K, load_questions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--questions", type=Path, default=GSM8K)
    parser.add_argument("--strategy", default="mutual")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a strategy parameter (JSON value)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="servers of model A (one simulator each; each step then picks one, preferring its parent's)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write the steps' cProfile stats here")
    parser.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)
    args = parser.parse_args(argv)
    with bench_redis(args.redis_url) as redis_url:
        return measure(args, redis_url)


def measure(args: argparse.Namespace, redis_url: str) -> int:
    params = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.param)}
    profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not waits

    from sqlalchemy import create_engine, event, func, select, text
    from sqlalchemy.engine import make_url

    admin = None
    if args.database == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='step-cost-')}/rstar.db"
    else:
        name = f"rstar_step_cost_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(args.postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    # Settings are read once, on first use: set them before anything imports them.
    os.environ.update(RSTAR_DATABASE_URL=url, RSTAR_BROKER_URL=redis_url)
    import redis

    from db import migrate
    from db.models import ModelCall, Step, StepStatus
    from db.session import dispose_all, get_engine, session_scope
    from rstar.inputs import parse_problems
    from rstar.roster import ModelEntry
    from tasks.dispatch import MODEL_STEP_TASK
    from tasks.submit import submit_job
    from workers.celery_app import app
    from workers.settings import get_settings

    app.loader.import_default_modules()  # the task modules, as a worker loads them
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    try:
        migrate.upgrade(url)
        statements = 0

        @event.listens_for(get_engine(url), "before_cursor_execute")
        def _count(*_: object) -> None:
            nonlocal statements
            statements += 1

        with ExitStack() as servers:
            config = SimConfig(max_concurrent_requests=512, time_scale=0.0001)
            sims = [servers.enter_context(SimulatorProcess(config)) for _ in range(max(args.replicas, 1))]
            sim = sims[0]
            questions = load_questions(args.problems, args.questions)
            data = "".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(questions))
            submit_job(
                settings=get_settings(),
                name="step-cost",
                strategy_name=args.strategy,
                params=params,
                # B: another queue, the same server
                models=[
                    ModelEntry("A", sim.url, tuple(s.url for s in sims[1:])),
                    ModelEntry("B", sim.url + "/"),
                ],
                source=None,
                problems=parse_problems(data.encode()),
            )
            pending = select(Step.id).where(Step.status == StepStatus.QUEUED).order_by(Step.id)
            cpu = 0.0
            counted = tasks = 0
            while True:
                with session_scope(url) as session:
                    todo = session.execute(pending).all()
                if not todo:
                    break
                before = statements
                started = time.process_time()
                if profiler is not None:
                    profiler.enable()
                for (step_id,) in todo:
                    app.tasks[MODEL_STEP_TASK].apply(args=[step_id])
                if profiler is not None:
                    profiler.disable()
                cpu += time.process_time() - started
                counted += statements - before
                tasks += len(todo)
            # The yardstick on the same problems and (first) server: the same strategy's calls, in
            # memory (its CPU per sequence does not depend on how many servers answer).
            bare = run_bare(
                questions,
                {"A": sim.url, "B": sim.url + "/"},
                concurrency=64,
                params=params,
                strategy=args.strategy,
            )
        with session_scope(url) as session:
            calls = session.scalar(select(func.count()).select_from(ModelCall)) or 1
            sequences = session.scalar(select(func.sum(ModelCall.sequences))) or 1
        if profiler is not None:
            profiler.dump_stats(args.profile)
        per_sequence, bare_per_sequence = cpu / sequences, bare.cpu_s / max(bare.sequences, 1)
        print(
            f"{args.database}: {args.problems} problems, {args.strategy}, {calls} model calls, "
            f"{sequences} sequences, {tasks} tasks; CPU {1000 * cpu / calls:.2f} ms per call, "
            f"{1000 * per_sequence:.2f} per sequence; {counted / calls:.1f} SQL statements per call "
            "(SQLite's BEGIN IMMEDIATE counted; PostgreSQL's BEGIN and COMMIT, sent by the driver, not)"
            f"{f'; model A on {len(sims)} servers' if len(sims) > 1 else ''}\n"
            f"bare driver, same problems: {bare.sequences} sequences, CPU {1000 * bare_per_sequence:.2f} ms "
            f"per sequence; the steps' CPU per sequence is {per_sequence / bare_per_sequence:.2f}x the "
            "bare driver's"
        )
    finally:
        broker.flushdb()
        dispose_all()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
