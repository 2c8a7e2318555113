"""How fast the viewer's pages and the commands answer on a large job, and in how much memory.

    python -m bench.ui_pages --problems 10000 --calls-per-problem 20 [-o docs/results/ui_pages.md]
    python -m bench.ui_pages --problems 1000000 --calls-per-problem 1 --open 1000 -o FILE
    python -m bench.ui_pages --problems 100000 --calls-per-problem 1 --database sqlite -o FILE

Writes a mutual-shaped job straight into a fresh database (PostgreSQL, or a SQLite file; bulk
inserts: each problem gets its rounds of generate, review and refine steps, one call and one output
each, with prompts and replies of a realistic size), as workers leave it: each answered problem
with its judgement and tallies (migration 0007), and the last `--open` problems still running
(no answer, no tallies: their calls are counted live). Starts a real `rstar ui` process on it and
times each page over HTTP: the first request, then the median and the slowest of `--repeat` more.
Then `rstar status`, `rstar results` and `rstar export` (to files) as processes of their own: wall
time (Python's start-up included) and peak memory.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.throughput import DEFAULT_PG_ADMIN, fresh_database

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Solve the problem step by step. " * 30
REPLY = '{"steps": ["Read the problem.", "Compute it: 12 * 4 = 48."], "final_answer": "48"}'


def _fill(
    url: str, problems: int, calls_per_problem: int, seed: int, open_problems: int = 0
) -> tuple[int, str]:
    """One job with `problems` problems and `calls_per_problem` steps, calls and outputs each; the
    last `open_problems` still running."""
    from sqlalchemy import insert

    from db.models import Job, ModelCall, Output, Problem, Selection, Step, utcnow
    from db.session import session_scope

    rng = random.Random(seed)
    now = utcnow()
    models = [{"name": "A", "url": "http://tgi-a:8080"}, {"name": "B", "url": "http://tgi-b:8080"}]
    with session_scope(url) as s:
        status = "active" if open_problems else "finished"
        job = Job(name="large", strategy="mutual", params={"max_rounds": 3}, models=models, status=status)
        job.created_at, job.finished_at = now, None if open_problems else now
        s.add(job)
        s.flush()
        job_id = job.id
    kinds = ("generate", "review", "refine", "review")
    chunk = max(500, 4000 // calls_per_problem)  # rows per statement: a few thousand
    done = problems - open_problems
    for start in range(0, problems, chunk):
        n = min(chunk, problems - start)
        with session_scope(url) as s:
            rows = []
            for i in range(start, start + n):
                ref = str(rng.randint(1, 500))
                right = rng.random() < 0.6
                prompt_tokens = [rng.randint(150, 400) for _ in range(calls_per_problem)]
                completion_tokens = [rng.randint(20, 200) for _ in range(calls_per_problem)]
                answered = i < done
                rows.append(
                    {
                        "job_id": job_id, "item_id": f"p{i}", "line": i + 1,
                        "question": f"Problem {i}: a shop sells {ref} apples. " * 4,
                        "reference": f"#### {ref}", "reference_answer": ref,
                        "status": "answered" if answered else "running",
                        "final_answer": (ref if right else str(int(ref) + 1)) if answered else None,
                        "rounds_used": rng.randint(1, 3) if answered else None, "started_at": now,
                        "finished_at": now if answered else None,
                        # What the worker writes with the answer (0007); nothing while open.
                        "correct": right if answered else None,
                        "calls": calls_per_problem if answered else None,
                        "requests": calls_per_problem if answered else None,
                        "sequences": calls_per_problem if answered else None,
                        "prompt_tokens": sum(prompt_tokens) if answered else None,
                        "completion_tokens": sum(completion_tokens) if answered else None,
                        "_tokens": (prompt_tokens, completion_tokens),
                    }
                )  # fmt: skip
            tokens = [r.pop("_tokens") for r in rows]
            pids = list(s.scalars(insert(Problem).returning(Problem.id, sort_by_parameter_order=True), rows))
            steps = [
                {
                    "problem_id": pid, "key": f"r{k // 4 + 1}.{kinds[k % 4]}.{k}",
                    "kind": kinds[k % 4], "model": "AB"[k % 2], "round": k // 4 + 1, "status": "done",
                    "attempts": 1,
                }
                for pid in pids
                for k in range(calls_per_problem)
            ]  # fmt: skip
            step_ids = list(s.scalars(insert(Step).returning(Step.id, sort_by_parameter_order=True), steps))
            calls = [
                {
                    "step_id": sid, "problem_id": st["problem_id"], "attempt": 1, "endpoint": "http://tgi-a:8080",
                    "server_kind": "tgi", "model": "qwen", "outcome": "ok", "requests": 1, "sequences": 1,
                    "request": {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 512},
                    "response": {"choices": [{"message": {"content": REPLY}}]}, "response_text": REPLY,
                    "finish_reason": "stop",
                    "prompt_tokens": tokens[k // calls_per_problem][0][k % calls_per_problem],
                    "completion_tokens": tokens[k // calls_per_problem][1][k % calls_per_problem],
                    "latency_ms": rng.uniform(200, 3000),
                }
                for k, (sid, st) in enumerate(zip(step_ids, steps, strict=True))
            ]  # fmt: skip
            call_ids = list(
                s.scalars(insert(ModelCall).returning(ModelCall.id, sort_by_parameter_order=True), calls)
            )
            outputs = [
                {
                    "problem_id": st["problem_id"], "step_id": sid, "model_call_id": cid,
                    "round": st["round"], "model": st["model"], "kind": st["kind"], "text": REPLY,
                    "payload": {"steps": ["Read the problem.", "Compute it."], "answer_raw": "48"},
                    "answer": "48",
                }
                for sid, cid, st in zip(step_ids, call_ids, steps, strict=True)
            ]  # fmt: skip
            out_ids = list(
                s.scalars(insert(Output).returning(Output.id, sort_by_parameter_order=True), outputs)
            )
            selections = [
                {
                    "problem_id": pid,
                    "output_id": out_ids[j * calls_per_problem],
                    "answer": "48",
                    "reason": "x",
                }
                for j, pid in enumerate(pids)
                if rows[j]["status"] == "answered"
            ]  # fmt: skip
            if selections:
                s.execute(insert(Selection), selections)
    return job_id, f"p{problems // 2}"


def _time(url: str, repeat: int) -> tuple[float, float, float, int]:
    """The first request's time, then the median and the slowest of `repeat` more, and the size."""
    import httpx

    with httpx.Client(timeout=120) as client:
        t = time.perf_counter()
        first = client.get(url)
        cold = time.perf_counter() - t
        assert first.status_code == 200, (url, first.status_code, first.text[:300])
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            r = client.get(url)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
    return cold, statistics.median(times), max(times), len(first.content)


@dataclass(frozen=True)
class Ran:
    wall: float
    """Seconds, Python's start-up included."""
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_rstar(args: Sequence[str], env: dict[str, str], *, check: bool = True) -> Ran:
    """`rstar ARGS` as a process of its own: its wall time, peak memory and output."""
    code = (
        "import resource, runpy, sys\n"
        "sys.argv = ['rstar', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('cli.main', run_name='__main__')\n"
        "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t
    if check and done.returncode != 0:
        raise SystemExit(f"rstar {' '.join(args)} failed: {done.stderr[-2000:]}")
    last = done.stderr.strip().splitlines()[-1:] or ["0"]
    peak = int(last[0]) / 1024.0 if last[0].isdigit() else 0.0
    return Ran(wall, peak, done.returncode, done.stdout, done.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=10_000)
    parser.add_argument("--calls-per-problem", type=int, default=20)
    parser.add_argument("--open", type=int, default=0, help="the last problems still running (counted live)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--port", type=int, default=8699)
    parser.add_argument("--output", "-o", type=Path)
    args = parser.parse_args(argv)

    from sqlalchemy import create_engine, text

    from db import migrate
    from db.session import dispose_all
    from web.app import PER_PAGE

    tmp = Path(tempfile.mkdtemp(prefix="rstar-ui-pages-"))
    database = ExitStack()
    server = None
    try:
        url = database.enter_context(fresh_database(args.database, tmp, args.postgres_admin_url))
        migrate.upgrade(url)
        t = time.perf_counter()
        job_id, item = _fill(url, args.problems, args.calls_per_problem, seed=7, open_problems=args.open)
        filled = time.perf_counter() - t
        engine = create_engine(url)
        with engine.connect() as conn:  # statistics for the planner, as autovacuum would gather
            conn.execute(text("ANALYZE"))
            conn.commit()
        engine.dispose()
        dispose_all()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
        env["RSTAR_DATABASE_URL"] = url
        env["COLUMNS"] = "200"
        server = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "ui", "--port", str(args.port)],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{args.port}"
        _wait(base)
        pages = {
            "jobs (/)": "/",
            "job, first page": f"/jobs/{job_id}",
            "job, wrong answers, page 40": f"/jobs/{job_id}?outcome=wrong&page=40",
            "job, last page": f"/jobs/{job_id}?page={-(-args.problems // PER_PAGE)}",
            "job, sorted by tokens": f"/jobs/{job_id}?sort=tokens&order=desc",
            "job progress fragment": f"/jobs/{job_id}/progress",
            f"problem ({args.calls_per_problem} calls)": f"/jobs/{job_id}/problems/{item}",
        }
        rows = [(label, *_time(base + path, args.repeat)) for label, path in pages.items()]
        import httpx

        t = time.perf_counter()
        try:
            _time(base + f"/jobs/{job_id}/plots/accuracy.png", 1)
            plot = f"{(time.perf_counter() - t) / 2:.1f} s per request"
        except httpx.TimeoutException:
            plot = "no answer within 120 s (it reads the whole report)"
        server.kill()  # it may still be drawing
        server.wait(timeout=20)
        server = None
        commands = {
            "rstar status": ["status", str(job_id)],
            "rstar results (to a file)": ["results", str(job_id), "-o", str(tmp / "results.jsonl")],
            "rstar export (to a file)": ["export", str(job_id), "-o", str(tmp / "export.jsonl")],
        }
        ran = [(label, run_rstar(cmd, env)) for label, cmd in commands.items()]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        database.close()
        shutil.rmtree(tmp, ignore_errors=True)
    database = "PostgreSQL" if args.database == "postgres" else "SQLite"
    command = "python -m bench.ui_pages " + " ".join(sys.argv[1:] if argv is None else list(argv))
    lines = [
        f"# Viewer page times: {args.problems:,} problems, "
        f"{args.problems * args.calls_per_problem:,} model calls ({database})",
        "",
        f"`{command}` on {os.cpu_count()} cores; the database filled in {filled:.0f} s"
        + (f", the last {args.open:,} problems still running" if args.open else "")
        + f". Each page: a first request, then {args.repeat} timed (median, slowest),"
        " over HTTP to a real `rstar ui` process.",
        "",
        "| page | first request | median | slowest | size |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {label} | {cold * 1000:.0f} ms | {med * 1000:.0f} ms | {worst * 1000:.0f} ms"
            f" | {size / 1024:.0f} KiB |"
            for label, cold, med, worst, size in rows
        ),
        "",
        f"The accuracy plot (`/jobs/{{id}}/plots/accuracy.png`, loaded by the job page after it shows, "
        f"from the whole report): {plot}.",
        "",
        "Commands, each a process of its own (wall time includes Python's start-up):",
        "",
        "| command | wall | peak memory |",
        "|---|---:|---:|",
        *(f"| {label} | {r.wall:.1f} s | {r.peak_mb:.0f} MB |" for label, r in ran),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report, encoding="utf-8")
    return 0


def _wait(base: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/static/style.css", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("rstar ui did not start")


if __name__ == "__main__":
    sys.exit(main())
