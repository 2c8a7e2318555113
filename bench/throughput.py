"""Throughput benchmark: the real system (workers, Redis, SQL) against the bare asyncio driver.

    python -m bench.throughput --problems 500 --concurrency 64                 # one configuration
    python -m bench.throughput --problems 500 --concurrency 64 --matrix        # 1|2 endpoints x 1|2 workers
    python -m bench.throughput --problems 500 --concurrency 64 --matrix --database postgres
    python -m bench.throughput --strategy rstar --endpoints 8 --replicas --concurrency 128  # 8 GPUs

Both drivers run a strategy's calls (mutual by default; `--strategy rstar --param rollouts=4 ...`
for the MCTS-shaped mode: many samples per expansion, short steps, long completions) for the
same GSM8K questions against fresh simulated servers (`bench.simulator`, one per endpoint, each
admitting `--concurrency` requests at once and answering 429 beyond that).
The bare driver keeps `--concurrency` requests in flight per endpoint
with a semaphore; the system runs `rstar worker` processes (Celery, threads pool) on a fresh
database and a private Redis database, fed by `submit_job`. Printed and written to
`docs/results/throughput/`: makespans and their ratio (bare makespan / system makespan = system
throughput / bare throughput), mean in-flight at the servers, 429s, orchestration CPU per model
call (worker processes' CPU seconds / calls, and the submit's cost apart), worker peak RSS, rows
written per second, and a plot of in-flight requests over time.

Everything shares this machine's cores: the simulators, workers, Redis and the database. The
report gives each part's CPU so a reader can see what the orchestration itself costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bare_driver import run_bare
from bench.services import REDIS_URL_HELP, bench_redis
from bench.simulator import SimConfig, SimulatorProcess, proc_cpu_seconds, proc_peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"
RESULTS_DIR = REPO / "docs" / "results" / "throughput"
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_questions(n: int, path: Path = GSM8K) -> list[str]:
    """The first n questions of a GSM8K-style JSONL file, or synthetic ones when it is not there."""
    questions: list[str] = []
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                if len(questions) == n:
                    break
                questions.append(json.loads(line)["question"])
    while len(questions) < n:
        i = len(questions)
        questions.append(f"Problem {i}: a farmer has {i + 3} rows of {i % 7 + 2} plants. How many plants?")
    return questions


# -- machine accounting --------------------------------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


def redis_cpu(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


@dataclass
class CpuWindow:
    start_busy: float = 0.0
    start_total: float = 0.0
    start_redis: float = 0.0
    busy_fraction: float = 0.0
    redis_s: float = 0.0

    def open(self, redis_url: str) -> None:
        self.start_busy, self.start_total = machine_cpu()
        self.start_redis = redis_cpu(redis_url)

    def close(self, redis_url: str) -> None:
        busy, total = machine_cpu()
        self.busy_fraction = (busy - self.start_busy) / max(total - self.start_total, 1.0)
        self.redis_s = redis_cpu(redis_url) - self.start_redis


# -- results -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    driver: str  # "bare" | "system"
    endpoints: int
    workers: int
    database: str
    problems: int
    makespan_s: float
    calls: int
    answered: int
    server_requests: int
    rejected_429: int
    mean_in_flight: float
    peak_in_flight: int
    busy_fraction: float
    machine_cpu_busy: float
    """Fraction of all cores busy during the run (every process on the machine)."""
    simulator_cpu_s: float
    redis_cpu_s: float
    driver_cpu_s: float
    """Bare: this process. System: the worker processes."""
    submit_wall_s: float = 0.0
    submit_cpu_s: float = 0.0
    worker_peak_rss_mb: float = 0.0
    rows_written: int = 0
    threads_per_worker: int = 0
    rounds: dict[str, int] = field(default_factory=dict)
    series: list[list[tuple[float, int]]] = field(default_factory=list)
    sequences: int = 0
    """Generated sequences (an rstar call that samples n counts n)."""
    first_answer_s: float | None = None
    """System: seconds from the start of submit to the first problem answered."""
    median_answer_s: float | None = None
    """System: ... to the moment half the problems were answered."""
    hundredth_answer_s: float | None = None
    """System: ... to the 100th problem answered (None: fewer problems)."""
    answer_times: list[float] = field(default_factory=list)
    """System: seconds from the start of submit to each problem's answer, in order."""
    job_window: int = 0
    """System: how many of the job's problems it keeps started at once (`jobs.job_window`)."""
    ended: str = "finished"
    """System: "finished" (the job did), "stopped" (`stop_after_window`) or "timed out"; the
    makespan is then the time to that moment."""

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000.0 * self.driver_cpu_s / max(self.calls, 1)

    @property
    def cpu_ms_per_sequence(self) -> float:
        return 1000.0 * self.driver_cpu_s / max(self.sequences, 1)

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.makespan_s if self.makespan_s else 0.0


def _sim_totals(sims: Sequence[SimulatorProcess]) -> tuple[dict[str, Any], list[list[tuple[float, int]]]]:
    stats = [s.stats() for s in sims]
    total = {
        "requests": sum(s["requests"] for s in stats),
        "ok": sum(s["ok"] for s in stats),
        "rejected_429": sum(s["rejected_429"] for s in stats),
        # Per server, averaged: each server is a GPU the user pays for.
        "mean_in_flight": sum(s["mean_in_flight"] for s in stats) / len(stats),
        "peak_in_flight": max(s["peak_in_flight"] for s in stats),
        "busy_fraction": sum(s["busy_fraction"] for s in stats) / len(stats),
    }
    return total, [[(float(t), int(n)) for t, n in s["series"]] for s in stats]


@contextmanager
def simulators(cfg: SimConfig, endpoints: int, logdir: Path) -> Iterator[list[SimulatorProcess]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(SimulatorProcess(cfg, log=logdir / f"sim{i}.log")) for i in range(endpoints)
        ]


def _role_urls(sims: Sequence[SimulatorProcess]) -> dict[str, str]:
    return {"A": sims[0].url, "B": sims[-1].url}


def _replica_urls(sims: Sequence[SimulatorProcess]) -> dict[str, str | list[str]]:
    """One model on every server, the other on the first (`--replicas`)."""
    return {"A": [s.url for s in sims], "B": sims[0].url}


def run_bare_once(
    questions: list[str],
    cfg: SimConfig,
    endpoints: int,
    concurrency: int,
    tmp: Path,
    strategy: str = "mutual",
    params: dict[str, Any] | None = None,
    replicas: bool = False,
    *,
    redis_url: str,
) -> RunResult:
    with simulators(cfg, endpoints, tmp) as sims:
        window = CpuWindow()  # the bare driver uses no Redis: its CPU there is the machine's other work
        window.open(redis_url)
        sim_cpu0 = sum(s.cpu_seconds() for s in sims)
        for s in sims:
            s.reset()
        urls = _replica_urls(sims) if replicas else _role_urls(sims)
        res = run_bare(questions, urls, concurrency=concurrency, strategy=strategy, params=params)
        window.close(redis_url)
        totals, series = _sim_totals(sims)
        sim_cpu = sum(s.cpu_seconds() for s in sims) - sim_cpu0
    rounds: dict[str, int] = {}
    for r in res.rounds.values():
        rounds[str(r)] = rounds.get(str(r), 0) + 1
    return RunResult(
        driver="bare",
        endpoints=endpoints,
        workers=0,
        database="-",
        problems=len(questions),
        makespan_s=res.makespan_s,
        calls=res.calls,
        sequences=res.sequences,
        answered=sum(1 for a in res.answers.values() if a is not None),
        server_requests=totals["requests"],
        rejected_429=totals["rejected_429"],
        mean_in_flight=totals["mean_in_flight"],
        peak_in_flight=totals["peak_in_flight"],
        busy_fraction=totals["busy_fraction"],
        machine_cpu_busy=window.busy_fraction,
        simulator_cpu_s=sim_cpu,
        redis_cpu_s=window.redis_s,
        driver_cpu_s=res.cpu_s,
        rounds=dict(sorted(rounds.items())),
        series=series,
    )


# -- the system --------------------------------------------------------------------------------


@contextmanager
def fresh_database(kind: str, tmp: Path, pg_admin: str) -> Iterator[str]:
    """A new, empty database: a SQLite file in `tmp` (removed afterwards), or a PostgreSQL
    database created for the run and dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from db.session import dispose_all

    if kind == "sqlite":
        path = tmp / f"bench-{uuid.uuid4().hex[:10]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            dispose_all()
            path.unlink(missing_ok=True)
        return
    name = f"rstar_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_admin).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def _worker_env(db_url: str, broker_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    env.update({"RSTAR_DATABASE_URL": db_url, "RSTAR_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@contextmanager
def worker_processes(
    n: int, urls: Sequence[str], threads: int | None, env: dict[str, str], logdir: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`rstar worker` processes. `threads=None`: as a user starts it, with no flags (endpoints from
    RSTAR_MODEL_A_URL / _B in `env`, the pool sized by the worker; a node name only when n > 1)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = [logdir / f"worker{i}.log" for i in range(n)]
    try:
        for i in range(n):
            args = [sys.executable, "-m", "cli.main", "worker"]
            if threads is not None:
                args += ["--concurrency", str(threads)]
                for url in dict.fromkeys(urls):
                    args += ["--endpoint", url]
            if threads is not None or n > 1:
                args += ["-n", f"bench{i}@%h"]
            with logs[i].open("wb") as out:
                procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not all(" ready." in p.read_text(errors="replace") for p in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers did not start; see {logdir}")
            time.sleep(0.2)
        for path in logs:
            found = re.search(r"mingle: sync with (\d+) nodes", path.read_text(errors="replace"))
            if found and int(found.group(1)) > n - 1:
                raise RuntimeError(f"foreign Celery workers share this Redis database (see {path})")
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _count_rows(db_url: str, job_id: int) -> tuple[int, int, dict[str, int], int, int]:
    """(rows written for the job, problems answered, rounds histogram, model calls recorded,
    sequences generated)."""
    from sqlalchemy import func, select

    from db.models import Job, ModelCall, Output, Problem, Selection, Step
    from db.session import session_scope

    with session_scope(db_url) as s:
        pids = select(Problem.id).where(Problem.job_id == job_id)
        rows = 1 + (s.scalar(select(func.count()).select_from(Problem).where(Problem.job_id == job_id)) or 0)
        for model in (Step, ModelCall, Output, Selection):
            rows += s.scalar(select(func.count()).select_from(model).where(model.problem_id.in_(pids))) or 0
        answered = (
            s.scalar(
                select(func.count())
                .select_from(Problem)
                .where(Problem.job_id == job_id, Problem.status == "answered")
            )
            or 0
        )
        hist = dict(
            s.execute(
                select(Problem.rounds_used, func.count())
                .where(Problem.job_id == job_id)
                .group_by(Problem.rounds_used)
            ).all()
        )
        calls = (
            s.scalar(select(func.count()).select_from(ModelCall).where(ModelCall.problem_id.in_(pids))) or 0
        )
        sequences = s.scalar(select(func.sum(ModelCall.sequences)).where(ModelCall.problem_id.in_(pids))) or 0
        assert s.get(Job, job_id) is not None
    hist_sorted = {str(k): v for k, v in sorted(hist.items(), key=lambda kv: kv[0] or 0)}
    return rows, answered, hist_sorted, calls, sequences


def _finished_at(db_url: str, job_id: int) -> datetime | None:
    from sqlalchemy import func, select

    from db.models import Job, Problem
    from db.session import session_scope

    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        if job is None or job.finished_at is None:
            return None
        last: datetime | None = s.scalar(
            select(func.max(Problem.finished_at)).where(Problem.job_id == job_id)
        )
        return last or job.finished_at


def run_system_once(
    questions: list[str],
    cfg: SimConfig,
    *,
    endpoints: int,
    workers: int,
    threads: int | None,
    database: str,
    redis_url: str,
    pg_admin: str,
    tmp: Path,
    worker_env: dict[str, str],
    timeout: float,
    strategy: str = "mutual",
    params: dict[str, Any] | None = None,
    replicas: bool = False,
    stop_after_window: bool = False,
    partial: bool = False,
) -> RunResult:
    """One job through `workers` worker processes on `endpoints` simulated servers: model A on
    the first and B on the last, or with `replicas` A on all of them (one model, many GPUs) and B
    on the first.

    `stop_after_window`: end the run once fewer of the job's problems than its window are left
    unanswered (`window_phase_end`), the rest left unfinished. `partial`: at the timeout, return
    what was measured (`ended="timed out"`) instead of raising."""
    from celery import current_app

    from db import migrate
    from rstar.inputs import parse_problems
    from rstar.roster import ModelEntry
    from tasks.submit import submit_job
    from workers.celery_app import create_app
    from workers.settings import Settings

    with fresh_database(database, tmp, pg_admin) as db_url, simulators(cfg, endpoints, tmp) as sims:
        migrate.upgrade(db_url)
        _flush_redis(redis_url)
        urls = _role_urls(sims)
        env = _worker_env(db_url, redis_url, worker_env)
        if replicas:
            fleet = ModelEntry("A", sims[0].url, tuple(s.url for s in sims[1:]))
            roster = [fleet, ModelEntry("B", sims[0].url)]
            env["RSTAR_MODELS"] = ",".join(f"{m.name}=" + ",".join(m.urls) for m in roster)
        else:
            roster = [ModelEntry(name, url) for name, url in urls.items()]
            env.update({"RSTAR_MODEL_A_URL": urls["A"], "RSTAR_MODEL_B_URL": urls["B"]})
        data = "".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(questions))
        problems = parse_problems(data.encode())
        # RSTAR_JOB_WINDOW for the submit too, when the run sets it (else the job's own, from its
        # servers' slots).
        window = env.get("RSTAR_JOB_WINDOW")
        settings = Settings(
            database_url=db_url, broker_url=redis_url, job_window=int(window) if window else None
        )
        previous = current_app._get_current_object()
        app = create_app(settings)
        app.set_current()
        try:
            served = [s.url for s in sims] if replicas else list(urls.values())
            with worker_processes(workers, served, threads, env, tmp) as procs:
                window = CpuWindow()
                window.open(redis_url)
                sim_cpu0 = sum(s.cpu_seconds() for s in sims)
                cpu0 = [proc_cpu_seconds(p.pid) for p in procs]
                for s in sims:
                    s.reset()
                started_utc = datetime.now(UTC).replace(tzinfo=None)
                t0, c0 = time.monotonic(), time.process_time()
                job = submit_job(
                    settings=settings,
                    name="bench",
                    strategy_name=strategy,
                    params=dict(params or {}),
                    models=roster,
                    source=None,
                    problems=problems,
                )
                submit_wall, submit_cpu = time.monotonic() - t0, time.process_time() - c0
                last_needed = window_phase_answers(len(questions), job.window)
                finished: datetime | None = None
                ended = "finished"
                while finished is None:
                    if time.monotonic() - t0 > timeout:
                        if not partial:
                            raise RuntimeError(f"the job did not finish within {timeout} s; see {tmp}")
                        ended, finished = "timed out", datetime.now(UTC).replace(tzinfo=None)
                        break
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError(f"a worker died; see {tmp}")
                    time.sleep(0.25)
                    finished = _finished_at(db_url, job.job_id)
                    if finished is None and stop_after_window:
                        times = _answer_times(db_url, job.job_id, started_utc)
                        if len(times) >= last_needed:
                            ended = "stopped"
                            finished = started_utc + timedelta(seconds=times[last_needed - 1])
                makespan = (finished - started_utc).total_seconds()
                cpu = sum(proc_cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True))
                rss = max(proc_peak_rss_mb(p.pid) for p in procs)
                window.close(redis_url)
                sim_cpu = sum(s.cpu_seconds() for s in sims) - sim_cpu0
                totals, series = _sim_totals(sims)
        finally:
            app.close()
            previous.set_current()
        rows, answered, hist, calls, sequences = _count_rows(db_url, job.job_id)
        answer_times = _answer_times(db_url, job.job_id, started_utc)
        if threads is None:  # what the worker sized itself to, from its start-up line
            found = re.search(r"worker: (\d+) threads", (tmp / "worker0.log").read_text(errors="replace"))
            threads = int(found.group(1)) if found else 0
    return RunResult(
        driver="system",
        endpoints=endpoints,
        workers=workers,
        database=database,
        problems=len(questions),
        makespan_s=makespan,
        calls=calls,
        sequences=sequences,
        answered=answered,
        server_requests=totals["requests"],
        rejected_429=totals["rejected_429"],
        mean_in_flight=totals["mean_in_flight"],
        peak_in_flight=totals["peak_in_flight"],
        busy_fraction=totals["busy_fraction"],
        machine_cpu_busy=window.busy_fraction,
        simulator_cpu_s=sim_cpu,
        redis_cpu_s=window.redis_s,
        driver_cpu_s=cpu,
        submit_wall_s=submit_wall,
        submit_cpu_s=submit_cpu,
        worker_peak_rss_mb=rss,
        rows_written=rows,
        threads_per_worker=threads,
        rounds=hist,
        series=series,
        first_answer_s=answer_times[0] if answer_times else None,
        median_answer_s=answer_times[len(answer_times) // 2] if answer_times else None,
        hundredth_answer_s=answer_times[99] if len(answer_times) >= 100 else None,
        answer_times=answer_times,
        job_window=job.window,
        ended=ended,
    )


def _answer_times(db_url: str, job_id: int, started_utc: datetime) -> list[float]:
    """Seconds from `started_utc` to each problem's answer, in order."""
    from sqlalchemy import select

    from db.models import Problem
    from db.session import session_scope

    with session_scope(db_url) as s:
        done = s.scalars(
            select(Problem.finished_at)
            .where(Problem.job_id == job_id, Problem.finished_at.is_not(None))
            .order_by(Problem.finished_at)
        ).all()
    return [(t - started_utc).total_seconds() for t in done]


# -- reporting ---------------------------------------------------------------------------------


def _hundredth(run: RunResult) -> str:
    """ " the first 100 after 12.0 s (3.1% of the run)," where there were 100."""
    if run.hundredth_answer_s is None:
        return ""
    share = run.hundredth_answer_s / run.makespan_s if run.makespan_s else 0.0
    return f" the first 100 after {run.hundredth_answer_s:.1f} s ({share:.1%} of the run),"


def window_mean(series: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """The time-weighted mean of a step series [(t, value), ...] (each value holds until the next
    point) over [start, end]."""
    if end <= start or not series:
        return 0.0
    area = 0.0
    for (t, value), (t_next, _) in zip(series, [*series[1:], (max(end, series[-1][0]), 0)], strict=True):
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            area += value * (hi - lo)
    return area / (end - start)


def middle_means(result: RunResult, *, middle: float = 0.8, end: float | None = None) -> list[float]:
    """Each server's mean in flight over the middle `middle` of the run, or of its first `end`
    seconds (the ramp-up and the last problems' tail left out; times from the servers' reset, at
    the start of the run)."""
    end = result.makespan_s if end is None else end
    margin = (1.0 - middle) / 2 * end
    return [window_mean(s, margin, end - margin) for s in result.series]


def window_phase_answers(problems: int, window: int) -> int:
    """How many answers end the phase in which a job keeps its whole window open: with `problems`
    of which at most `window` are started at once, until fewer than the window are left
    unanswered; a job smaller than its window holds all its problems open until its first answer.
    A large job's run is this phase but for its last window's drain (100,000 problems in windows
    of 512: all but the last 0.5%)."""
    return max(problems - window, 0) + 1


def window_phase_end(result: RunResult) -> float | None:
    """Seconds from the start to the end of that phase (None: the run ended before it did)."""
    needed = window_phase_answers(result.problems, result.job_window)
    return result.answer_times[needed - 1] if len(result.answer_times) >= needed else None


def _fmt_row(bare: RunResult, system: RunResult, limit: int) -> str:
    ratio = bare.makespan_s / system.makespan_s if system.makespan_s else 0.0
    seq_multiple = system.cpu_ms_per_sequence / max(bare.cpu_ms_per_sequence, 1e-9)
    cells = [
        str(system.endpoints),
        str(system.workers),
        system.database,
        str(system.threads_per_worker),
        f"{system.calls} / {bare.calls}",
        f"{bare.makespan_s:.1f}",
        f"{system.makespan_s:.1f}",
        f"**{ratio:.3f}**",
        f"{system.mean_in_flight:.1f} / {bare.mean_in_flight:.1f}",
        " ".join(f"{m / limit:.0%}" for m in middle_means(system))
        + " / "
        + " ".join(f"{m / limit:.0%}" for m in middle_means(bare)),
        f"{system.rejected_429} / {bare.rejected_429}",
        f"{system.cpu_ms_per_call:.2f} ({system.cpu_ms_per_call / max(bare.cpu_ms_per_call, 1e-9):.1f}x "
        f"the bare driver's {bare.cpu_ms_per_call:.2f})",
        f"{system.cpu_ms_per_sequence:.2f} ({seq_multiple:.1f}x"
        f" the bare driver's {bare.cpu_ms_per_sequence:.2f})",
        f"{system.submit_wall_s:.2f} s, "
        f"{1000 * system.submit_cpu_s / max(system.problems, 1):.2f} ms/problem",
        f"{system.worker_peak_rss_mb:.0f}",
        f"{system.rows_per_s:.0f}",
        f"{100 * system.machine_cpu_busy:.0f}% / {100 * bare.machine_cpu_busy:.0f}%",
        f"{system.simulator_cpu_s:.1f} / {system.redis_cpu_s:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| endpoints | workers | database | threads/worker | model calls (system / bare) | bare makespan s "
    "| system makespan s | throughput ratio (system / bare) | mean in-flight per server (system / bare) "
    "| each server's mean in flight over the middle 80% of the run / its limit (system / bare) "
    "| 429s (system / bare) | orchestration CPU ms per call (multiple of the bare driver's) "
    "| CPU ms per generated sequence (multiple of the bare driver's) "
    "| submit (wall, CPU) | worker peak RSS MB "
    "| DB rows written / s | machine CPU busy (system / bare) | simulator / Redis CPU s (system run) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown(
    pairs: list[tuple[RunResult, RunResult]],
    command: str,
    cfg: SimConfig,
    concurrency: int,
    strategy: str = "mutual",
) -> str:
    lines = [
        f"# Throughput: rstar-batch against the bare asyncio driver ({strategy})",
        "",
        "Produced by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores "
        "(simulators, workers, Redis and the database all share them).",
        "",
        TABLE_HEADER,
        *(_fmt_row(b, s, cfg.max_concurrent_requests) for b, s in pairs),
        "",
        "- Throughput ratio = bare makespan / system makespan (system throughput / bare throughput); the "
        "system's makespan runs from the start of `submit` to the last problem's answer.",
        "- Orchestration CPU = CPU seconds of the worker processes during the run / model calls recorded; "
        "the submit's cost (one transaction and the first messages, in the submitting process) is apart. "
        "The bare driver's CPU per call (this process: the same HTTP client, parsing and strategy, no "
        "queue and no database) is measured in the same session, so the multiple compares across "
        "machines where the milliseconds do not.",
        "- Mean in-flight is time-averaged at each simulated server from its first request to its last "
        "reply.",
        f"- Simulator: max_concurrent_requests={cfg.max_concurrent_requests} per server (= the bare "
        f"driver's semaphore, --concurrency {concurrency}), decode step {cfg.step_ms} ms x (1 + batch/"
        f"{cfg.batch_knee:g}), prefill {cfg.prefill_ms} ms + {cfg.prefill_ms_per_token} ms/token, time scale "
        f"{cfg.time_scale}.",
        "",
    ]
    for b, s in pairs:
        lines.append(
            f"- {s.endpoints} endpoint(s), {s.workers} worker(s), {s.database}: answered {s.answered}/"
            f"{s.problems}, rounds {s.rounds} (bare {b.rounds}); sequences {s.sequences} (bare"
            f" {b.sequences}); bare driver CPU {b.cpu_ms_per_call:.2f} ms/call; first answer after"
            f" {s.first_answer_s or 0:.1f} s,{_hundredth(s)} half the problems after"
            f" {s.median_answer_s or 0:.1f} s (makespan {s.makespan_s:.1f} s)."
        )
    return "\n".join(lines) + "\n"


def _resample(series: list[tuple[float, int]], grid: list[float]) -> list[int]:
    out, i, value = [], 0, 0
    for t in grid:
        while i < len(series) and series[i][0] <= t:
            value = series[i][1]
            i += 1
        out.append(value)
    return out


def plot(pairs: list[tuple[RunResult, RunResult]], path: Path, limit: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 3.2 * len(pairs)), squeeze=False)
    for ax, (bare, system) in zip(axes[:, 0], pairs, strict=True):
        end = max(bare.makespan_s, system.makespan_s) + 1.0
        grid = [i * 0.1 for i in range(int(end / 0.1) + 1)]
        for run, colour in ((bare, "tab:blue"), (system, "tab:orange")):
            per_server = [_resample(s, grid) for s in run.series]
            mean = [sum(v) / len(per_server) for v in zip(*per_server, strict=True)] if per_server else []
            label = "bare asyncio driver" if run.driver == "bare" else f"rstar-batch ({run.database})"
            ax.step(grid, mean, where="post", color=colour, label=label, linewidth=1)
        ax.axhline(limit, color="grey", linestyle="--", linewidth=0.8, label="server limit")
        ax.set_title(
            f"{system.endpoints} endpoint(s), {system.workers} worker process(es): "
            f"ratio {bare.makespan_s / system.makespan_s:.3f}"
        )
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("in-flight per server")
        ax.set_ylim(0, limit * 1.15)
        ax.legend(loc="lower center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument(
        "--strategy",
        default="mutual",
        help="the strategy both drivers run: mutual (default) or rstar (the MCTS-shaped mode)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a strategy parameter (VALUE in JSON), repeatable; e.g. --param rollouts=4",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="in-flight requests per endpoint")
    parser.add_argument("--endpoints", type=int, default=1, help="simulated servers (default 1)")
    parser.add_argument(
        "--replicas",
        action="store_true",
        help="model A on every endpoint (one model, many GPUs) and B on the first; default: A on the"
        " first, B on the last",
    )
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1, help="worker processes")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--matrix", action="store_true", help="run 1|2 endpoints x 1|2 worker processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Celery threads per worker (default: its in-flight slots + 25%%)",
    )
    parser.add_argument("--time-scale", type=float, default=SimConfig.time_scale)
    parser.add_argument("--server-limit", type=int, default=None, help="default: --concurrency")
    parser.add_argument("--questions", type=Path, default=GSM8K, help="JSONL with a `question` per line")
    parser.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="file name stem for the .md/.png/.json")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per system run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker and simulator logs")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE", help="extra worker environment"
    )
    args = parser.parse_args(argv)
    # A plain SIGTERM would skip the clean-up (workers, simulators, the PostgreSQL database).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with bench_redis(args.redis_url) as args.redis_url:
            return run(args, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:

    cfg = SimConfig(max_concurrent_requests=args.server_limit or args.concurrency, time_scale=args.time_scale)
    configs = [(1, 1), (1, 2), (2, 1), (2, 2)] if args.matrix else [(args.endpoints, args.workers)]
    questions = load_questions(args.problems, args.questions)
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    params = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.param)}
    pairs: list[tuple[RunResult, RunResult]] = []
    bare_by_endpoints: dict[int, RunResult] = {}
    underfilled: list[int] = []
    tmp = Path(tempfile.mkdtemp(prefix="rstar-bench-"))
    log(f"logs and the SQLite files go to {tmp} (removed after a successful run unless --keep-logs)")
    for endpoints, workers in configs:
        if endpoints not in bare_by_endpoints:
            log(
                f"bare driver: {args.problems} problems, {endpoints} endpoint(s), "
                f"concurrency {args.concurrency}"
            )
            bare = run_bare_once(
                questions,
                cfg,
                endpoints,
                args.concurrency,
                tmp,
                args.strategy,
                params,
                args.replicas,
                redis_url=args.redis_url,
            )
            log(
                f"  makespan {bare.makespan_s:.1f} s, {bare.calls} calls, "
                f"mean in-flight {bare.mean_in_flight:.1f}, peak {bare.peak_in_flight}"
            )
            if bare.peak_in_flight < min(args.concurrency, cfg.max_concurrent_requests):
                # The yardstick must fill what it is compared at, or the ratio flatters the system.
                log(f"  the bare driver never had its {args.concurrency} requests in flight")
                underfilled.append(endpoints)
            bare_by_endpoints[endpoints] = bare
        bare = bare_by_endpoints[endpoints]
        # Each worker gets its share of every server's limit (RSTAR_WORKERS_PER_ENDPOINT) and a
        # quarter more threads than its slots: those threads do the database work around the calls.
        slots = max(1, cfg.max_concurrent_requests // workers) * endpoints
        threads = args.threads or slots + -(-slots // 4)
        log(f"system: {endpoints} endpoint(s), {workers} worker(s) x {threads} threads, {args.database}")
        system = run_system_once(
            questions,
            cfg,
            endpoints=endpoints,
            workers=workers,
            threads=threads,
            database=args.database,
            redis_url=args.redis_url,
            pg_admin=args.postgres_admin_url,
            tmp=tmp,
            worker_env={"RSTAR_WORKERS_PER_ENDPOINT": str(workers), **worker_env},
            timeout=args.timeout,
            strategy=args.strategy,
            params=params,
            replicas=args.replicas,
        )
        ratio = bare.makespan_s / system.makespan_s
        log(
            f"  makespan {system.makespan_s:.1f} s, ratio {ratio:.3f}, {system.calls} calls, "
            f"mean in-flight {system.mean_in_flight:.1f}, 429s {system.rejected_429}, "
            f"CPU {system.cpu_ms_per_call:.2f} ms/call, "
            f"RSS {system.worker_peak_rss_mb:.0f} MB, machine busy {100 * system.machine_cpu_busy:.0f}%"
        )
        pairs.append((bare, system))

    if not args.keep_logs:
        shutil.rmtree(tmp, ignore_errors=True)
    command = "python -m bench.throughput " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    layout = f"{'r' if args.replicas else 'e'}{args.endpoints}-w{args.workers}"
    name = args.name or (f"matrix-{args.database}" if args.matrix else f"{layout}-{args.database}")
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(pairs, command, cfg, args.concurrency, args.strategy)
    (args.out / f"{name}.md").write_text(text + f"\n![in-flight requests over time]({name}.png)\n")
    plot(pairs, args.out / f"{name}.png", cfg.max_concurrent_requests)
    raw = [{"bare": {**asdict(b), "series": None}, "system": {**asdict(s), "series": None}} for b, s in pairs]
    (args.out / f"{name}.json").write_text(json.dumps({"command": command, "runs": raw}, indent=1) + "\n")
    print(text)
    log(f"wrote {args.out / name}.md, .png, .json")
    if underfilled:
        print(
            f"error: the bare driver never reached its concurrency ({args.concurrency} in flight) with"
            f" {', '.join(map(str, underfilled))} endpoint(s): its makespan is no yardstick (more problems?)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
