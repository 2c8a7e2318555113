"""Do the defaults fill the servers? `rstar worker` with no flags against two simulated TGI servers.

    python -m bench.worker_defaults --problems 400 --baseline-threads 32

Starts two `bench.simulator` servers that advertise `max_concurrent_requests` (128) in `/info`,
batch like TGI and answer 429 beyond it, and one `rstar worker` with no flags at all (endpoints from
RSTAR_MODEL_A_URL / RSTAR_MODEL_B_URL, nothing else set: the pool is the worker's own sizing),
submits a mutual job of `--problems` GSM8K questions and reads each server's in-flight trace
(every admission and reply, timed by the server). `--baseline-threads 32` runs it again with
RSTAR_WORKER_CONCURRENCY=32, the fixed pool it had before, for comparison. Prints and writes
`docs/results/worker_defaults.md`: the worker's sizing line and, per server, the mean in flight
over its whole active span and over the middle 80% of it (without the ramp-down of the last
problems), the peak and the 429s. The machinery (databases, Redis, processes) is bench.throughput's.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from bench.services import REDIS_URL_HELP, bench_redis
from bench.simulator import SimConfig
from bench.throughput import (
    DEFAULT_PG_ADMIN,
    GSM8K,
    RunResult,
    load_questions,
    log,
    run_system_once,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "results" / "worker_defaults.md"


@dataclass(frozen=True)
class InFlight:
    mean: float
    """Time-averaged over the server's active span: its first admission to its last reply."""
    middle_mean: float
    """The same over the middle 80% of that span."""
    peak: int


def in_flight(series: Sequence[tuple[float, int]], *, trim: float = 0.1) -> InFlight:
    """Figures of one server's (time, in-flight) trace, a step function of its events."""
    active = [(t, n) for t, n in series if n > 0]
    if not active:
        return InFlight(0.0, 0.0, 0)
    start, end = active[0][0], max(t for t, _ in series)
    span = end - start

    def mean(lo: float, hi: float) -> float:
        area, level, mark = 0.0, 0, lo
        for t, n in series:
            if t > hi:
                break
            if t > lo:
                area += level * (t - mark)
                mark = t
            level = n
        area += level * (hi - mark)
        return area / (hi - lo) if hi > lo else 0.0

    return InFlight(mean(start, end), mean(start + trim * span, end - trim * span), max(n for _, n in series))


@dataclass(frozen=True)
class Measured:
    label: str
    sizing: list[str]
    """The worker's start-up lines about its pool."""
    servers: list[InFlight]
    requests: list[int]
    run: RunResult


def measure(
    label: str, args: argparse.Namespace, cfg: SimConfig, problems: int, env: dict[str, str]
) -> Measured:
    tmp = Path(tempfile.mkdtemp(prefix="rstar-worker-defaults-"))
    log(f"{label}: {problems} problems, two simulated TGI servers at {cfg.max_concurrent_requests}; {tmp}")
    run = run_system_once(
        load_questions(problems, args.questions),
        cfg,
        endpoints=2,
        workers=1,
        threads=None,  # `rstar worker` with no flags
        database=args.database,
        redis_url=args.redis_url,
        pg_admin=args.postgres_admin_url,
        tmp=tmp,
        worker_env=env,
        timeout=args.timeout,
    )
    text = (tmp / "worker0.log").read_text(errors="replace")
    sizing = re.findall(r"^worker: (?:\d+ threads|an endpoint).*$", text, re.M)
    shutil.rmtree(tmp, ignore_errors=True)
    servers = [in_flight(s) for s in run.series]
    # Admissions: the steps up of each server's trace.
    requests = [sum(1 for (_, a), (_, b) in pairwise(s) if b > a) for s in run.series]
    for name, f in zip("AB", servers, strict=True):
        log(f"  server {name}: mean in flight {f.mean:.1f} (middle 80%: {f.middle_mean:.1f}), peak {f.peak}")
    return Measured(label, sizing, servers, requests, run)


def markdown(results: list[Measured], command: str, cfg: SimConfig) -> str:
    rows = [
        f"| {m.label} | {m.run.problems} | {name} | {m.requests[i]} | {f.mean:.1f} | {f.middle_mean:.1f} "
        f"| {f.peak} | {m.run.rejected_429} | {m.run.makespan_s:.1f} |"
        for m in results
        for i, (name, f) in enumerate(zip("AB", m.servers, strict=True))
    ]
    notes = [
        f"- {m.label}: {m.run.calls} model calls, {m.run.answered}/{m.run.problems} answered, worker CPU "
        f"{m.run.cpu_ms_per_call:.1f} ms per call; start-up line: `{' / '.join(m.sizing)}`"
        for m in results
    ]
    return "\n".join(
        [
            "# `rstar worker` with no flags: in flight on two TGI servers that advertise "
            f"{cfg.max_concurrent_requests}",
            "",
            "```bash",
            command,
            "```",
            "",
            f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores "
            "(simulators, worker, Redis and the database share them). Two `bench.simulator` servers "
            f"(max_concurrent_requests={cfg.max_concurrent_requests} in `/info`, 429 beyond it, "
            f"time scale {cfg.time_scale}); one `rstar worker` started with no flags, its endpoints "
            f"from RSTAR_MODEL_A_URL / _B; a mutual job of GSM8K problems on {results[0].run.database}.",
            "",
            "| worker | problems | server | requests | mean in flight (whole run) "
            "| mean in flight (middle 80%) | peak in flight | 429s (both) | makespan s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *notes,
            "- Mean in flight is time-averaged from the server's first admission to its last reply; the "
            "whole-run mean includes the ramp-down, when the last problems' later rounds cannot fill "
            "the servers.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=400)
    parser.add_argument("--server-limit", type=int, default=128, help="max_concurrent_requests of each")
    parser.add_argument("--time-scale", type=float, default=1.0, help="1.0: GPU-like call times (seconds)")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=None,
        help="also run with RSTAR_WORKER_CONCURRENCY set to this (32: the old default), for comparison",
    )
    parser.add_argument("--baseline-problems", type=int, default=100)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--questions", type=Path, default=GSM8K)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per job")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    cfg = SimConfig(max_concurrent_requests=args.server_limit, time_scale=args.time_scale)
    with bench_redis(args.redis_url) as args.redis_url:
        results = [measure("no flags", args, cfg, args.problems, {})]
        if args.baseline_threads:
            env = {"RSTAR_WORKER_CONCURRENCY": str(args.baseline_threads)}
            label = f"RSTAR_WORKER_CONCURRENCY={args.baseline_threads}"
            results.append(measure(label, args, cfg, args.baseline_problems, env))
    command = "python -m bench.worker_defaults " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    text = markdown(results, command, cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
