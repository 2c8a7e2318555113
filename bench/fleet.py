"""Fleet benchmark: one rstar job on one model served by many simulated GPUs. Is every one full?

    python -m bench.fleet --replicas 2,4,8 --server-limit 32 --time-scale 1.0
    python -m bench.fleet --replicas 2,4 --time-scale 0.25 --param rollouts=4 --stop-after-window

By default each replica gets twice its limit in problems: the window a large job keeps started
(`tasks.submit.job_window`: twice the in-flight slots of the job's servers), so the run has the
work a job of 100,000 problems would have at any moment. An rstar search has only one to a few
sequences in flight at a time (a rollout's steps follow each other), so with fewer problems than
that the servers cannot be full whatever the dispatch does (the earlier runs at 16 a replica).

For each replica count R: R fresh simulated servers (`bench.simulator`, each admitting
`--server-limit` requests at once), the generator A on all of them (`--model A=URL1,...,URLR`) and
the discriminator B on the first, one rstar job at the strategy's defaults (the paper's budget
unless `--param` says otherwise) through `rstar worker` processes as a user starts them (sized by
the worker from the servers' limits; `--workers 2` shares the fleet with
RSTAR_WORKERS_PER_ENDPOINT=2) on a fresh database and a private Redis database (flushed).

Reported per server, as a share of its limit, the mean in flight over the middle 80% (the ramp-up
and the end left out) of two spans:
- the window phase: while the job keeps its whole window open, until fewer problems than the
  window are left unanswered (`bench.throughput.window_phase_answers`). A large job's run is this
  phase but for its last window's drain, so this is the fill a user with 100,000 problems gets.
- the whole run. A job of one window starts all its problems at once and they end together: the
  tail, with nothing left to start, is as long as a problem's life, and over it the servers drain.

`--stop-after-window` ends each run with its window phase (the tail not waited for); a run that
reaches `--timeout` is reported as far as it got. The issue's bar is 90% of each server's limit.
Written to `docs/results/throughput/` (fleet-<database>.md and .json).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.services import REDIS_URL_HELP, bench_redis
from bench.simulator import SimConfig
from bench.throughput import (
    DEFAULT_PG_ADMIN,
    GSM8K,
    RESULTS_DIR,
    RunResult,
    load_questions,
    log,
    middle_means,
    run_system_once,
    window_phase_end,
)

BAR = 0.90


@dataclass(frozen=True)
class ServerRow:
    server: int
    role: str
    window_mean: float | None
    """Mean in flight over the middle 80% of the window phase (None: the run ended before it)."""
    run_mean: float | None
    """... of the whole run (None: the run did not finish)."""
    limit: int

    @property
    def window_fill(self) -> float | None:
        return None if self.window_mean is None else self.window_mean / self.limit

    @property
    def run_fill(self) -> float | None:
        return None if self.run_mean is None else self.run_mean / self.limit


def measured_phase_end(result: RunResult) -> float | None:
    """The end of the window phase as measured: its end, or, for a run that timed out before the
    phase ended, the end of what it recorded (all of it was the phase: the whole window was open
    throughout); None for a run that ended otherwise before the phase did."""
    end = window_phase_end(result)
    return result.makespan_s if end is None and result.ended == "timed out" else end


def server_rows(result: RunResult, limit: int) -> list[ServerRow]:
    """Each server's mean in flight over the window phase and the run; A on all, B on the first."""
    phase_end = measured_phase_end(result)
    phase = middle_means(result, end=phase_end) if phase_end is not None else [None] * len(result.series)
    run = middle_means(result) if result.ended == "finished" else [None] * len(result.series)
    return [
        ServerRow(i + 1, "A, B" if i == 0 else "A", w, r, limit)
        for i, (w, r) in enumerate(zip(phase, run, strict=True))
    ]


def lowest(fills: Sequence[float | None]) -> float | None:
    return None if any(f is None for f in fills) else min(f for f in fills if f is not None)


def _pct(fill: float | None) -> str:
    return "-" if fill is None else f"{fill:.1%}"


def _verdict(fill: float | None) -> str:
    return "-" if fill is None else ("yes" if fill >= BAR else "no")


def run_ok(result: RunResult) -> bool:
    """The run got as far as it was asked: every problem answered, or its window phase over."""
    if result.ended == "finished":
        return result.answered == result.problems
    return result.ended == "stopped"


def markdown(command: str, runs: list[tuple[int, RunResult, list[ServerRow]]], cfg: SimConfig) -> str:
    lines = [
        "# One rstar job on a fleet of replicas",
        "",
        "Produced by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Simulated servers admit {cfg.max_concurrent_requests} requests each (time scale "
        f"{cfg.time_scale}); the generator A runs on every server, the discriminator B on server 1. "
        "Fill is a server's mean in flight over its limit, over the middle 80% of the window phase"
        " (while the job keeps its whole window of problems open: what a large job's run is made of)"
        f" and of the whole run (its last window's drain included); the bar is {BAR:.0%}."
        " Machine busy is the share of this machine's CPU in use over the run: near 100%, the servers"
        " wait for the machine (the simulators, the worker and the database share it), not for the"
        " system's dispatch.",
        "",
        "| replicas | problems | window | answered | run | window phase | calls | sequences | 429s |"
        " worker threads | worker CPU per sequence | simulators' CPU | machine busy |"
        " lowest fill, window phase | every server >= 90% | lowest fill, run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for replicas, r, rows in runs:
        phase_end = measured_phase_end(r)
        so_far = " so far" if window_phase_end(r) is None else ""
        low_window = lowest([row.window_fill for row in rows])
        lines.append(
            f"| {replicas} | {r.problems} | {r.job_window} | {r.answered} | {r.makespan_s:.1f} s, {r.ended} |"
            f" {'-' if phase_end is None else f'{phase_end:.1f} s{so_far}'} | {r.calls} | {r.sequences} |"
            f" {r.rejected_429} | {r.threads_per_worker} | {r.cpu_ms_per_sequence:.2f} ms |"
            f" {r.simulator_cpu_s:.0f} s | {r.machine_cpu_busy:.0%} | {_pct(low_window)} |"
            f" {_verdict(low_window)} | {_pct(lowest([row.run_fill for row in rows]))} |"
        )
    lines += ["", "Per server (mean in flight over the middle 80% of the span):", "",
              "| replicas | server | models | limit | window phase | fill | run | fill |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for replicas, _, rows in runs:
        for row in rows:
            lines.append(
                f"| {replicas} | {row.server} | {row.role} | {row.limit} |"
                f" {'-' if row.window_mean is None else f'{row.window_mean:.1f}'} | {_pct(row.window_fill)} |"
                f" {'-' if row.run_mean is None else f'{row.run_mean:.1f}'} | {_pct(row.run_fill)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", default="2,4,8", help="replica counts to run, e.g. 2,4,8")
    parser.add_argument("--problems", type=int, default=None, help="problems in all, at every fleet size")
    parser.add_argument(
        "--problems-per-replica",
        type=int,
        default=None,
        help="problems per replica: the same work per server at every fleet size (default: twice"
        " --server-limit, a large job's window)",
    )
    parser.add_argument("--server-limit", type=int, default=32, help="requests each simulated server admits")
    parser.add_argument("--time-scale", type=float, default=SimConfig.time_scale)
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="an rstar parameter (JSON value)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the fleet")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--questions", type=Path, default=GSM8K, help="JSONL with a `question` per line")
    parser.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="file name stem (default fleet-<database>)")
    parser.add_argument(
        "--stop-after-window",
        action="store_true",
        help="end each run when its window phase does (fewer problems than the window left unanswered)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds per run; one that reaches it is reported as far as it got",
    )
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with bench_redis(args.redis_url) as args.redis_url:
            return run(args, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    cfg = SimConfig(max_concurrent_requests=args.server_limit, time_scale=args.time_scale)
    if args.problems is None and args.problems_per_replica is None:
        args.problems_per_replica = 2 * args.server_limit
    counts = [int(r) for r in args.replicas.split(",") if r.strip()]
    most = args.problems_per_replica * max(counts) if args.problems_per_replica else args.problems
    every_question = load_questions(most, args.questions)
    params = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.param)}
    tmp = Path(tempfile.mkdtemp(prefix="rstar-fleet-"))
    runs: list[tuple[int, RunResult, list[ServerRow]]] = []
    for replicas in counts:
        problems = args.problems_per_replica * replicas if args.problems_per_replica else args.problems
        questions = every_question[:problems]
        size = f"{replicas} replicas x {args.server_limit} slots"
        log(f"{size}, {problems} problems, workers {args.workers}")
        (tmp / f"r{replicas}").mkdir()
        result = run_system_once(
            questions,
            cfg,
            endpoints=replicas,
            workers=args.workers,
            threads=None,  # as a user starts it: sized from every replica's limit
            database=args.database,
            redis_url=args.redis_url,
            pg_admin=args.postgres_admin_url,
            tmp=tmp / f"r{replicas}",
            worker_env={"RSTAR_WORKERS_PER_ENDPOINT": str(args.workers)},
            timeout=args.timeout,
            strategy="rstar",
            params=params,
            replicas=True,
            stop_after_window=args.stop_after_window,
            partial=True,
        )
        rows = server_rows(result, cfg.max_concurrent_requests)
        fills = ", ".join(_pct(row.window_fill) for row in rows)
        done = f"{result.answered}/{result.problems} answered"
        log(f"  {result.ended} at {result.makespan_s:.1f} s, {done}, fill over the window phase {fills}")
        runs.append((replicas, result, rows))
    shutil.rmtree(tmp, ignore_errors=True)
    command = "python -m bench.fleet " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    name = args.name or f"fleet-{args.database}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(command, runs, cfg)
    (args.out / f"{name}.md").write_text(text)
    raw = [
        {"replicas": n, "makespan_s": r.makespan_s, "ended": r.ended, "job_window": r.job_window,
         "window_phase_s": window_phase_end(r), "answered": r.answered, "calls": r.calls,
         "sequences": r.sequences, "rejected_429": r.rejected_429, "threads": r.threads_per_worker,
         "cpu_ms_per_sequence": r.cpu_ms_per_sequence, "simulator_cpu_s": r.simulator_cpu_s,
         "machine_cpu_busy": r.machine_cpu_busy,
         "servers": [{"server": x.server, "window_mean_in_flight": x.window_mean,
                      "run_mean_in_flight": x.run_mean, "limit": x.limit} for x in rows]}
        for n, r, rows in runs
    ]  # fmt: skip
    (args.out / f"{name}.json").write_text(json.dumps({"command": command, "runs": raw}, indent=1) + "\n")
    print(text)
    log(f"wrote {args.out / name}.md and .json")
    return 0 if all(run_ok(r) for _, r, _ in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
