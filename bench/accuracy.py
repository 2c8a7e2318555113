"""Accuracy benchmark (not a test): every strategy on the same GSM8K problems with a real local model.

    python -m bench.accuracy --problems 30 --model qwen2.5-coder-0.5b

Starts a local model server (llama.cpp's llama-server with 8 parallel slots serving both roles, or
with `--backend llama-cpp-python` one llama-cpp-python server per role), a Celery worker and a
fresh SQLite database, then runs, one job at a time on the same problems: `cot` (greedy), the
mutual variants, `self-consistency` with k = each variant's mean model calls per problem (rounded),
so the baseline gets the same budget, with and without a greedy first sample (the anchor
mutual-consistency uses), and `cot` sampled at the solutions' temperature. Writes `rstar report`
of all of them, plus the problems and the command, to `--out`.

Each job is submitted with `--resume-from` the one before (a chain back to the first): a request
identical to one already answered (same prompt, temperature, seed and token limit: self-consistency's
first samples are mutual's round-1 solutions, its greedy sample is cot's) is copied from the
audit trail, not generated again. Common random numbers: the jobs differ only where their strategies
differ, and the run costs less. Copied calls count in each job's calls per problem, with 0 latency.

The problems are lines offset+1 .. offset+N of the GSM8K training split (default from line 3101),
which nothing else in the project uses: tests take the first lines, the demo and the bundled sample
the last 100, and lines 3001-3003 were the development set for the time estimate and for choosing
mutual-consistency's default margin.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmodels.servers import BACKENDS, stop_group
from rstar.problem_types import PROBLEM_TYPES

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"
DEFAULT_OUT = REPO / "docs" / "results" / "accuracy"
MUTUAL_VARIANTS = ("mutual", "mutual-consistency")
# What this machine affords per problem (2 CPU cores): 4 rollouts of depth 3, few samples.
RSTAR_BUDGET = (
    "rollouts=4,max_depth=3,a1_samples=2,votes=3,last_votes=5,subquestions=2,cuts=2,a5=false,"
    "max_tokens=320,step_tokens=64"
)


@dataclass
class Run:
    label: str
    strategy: str
    args: list[str]
    job_id: int | None = None
    seconds: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=30, help="how many problems (default 30)")
    ap.add_argument("--offset", type=int, default=3100, help="skip this many lines of train.jsonl")
    ap.add_argument(
        "--dataset",
        type=Path,
        default=GSM8K,
        help="GSM8K train.jsonl, or one of the rStar authors' JSON arrays (../shared/datasets/rstar-paper/):"
        " submitted as it is, its problem type guessed by `rstar submit`",
    )
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="local model preset or .gguf path")
    ap.add_argument("--variants", default=",".join(MUTUAL_VARIANTS), help="mutual variants to run")
    ap.add_argument("--max-rounds", type=int, default=3)
    ap.add_argument(
        "--solution-format",
        default="prose",
        choices=("prose", "json"),
        help="how every strategy's solutions are written (default prose: a 0.5B model reasons more)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.5, help="sampling temperature of every strategy")
    ap.add_argument("--backend", choices=BACKENDS, default="llama-server")
    ap.add_argument("--parallel", type=int, default=8, help="llama-server slots (requests at once)")
    ap.add_argument("--concurrency", type=int, default=None, help="worker threads (default: enough)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report directory")
    ap.add_argument("--database-url", default=None, help="default: a fresh SQLite file in the cache")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/5", help="a Redis database of its own")
    ap.add_argument("--job-timeout", type=float, default=3 * 3600, help="seconds per job at most")
    ap.add_argument("--no-cot-sampled", action="store_true", help="skip cot at the sampling temperature")
    ap.add_argument("--no-report", action="store_true", help="only run the jobs (for a time estimate)")
    ap.add_argument(
        "--suite",
        choices=("mutual", "rstar", "baselines"),
        default="mutual",
        help="mutual: cot, the mutual variants and self-consistency at their calls; rstar: cot, rstar,"
        " self-consistency at rstar's mean generated sequences (and at its tokens), mutual-consistency;"
        " baselines: cot and self-consistency at --sc-samples (any problem type)",
    )
    ap.add_argument(
        "--sc-samples", type=int, default=4, help="baselines suite: self-consistency's k (0: cot only)"
    )
    ap.add_argument(
        "--rstar-params",
        default=RSTAR_BUDGET,
        help=f"rstar's budget as NAME=VALUE,... (default {RSTAR_BUDGET})",
    )
    ap.add_argument(
        "--sc-match",
        choices=("sequences", "tokens", "both"),
        default="both",
        help="rstar suite: give self-consistency rstar's mean sequences, its mean generated tokens, or both",
    )
    ap.add_argument(
        "--rstar-only",
        action="store_true",
        help="rstar suite: cot and rstar only (compare a new rstar with baselines measured before)",
    )
    ap.add_argument(
        "--rollouts-sweep",
        default="",
        help="rstar suite: more budgets, as rollout counts (e.g. 4,12): rstar at each, and"
        " self-consistency at each one's generated tokens",
    )
    ap.add_argument(
        "--ablations",
        default="",
        help="rstar suite: actions to remove one at a time, as the paper's Table 1 does (e.g. a1,a3,a5;"
        " a3 removes A3 with A4)",
    )
    ap.add_argument(
        "--no-mutual-consistency", action="store_true", help="rstar suite: skip mutual-consistency"
    )
    return ap.parse_args(argv)


def write_problems(work: Path, *, dataset: Path, offset: int, n: int) -> tuple[Path, int]:
    """The problems file to submit and its number of problems: records offset+1 .. offset+n of an
    authors' JSON array as they are (`problems.json`), or lines offset+1 .. offset+n of GSM8K's
    training split with ids naming their line (`problems.jsonl`). A record that is one of a problem
    type's few-shot examples is left out (none of the first records of the development slices is)."""
    if dataset.suffix == ".json":
        records = [
            r
            for r in json.loads(dataset.read_text(encoding="utf-8"))[offset : offset + n]
            if not any(k.search and k.search.shows(str(r.get("problem", ""))) for k in PROBLEM_TYPES.values())
        ]
        path = work / "problems.json"
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        return path, len(records)
    path = work / "problems.jsonl"
    rows = []
    with dataset.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line_no <= offset:
                continue
            if len(rows) == n:
                break
            row = json.loads(line)
            rows.append(
                {"id": f"gsm8k-train-{line_no}", "question": row["question"], "answer": row["answer"]}
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, len(rows)


def _shown_path(path: Path) -> str:
    """The data set's path as the docs name it: from the shared folder beside the repository."""
    parts = path.resolve().parts
    if "shared" in parts:  # ../shared/datasets/... beside any checkout or worktree
        return str(Path("..", *parts[parts.index("shared") :]))
    return str(path)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"rstar {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: worker and servers are stopped


def _rstar_params(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for kv in text.split(",") if kv.strip() for k, v in [kv.split("=", 1)]}


def _as_args(params: dict[str, str]) -> list[str]:
    return [a for k, v in params.items() for a in ("--param", f"{k}={v}")]


def _rstar_suite(
    opts: argparse.Namespace, run: Any, common: list[str], mean_cost: Any, cot_job: int | None
) -> None:
    """rstar at each budget (the smallest first: a search of r rollouts is the first r of a longer
    one, so a larger budget copies the smaller one's calls and pays only for its further rollouts,
    and the main budget's figure is in the database long before the sweep ends), its ablations at
    the main budget, then self-consistency at each budget's generated tokens (the largest k first),
    then mutual-consistency."""
    base = {**_rstar_params(opts.rstar_params), "temperature": str(opts.temperature)}
    seed = ["--seed", str(opts.seed)]
    budgets = sorted(
        {int(base.get("rollouts", 16)), *(int(r) for r in opts.rollouts_sweep.split(",") if r.strip())}
    )
    costs: dict[int, tuple[float, float]] = {}
    for rollouts in budgets:
        params = {**base, "rollouts": str(rollouts)}
        done = run(Run(f"rstar, {rollouts} rollouts", "rstar", [*seed, *_as_args(params)]))
        costs[rollouts] = mean_cost(done.job_id)
        _log(f"rstar, {rollouts} rollouts: {costs[rollouts][0]:.1f} sequences and {costs[rollouts][1]:.0f}"
             " generated tokens per problem")  # fmt: skip
    for action in [a.strip() for a in opts.ablations.split(",") if a.strip()]:
        run(Run(f"rstar without {action.upper()}", "rstar", [*seed, *_as_args({**base, action: "false"})]))
    if opts.rstar_only:
        return
    cot_tokens = mean_cost(cot_job)[1] or 1.0
    ks: dict[int, str] = {}
    for rollouts, (seqs, tokens) in costs.items():
        if opts.sc_match in ("tokens", "both"):
            ks.setdefault(
                max(1, round(tokens / cot_tokens)), f"rstar's {tokens:.0f} tokens at {rollouts} rollouts"
            )
        if opts.sc_match in ("sequences", "both"):
            ks.setdefault(max(1, round(seqs)), f"rstar's {seqs:.1f} sequences at {rollouts} rollouts")
    _log(f"self-consistency k = {sorted(ks)} (cot: {cot_tokens:.0f} tokens per problem)")
    # The largest k first: the smaller ones copy all their samples from it.
    for k, why in sorted(ks.items(), reverse=True):
        run(Run(f"self-consistency k={k} (= {why})", "self-consistency", [*common, "--samples", str(k)]))
    if not opts.no_mutual_consistency:
        run(Run("mutual-consistency", "mutual-consistency", [*common, "--max-rounds", str(opts.max_rounds)]))


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    # Started in the background, SIGINT may be ignored and SIGTERM would skip the clean-up.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    command = "python -m bench.accuracy " + shlex.join(sys.argv[1:] if argv is None else argv)
    from workers.settings import get_settings

    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = get_settings().cache_dir / "bench" / f"accuracy-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    db_url = opts.database_url or f"sqlite:///{work}/accuracy.db"
    # Point the settings (and the Celery app, made on import) at this run's database and broker.
    os.environ.update(RSTAR_DATABASE_URL=db_url, RSTAR_BROKER_URL=opts.broker_url)
    get_settings.cache_clear()
    settings = get_settings()

    import redis

    from db import migrate
    from db.jobs import problem_results, status_counts
    from db.models import TERMINAL_PROBLEM_STATES
    from db.session import session_scope
    from localmodels.fetch import fetch_model
    from localmodels.servers import serve_local
    from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

    problems, n = write_problems(work, dataset=opts.dataset, offset=opts.offset, n=opts.problems)
    unit = "records" if problems.suffix == ".json" else "train.jsonl lines"
    model = fetch_model(opts.model, models_dir=settings.models_dir, progress=True)
    migrate.upgrade(db_url)
    # Not flushed: the Redis database may be shared. A stale message of an interrupted run is harmless
    # (steps are claimed with a lease and a done step is skipped).
    redis.Redis.from_url(opts.broker_url).ping()
    _log(f"{n} problems ({opts.dataset.name} {unit} {opts.offset + 1}-{opts.offset + n}), model {model.name}")
    _log(f"database {db_url}, broker {opts.broker_url}, logs in {work}")

    def finished(job_id: int) -> bool:
        with session_scope(db_url) as s:
            counts = status_counts(session=s, job_id=job_id)
        return sum(counts[s] for s in TERMINAL_PROBLEM_STATES) == sum(counts.values())

    def mean_calls(job_id: int) -> float:
        with session_scope(db_url) as s:
            rows = problem_results(session=s, job_id=job_id)
        return sum(r.model_calls for r in rows) / max(1, len(rows))

    def mean_cost(job_id: int) -> tuple[float, float]:
        """(generated sequences, generated tokens) per problem."""
        from sqlalchemy import func, select

        from db.models import ModelCall, Problem

        with session_scope(db_url) as s:
            seqs, tokens = s.execute(
                select(func.coalesce(func.sum(ModelCall.sequences), 0),
                       func.coalesce(func.sum(ModelCall.completion_tokens), 0))
                .join(Problem, Problem.id == ModelCall.problem_id)
                .where(Problem.job_id == job_id)
            ).one()  # fmt: skip
        return seqs / max(1, n), tokens / max(1, n)

    runs: list[Run] = []
    started = time.monotonic()
    with ExitStack() as stack:
        if opts.backend == "llama-server":
            # One server, all cores, both roles: `parallel` requests decode together.
            servers = stack.enter_context(
                serve_local(model, single=True, backend="llama-server", parallel=opts.parallel,
                            n_threads=os.cpu_count() or 1, log_dir=work)
            )  # fmt: skip
            in_flight = opts.parallel
        else:
            servers = stack.enter_context(serve_local(model, log_dir=work))
            in_flight = 2  # one request at a time per llama-cpp-python server; more would only queue
        opts.concurrency = opts.concurrency or in_flight + 2
        env = {
            **os.environ,
            "RSTAR_MODEL_A_URL": servers.url_a,
            "RSTAR_MODEL_B_URL": servers.url_b,
            # A request may wait behind the others on a busy CPU server.
            "RSTAR_REQUEST_TIMEOUT": "600",
            # Known, so no probe: a probe of a server busy with another request can time out.
            "RSTAR_SERVER_KIND": "llama-server" if opts.backend == "llama-server" else "llama-cpp",
            "RSTAR_MAX_IN_FLIGHT": str(in_flight),
        }
        queues = sorted({CONTROL_QUEUE, queue_for_endpoint(servers.url_a), queue_for_endpoint(servers.url_b)})
        worker = _spawn(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "threads",
             "--concurrency", str(opts.concurrency), "--queues", ",".join(queues), "--loglevel", "INFO",
             "--hostname", f"bench-accuracy-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
            env, work / "worker.log",
        )  # fmt: skip
        stack.callback(stop_group, worker, 30.0)
        _log(f"servers A {servers.url_a}, B {servers.url_b}; worker pid {worker.pid}")

        previous: list[int] = []  # each job resumes from the one before: identical calls are copied

        def run(r: Run) -> Run:
            t0 = time.monotonic()
            chain = ["--resume-from", str(previous[-1])] if previous else []
            out = _cli(
                ["submit", str(problems), "--name", r.label, "--strategy", r.strategy, *r.args, *chain], env
            )
            r.job_id = int(out.strip())
            previous.append(r.job_id)
            _log(f"job {r.job_id}: {r.label} submitted")
            while not finished(r.job_id):
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited ({worker.returncode}); see {work / 'worker.log'}")
                if time.monotonic() - t0 > opts.job_timeout:
                    raise SystemExit(f"job {r.job_id} ({r.label}) timed out; see {work}")
                time.sleep(2.0)
            r.seconds = time.monotonic() - t0
            calls = mean_calls(r.job_id)
            _log(f"job {r.job_id}: {r.label} done in {r.seconds:.0f} s, {calls:.2f} calls/problem")
            runs.append(r)
            return r

        fmt = ["--seed", str(opts.seed), "--solution-format", opts.solution_format]
        common = [*fmt, "--temperature", str(opts.temperature)]
        cot = run(Run("cot (greedy)", "cot", fmt))
        if opts.suite == "rstar":
            _rstar_suite(opts, run, common, mean_cost, cot.job_id)
        if opts.suite == "baselines" and opts.sc_samples > 0:
            run(
                Run(
                    f"self-consistency k={opts.sc_samples}",
                    "self-consistency",
                    [*common, "--samples", str(opts.sc_samples)],
                )
            )
        if opts.suite != "mutual":
            opts.no_cot_sampled = True
            opts.variants = ""
        budgets: dict[int, str] = {}
        for variant in [v.strip() for v in opts.variants.split(",") if v.strip()]:
            done = run(Run(variant, variant, [*common, "--max-rounds", str(opts.max_rounds)]))
            assert done.job_id is not None
            budgets.setdefault(max(1, round(mean_calls(done.job_id))), variant)

        # The largest budget first: the smaller ones then copy all their samples from it.
        for i, (k, variant) in enumerate(sorted(budgets.items(), reverse=True)):
            sc = [*common, "--samples", str(k)]
            run(Run(f"self-consistency k={k} (= {variant}'s calls)", "self-consistency", sc))
            if i == 0 or variant == "mutual-consistency":
                run(Run(f"self-consistency k={k}, greedy first (= {variant}'s calls)", "self-consistency",
                        [*sc, "--param", "greedy_first=true"]))  # fmt: skip
        if not opts.no_cot_sampled:
            run(Run(f"cot (T={opts.temperature})", "cot", common))
    total = time.monotonic() - started
    _log(f"all jobs done in {total / 60:.1f} min")

    if opts.no_report:
        return
    from cli.report import generate_report

    job_ids = [r.job_id for r in runs if r.job_id is not None]
    preamble = "\n".join(
        [
            "Produced by:",
            "",
            "```bash",
            command,
            "```",
            "",
            f"- problems: {n}, {unit} {opts.offset + 1}-{opts.offset + n} of `{_shown_path(opts.dataset)}`"
            f" (copied to `{problems.name}` here); no other part of the project uses them.",
            f"- model: `{model.name}` for both A and B, "
            + (
                f"one llama.cpp llama-server with {opts.parallel} parallel slots for both roles "
                f"({os.cpu_count()} CPU threads, no GPU)"
                if opts.backend == "llama-server"
                else f"one llama-cpp-python server per role (1 CPU thread each, {os.cpu_count()} cores)"
            )
            + f"; worker: {opts.concurrency} threads.",
            "- jobs, one at a time, in this order: "
            + "; ".join(f"{r.job_id} {r.label} ({(r.seconds or 0) / 60:.1f} min)" for r in runs)
            + f". Total {total / 60:.1f} min.",
            f"- seed {opts.seed}; sampling temperature {opts.temperature} for every strategy (cot greedy "
            f"apart); solutions written as {opts.solution_format} by every strategy; mutual variants at "
            f"most {opts.max_rounds} rounds; "
            + (
                f"self-consistency k = {opts.sc_samples}."
                if opts.suite == "baselines"
                else "self-consistency gets k = the mutual variant's mean model calls per problem, rounded."
            ),
            "- each job was submitted with `--resume-from` the job before it: a request identical to one "
            "already answered was copied from the audit trail (0 ms latency in the tables), so wall and "
            "model seconds are not comparable between jobs; calls and tokens count the copies.",
            f"- regenerate the report from the database: `RSTAR_DATABASE_URL={db_url} rstar report "
            f"{' '.join(map(str, job_ids))} -o {opts.out}`",
        ]
    )
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / problems.name).write_bytes(problems.read_bytes())
    generate_report(db_url, job_ids, opts.out, preamble=preamble)
    for r in runs:
        if r.strategy == "rstar" and r.job_id is not None:
            path = opts.out / f"paths-{r.job_id}.jsonl"
            write_paths(db_url, r.job_id, path)
            _log(f"{path.name}: the search's candidate paths (python -m bench.search_trail {path.name})")
    _log(f"report written to {opts.out}")


PATH_FIELDS = (
    "item_id", "output_id", "step_key", "kind", "answer", "selected", "mutually_consistent", "correct",
)  # fmt: skip
"""What a candidate path says without its text: enough to study another choice rule offline."""


def write_paths(db_url: str, job_id: int, path: Path) -> None:
    """The job's candidate paths as `rstar export --trajectories` gives them, less the texts."""
    from db.exports import load_export
    from db.session import session_scope
    from rstar.exports import trajectory_records

    with session_scope(db_url) as session, path.open("w", encoding="utf-8") as out:
        job, problems = load_export(session=session, job_id=job_id)
        for record in trajectory_records(job_id, job.strategy, problems):
            out.write(json.dumps({k: record[k] for k in PATH_FIELDS}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
