"""One model on several servers (`--model A=URL1,URL2,...`): which replica each call goes to, and a
job through a real worker, real Redis and SQLite whose four fake replicas lose one mid-job.

The end-to-end test is the issue's: every problem answered once, the other replicas absorb the
dead one's work, the calls recorded per server equal the replies each server sent, and the replica
rejoins once it answers again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

from sqlalchemy import func, select

from db.models import CallOutcome, Job, ModelCall, Output, Problem
from db.session import session_scope
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply
from tests.support import (
    Oracle,
    celery_worker,
    gsm8k_rows,
    reference,
    rstar,
    service_env,
    wait_until,
    write_jsonl,
)
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint
from workers.replicas import Replica, ReplicaChooser, choose

# -- the choice ------------------------------------------------------------------------------------


def _r(url: str, busy: int, limit: int | None = 4, down: float | None = None) -> Replica:
    return Replica(url, busy, limit, down)


def test_the_parents_replica_is_preferred_while_it_has_a_free_slot() -> None:
    replicas = [_r("a", 3), _r("b", 0), _r("c", 1)]
    assert choose(replicas, prefer="a", now=100.0, down_seconds=10).url == "a"
    full = [_r("a", 4), _r("b", 0), _r("c", 1)]
    assert choose(full, prefer="a", now=100.0, down_seconds=10).url == "b"


def test_the_parents_replica_keeps_a_call_only_if_all_its_sequences_fit() -> None:
    # An expansion of 32 samples: a with 1 of 32 slots taken has room for 31, so the call goes to
    # the emptiest; one of 8 fits there.
    replicas = [_r("a", 1, 32), _r("b", 20, 32), _r("c", 0, 32)]
    assert choose(replicas, prefer="a", now=0.0, down_seconds=10, weight=32).url == "c"
    assert choose(replicas, prefer="a", now=0.0, down_seconds=10, weight=8).url == "a"
    # Nowhere fits it whole: the replica that would be least over its limit.
    crowded = [_r("a", 10, 32), _r("b", 30, 32), _r("c", 12, 64)]
    assert choose(crowded, prefer="b", now=0.0, down_seconds=10, weight=60).url == "c"


def test_a_server_without_a_limit_is_preferred_only_while_it_is_not_fuller_than_the_fallback() -> None:
    assert choose([_r("a", 31, None), _r("b", 0, None)], prefer="a", now=0.0, down_seconds=10).url == "a"
    assert choose([_r("a", 32, None), _r("b", 0, None)], prefer="a", now=0.0, down_seconds=10).url == "b"


def test_without_a_preference_the_least_used_share_wins() -> None:
    # b has more calls but a larger share: 2/8 used against a's 2/4.
    replicas = [_r("a", 2, 4), _r("b", 2, 8), _r("c", 3, 4)]
    assert choose(replicas, prefer=None, now=0.0, down_seconds=10).url == "b"
    assert choose(replicas, prefer="elsewhere", now=0.0, down_seconds=10).url == "b"


def test_a_down_replica_is_left_out_until_its_time_is_up() -> None:
    replicas = [_r("a", 0, down=95.0), _r("b", 3)]
    assert choose(replicas, prefer="a", now=100.0, down_seconds=10).url == "b"
    assert choose(replicas, prefer="a", now=105.0, down_seconds=10).url == "a"  # tried again
    all_down = [_r("a", 0, down=99.0), _r("b", 0, down=97.0)]
    assert choose(all_down, prefer=None, now=100.0, down_seconds=10).url == "b"


def test_concurrent_calls_spread_over_the_replicas_by_their_shares() -> None:
    """Twelve threads choose at once: each choice counts before the next is made, so they land
    2, 4, 6 on replicas with 2, 4 and 6 slots (no burst onto one replica)."""
    chooser = ReplicaChooser()
    limits = {"http://a": 2, "http://b": 4, "http://c": 6}
    chosen: list[str] = []
    ready = threading.Barrier(12)
    release = threading.Event()
    lock = threading.Lock()

    def call() -> None:
        ready.wait()
        with chooser.replica(
            list(limits), prefer=None, limit_of=limits.__getitem__, weight=1, down_seconds=10
        ) as url:
            with lock:
                chosen.append(url)
            release.wait(10)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    wait_until(lambda: len(chosen) == 12, timeout=10, what="twelve choices")
    assert Counter(chosen) == {"http://a": 2, "http://b": 4, "http://c": 6}
    release.set()
    for t in threads:
        t.join()
    assert all(chooser.busy(u) == 0 for u in limits)


def test_a_model_alone_on_a_replicas_server_counts_in_the_choice() -> None:
    """B's calls to A's first server fill it: A's next call goes to the second."""
    chooser = ReplicaChooser()
    limits = {"http://a": 4, "http://b": 4}
    pick = partial(chooser.replica, prefer=None, limit_of=limits.__getitem__, down_seconds=10)
    with pick(["http://a"], weight=3) as b_server:
        assert b_server == "http://a" and chooser.busy("http://a") == 3
        with pick(list(limits), weight=1) as a_server:
            assert a_server == "http://b"
    assert chooser.busy("http://a") == chooser.busy("http://b") == 0


# -- a job on four replicas, one of which dies ------------------------------------------------------

N = 40


def _finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job is not None and job.finished_at is not None


def _ok_calls(db_url: str, job_id: int) -> Counter[str]:
    with session_scope(db_url) as s:
        rows = s.execute(
            select(ModelCall.endpoint, func.count())
            .join(Problem, Problem.id == ModelCall.problem_id)
            .where(Problem.job_id == job_id, ModelCall.outcome == CallOutcome.OK)
            .group_by(ModelCall.endpoint)
        ).all()
    return Counter({str(e): int(n) for e, n in rows})


class Slow:
    """The oracle, a little slow, so that a job is still running when a replica is killed."""

    def __init__(self, oracle: Oracle, delay: float) -> None:
        self.oracle, self.delay = oracle, delay

    def __call__(self, request: FakeRequest) -> Reply | str:
        reply = self.oracle(request)
        return reply if isinstance(reply, Reply) else Reply(text=reply, delay=self.delay)


def _answered(server: FakeInferenceServer) -> int:
    """Generation replies the server sent (status 200)."""
    return server.status_counts.get(200, 0)


def test_a_replica_killed_mid_job_loses_nothing_and_rejoins(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    rows = gsm8k_rows(N, offset=60)
    items = [{"id": f"q{j}", "question": r["question"], "answer": r["answer"]} for j, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "problems.jsonl", items)
    oracle = Oracle({r["question"]: reference(r["answer"]) for r in rows}, set())
    servers = [FakeInferenceServer(Slow(oracle, 0.2), max_concurrent_requests=4).start() for _ in range(4)]
    reborn: FakeInferenceServer | None = None
    try:
        urls = [s.url for s in servers]
        env = service_env(sqlite_url, redis_url, RSTAR_REPLICA_DOWN_SECONDS="1", RSTAR_RETRY_BACKOFF="0.2")
        assert rstar(["db", "upgrade"], env).returncode == 0
        roster = ["--model", "A=" + ",".join(urls), "--model", f"B={urls[0]}", "--param", "max_rounds=1"]
        sub = rstar(["submit", str(path), "--strategy", "mutual-consistency", *roster], env)
        assert sub.returncode == 0, sub.stderr
        job_id = int(sub.stdout.strip())
        # B, the completer, on one of A's replicas (the one that stays up).
        worker_env = {**env, "RSTAR_MODELS": "A=" + ",".join(urls) + f",B={urls[0]}"}
        queues = [CONTROL_QUEUE, *(queue_for_endpoint(u) for u in urls)]
        with celery_worker(worker_env, queues, concurrency=24):
            wait_until(
                lambda: sum(_answered(s) for s in servers) >= 2 * N, timeout=120, what="the job under way"
            )
            dead = servers[1]
            port = dead.port
            dead.stop()
            # The others absorb its work...
            others = [s for s in servers if s is not dead]
            before = [_answered(s) for s in others]
            wait_until(
                lambda: all(_answered(s) > b for s, b in zip(others, before, strict=True)),
                timeout=120,
                what="the other replicas answering after the kill",
            )
            wait_until(lambda: _finished(sqlite_url, job_id), timeout=300, what="the job to finish")
            # ...and it rejoins when it answers again, on the same URL: once its time out is over
            # (RSTAR_REPLICA_DOWN_SECONDS), a call tries it, and it takes its share of a next job.
            reborn = FakeInferenceServer(Slow(oracle, 0.2), max_concurrent_requests=4, port=port).start()
            time.sleep(1.5)
            again = rstar(["submit", str(path), "--strategy", "mutual-consistency", *roster], env)
            assert again.returncode == 0, again.stderr
            second = int(again.stdout.strip())
            wait_until(lambda: _finished(sqlite_url, second), timeout=300, what="the second job to finish")
        with session_scope(sqlite_url) as s:
            statuses = Counter(p.status for p in s.scalars(select(Problem).where(Problem.job_id == job_id)))
        assert statuses == {"answered": N}
        assert _answered(reborn) > 0, "the replica that came back got no work"
        recorded = _ok_calls(sqlite_url, job_id) + _ok_calls(sqlite_url, second)
        sent = Counter({u: _answered(s) for u, s in zip(urls, servers, strict=True)})
        sent[urls[1]] += _answered(reborn)
        assert recorded == sent  # every reply recorded once, none paid twice
        report = rstar(["report", str(job_id), "-o", str(tmp_path / "report")], env)
        assert report.returncode == 0, report.stderr
        table = (tmp_path / "report" / "endpoints.csv").read_text()
        for url in urls:
            assert url in table
        show = rstar(["status", str(job_id)], env)
        assert "(+3 replicas)" in show.stdout
    finally:
        for s in [*servers, *([reborn] if reborn else [])]:
            s.stop()


def test_an_rstar_search_on_two_replicas_keeps_each_branch_on_its_parents_server(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    """With free slots everywhere, a node is expanded on the replica that produced it (the prefix
    cache holds its prompt there): every generator call whose parent came from a generator call is
    served by that call's server; the searches' roots spread over both replicas."""
    from tests.test_rstar_e2e import PARAMS, MctsOracle

    rows = gsm8k_rows(6, offset=150)
    items = [{"id": f"q{j}", "question": r["question"], "answer": r["answer"]} for j, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "p.jsonl", items)
    oracle = MctsOracle(rows)
    with (
        FakeInferenceServer(oracle, kind="llama-server", slots=64) as a1,
        FakeInferenceServer(oracle, kind="llama-server", slots=64) as a2,
        FakeInferenceServer(oracle, kind="tgi") as b,
    ):
        env = service_env(sqlite_url, redis_url)
        assert rstar(["db", "upgrade"], env).returncode == 0
        args = [
            "submit",
            str(path),
            "--strategy",
            "rstar",
            "--model",
            f"A={a1.url},{a2.url}",
            "--model",
            f"B={b.url}",
        ]
        sub = rstar([*args, *(a for p in PARAMS for a in ("--param", p))], env)
        assert sub.returncode == 0, sub.stderr
        job_id = int(sub.stdout.strip())
        queues = [CONTROL_QUEUE, *(queue_for_endpoint(s.url) for s in (a1, a2, b))]
        with celery_worker(env, queues, concurrency=16):
            wait_until(lambda: _finished(sqlite_url, job_id), timeout=180, what="the rstar job")
        assert a1.request_count > 0 and a2.request_count > 0
    with session_scope(sqlite_url) as s:
        query = select(Output.id, ModelCall.endpoint).join(ModelCall, ModelCall.id == Output.model_call_id)
        served = {output_id: endpoint for output_id, endpoint in s.execute(query)}
        pairs = [
            (served[o.id], served[o.parent_id])
            for o in s.scalars(select(Output).where(Output.model == "A", Output.parent_id.is_not(None)))
            if o.parent_id in served and served[o.parent_id] in (a1.url, a2.url)
        ]
        statuses = Counter(p.status for p in s.scalars(select(Problem).where(Problem.job_id == job_id)))
    assert statuses == {"answered": 6}
    assert pairs and all(mine == parents for mine, parents in pairs), Counter(pairs)
