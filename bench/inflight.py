"""How many model requests one worker process keeps in flight (issue 2's figure).

    python -m bench.inflight --problems 200 --concurrency 32 --delay 1.0

Runs the real stack (`rstar submit`, one `celery worker --pool threads`, Redis, SQLite) against the
fake TGI server from the test-suite, which answers every request after `--delay` seconds with a
valid solution or an accepting review (so each problem takes 4 calls), and samples the server's
in-flight count. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import redis

from db import migrate
from db.models import Job
from db.session import session_scope
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply, mean_concurrency
from tests.support import celery_worker, kind_of, review_json, rstar, service_env, solution_json
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds the server takes per request")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/10")
    args = ap.parse_args()

    def respond(req: FakeRequest) -> Reply:
        text = review_json("correct") if kind_of(req.prompt) == "review" else solution_json("42")
        return Reply(text=text, delay=args.delay)

    redis.Redis.from_url(args.broker).flushdb()
    work = Path(tempfile.mkdtemp(prefix="rstar-inflight-"))
    db_url = f"sqlite:///{work}/inflight.db"
    migrate.upgrade(db_url)
    problems = work / "problems.jsonl"
    rows = ({"id": str(i), "question": f"What is {i} + 1?"} for i in range(args.problems))
    problems.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with FakeInferenceServer(respond, kind="tgi") as srv:
        env = service_env(db_url, args.broker, RSTAR_MODEL_A_URL=srv.url, RSTAR_MODEL_B_URL=srv.url)
        sub = rstar(["submit", str(problems), "--name", "inflight"], env)
        assert sub.returncode == 0, sub.stderr
        job_id = int(sub.stdout)
        samples: list[int] = []
        started = time.monotonic()
        queues = [CONTROL_QUEUE, queue_for_endpoint(srv.url)]
        with celery_worker(env, queues, concurrency=args.concurrency, log=work / "worker.log"):
            while True:
                samples.append(srv.in_flight)
                with session_scope(db_url) as s:
                    job = s.get(Job, job_id)
                    if job is not None and job.finished_at is not None:
                        break
                time.sleep(0.05)
        makespan = time.monotonic() - started
        intervals = srv.intervals
        calls = srv.request_count
    ideal = calls * args.delay / args.concurrency
    result = {
        "problems": args.problems,
        "worker_concurrency": args.concurrency,
        "server_delay_s": args.delay,
        "model_calls": calls,
        "peak_in_flight": max(samples),
        "mean_in_flight": round(mean_concurrency(intervals), 1),
        "makespan_s": round(makespan, 1),
        "ideal_makespan_s": round(ideal, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
