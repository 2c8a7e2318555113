"""How fast the viewer's pages answer on a large job: 10,000 problems and 200,000 model calls.

    python -m bench.ui_pages --problems 10000 --calls-per-problem 20 [-o docs/results/ui_pages.md]

Writes a finished mutual-shaped job straight into a fresh PostgreSQL database (bulk inserts: each
problem gets its rounds of generate, review and refine steps, one call and one output each, with
prompts and replies of a realistic size), starts a real `rstar ui` process on it, and times each
page over HTTP: the first request, then the median and the slowest of `--repeat` more.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.throughput import DEFAULT_PG_ADMIN

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Solve the problem step by step. " * 30
REPLY = '{"steps": ["Read the problem.", "Compute it: 12 * 4 = 48."], "final_answer": "48"}'


def _fill(url: str, problems: int, calls_per_problem: int, seed: int) -> tuple[int, str]:
    """One job with `problems` problems and `calls_per_problem` steps, calls and outputs each."""
    from sqlalchemy import insert

    from db.models import Job, ModelCall, Output, Problem, Selection, Step, utcnow
    from db.session import session_scope

    rng = random.Random(seed)
    now = utcnow()
    models = [{"name": "A", "url": "http://tgi-a:8080"}, {"name": "B", "url": "http://tgi-b:8080"}]
    with session_scope(url) as s:
        job = Job(name="large", strategy="mutual", params={"max_rounds": 3}, models=models, status="finished")
        job.created_at, job.finished_at = now, now
        s.add(job)
        s.flush()
        job_id = job.id
    kinds = ("generate", "review", "refine", "review")
    chunk = 500
    for start in range(0, problems, chunk):
        n = min(chunk, problems - start)
        with session_scope(url) as s:
            rows = []
            for i in range(start, start + n):
                ref = str(rng.randint(1, 500))
                right = rng.random() < 0.6
                rows.append(
                    {
                        "job_id": job_id, "item_id": f"p{i}", "line": i + 1,
                        "question": f"Problem {i}: a shop sells {ref} apples. " * 4,
                        "reference": f"#### {ref}", "reference_answer": ref, "status": "answered",
                        "final_answer": ref if right else str(int(ref) + 1),
                        "rounds_used": rng.randint(1, 3), "started_at": now, "finished_at": now,
                    }
                )  # fmt: skip
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
                    "finish_reason": "stop", "prompt_tokens": rng.randint(150, 400),
                    "completion_tokens": rng.randint(20, 200), "latency_ms": rng.uniform(200, 3000),
                }
                for sid, st in zip(step_ids, steps, strict=True)
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
            s.execute(
                insert(Selection),
                [
                    {
                        "problem_id": pid,
                        "output_id": out_ids[j * calls_per_problem],
                        "answer": "48",
                        "reason": "x",
                    }
                    for j, pid in enumerate(pids)
                ],
            )
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=10_000)
    parser.add_argument("--calls-per-problem", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--port", type=int, default=8699)
    parser.add_argument("--output", "-o", type=Path)
    args = parser.parse_args(argv)

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from db import migrate
    from db.session import dispose_all

    name = f"rstar_bench_ui_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    server = None
    try:
        migrate.upgrade(url)
        t = time.perf_counter()
        job_id, item = _fill(url, args.problems, args.calls_per_problem, seed=7)
        filled = time.perf_counter() - t
        dispose_all()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
        env["RSTAR_DATABASE_URL"] = url
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
            "job, sorted by tokens": f"/jobs/{job_id}?sort=tokens&order=desc",
            "job progress fragment": f"/jobs/{job_id}/progress",
            "problem (20 calls)": f"/jobs/{job_id}/problems/{item}",
        }
        rows = [(label, *_time(base + path, args.repeat)) for label, path in pages.items()]
        t = time.perf_counter()
        _time(base + f"/jobs/{job_id}/plots/accuracy.png", 1)
        plot = (time.perf_counter() - t) / 2
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    lines = [
        f"# Viewer page times: {args.problems:,} problems, "
        f"{args.problems * args.calls_per_problem:,} model calls (PostgreSQL)",
        "",
        f"`python -m bench.ui_pages --problems {args.problems} --calls-per-problem {args.calls_per_problem}`"
        f" on {os.cpu_count()} cores; the database filled in {filled:.0f} s. Each page: a first request"
        f" (the answers' judgements are remembered after it), then {args.repeat} timed (median, slowest),"
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
        f"from the whole report): {plot:.1f} s per request.",
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
