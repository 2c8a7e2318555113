"""The throughput benchmark's parts: the simulated server keeps its limit, its replies follow the
mutual protocol, and the benchmark runs end to end on a tiny size. No timing is asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from bench import fleet, submit_scale, throughput, tokens_plot
from bench.bare_driver import run_bare
from bench.simulator import SimConfig, SimulatorProcess, agree_round, right_answer
from tests.conftest import REDIS_URL
from tests.fakeserver import FakeInferenceServer, FakeRequest

# The benchmark flushes its Redis database and refuses one that another client uses: not the
# test-suite's own database, whose fixture holds a connection.
BENCH_REDIS_URL = os.environ.get("RSTAR_TEST_BENCH_REDIS_URL", REDIS_URL.rsplit("/", 1)[0] + "/12")
# A database of its own: the throughput test's workers may still hold connections to theirs.
FLEET_REDIS_URL = BENCH_REDIS_URL.rsplit("/", 1)[0] + "/11"


def _chat(url: str) -> int:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Solve.\n<<<\nWhat is 2 + 2?\n>>>"}], "max_tokens": 200}
    ).encode()
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_simulator_refuses_requests_beyond_its_limit_with_429() -> None:
    # Each admitted request takes seconds at time scale 1, so all six overlap the first two.
    with SimulatorProcess(SimConfig(max_concurrent_requests=2, time_scale=1.0)) as sim:
        with urllib.request.urlopen(sim.url + "/info", timeout=10) as resp:
            assert json.loads(resp.read())["max_concurrent_requests"] == 2
        statuses: list[int] = []
        barrier = threading.Barrier(6)

        def one() -> None:
            barrier.wait()
            statuses.append(_chat(sim.url))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = sim.stats()
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    assert stats["peak_in_flight"] == 2
    assert stats["rejected_429"] == 4 and stats["ok"] == 2 and stats["requests"] == 6
    assert stats["series"][-1][1] == 0 and 0 < stats["mean_in_flight"] <= 2


def test_bare_driver_follows_the_scripted_rounds() -> None:
    questions = [f"Problem {i}: what is {i} + {i}?" for i in range(12)]
    with SimulatorProcess(SimConfig(max_concurrent_requests=8, time_scale=0.01)) as sim:
        result = run_bare(questions, {"A": sim.url, "B": sim.url}, concurrency=8)
        stats = sim.stats()
    assert result.rounds == {i: agree_round(q) for i, q in enumerate(questions)}
    # Four calls a round: both solve (or refine), both review.
    assert result.calls == stats["ok"] == sum(4 * agree_round(q) for q in questions)
    assert stats["rejected_429"] == 0 and stats["peak_in_flight"] <= 8


def test_bare_driver_keeps_its_whole_concurrency_in_flight_past_a_hundred() -> None:
    """The yardstick must reach the limit it is given: its HTTP client allowed 100 connections,
    so at 150 the other 50 waited in the pool and the server never saw them. Every reply is held
    until 150 requests are at the server (or 30 s have passed: then the peak says how many came)."""
    n = 150
    holder: list[FakeInferenceServer] = []
    gate = threading.Event()

    def respond(request: FakeRequest) -> str:
        if holder[0].in_flight >= n:
            gate.set()
        gate.wait(30)
        return "The answer is 4."

    with FakeInferenceServer(respond) as server:
        holder.append(server)
        result = run_bare(
            [f"What is {i} + 4 - {i}?" for i in range(n)], {"A": server.url}, concurrency=n, strategy="cot"
        )
        assert server.peak_in_flight == n
    assert result.peak_in_flight == {server.url: n}
    assert result.calls == n and set(result.answers.values()) == {"4"}


def test_bare_driver_fills_every_replica_of_a_model() -> None:
    """A model on two servers: 40 cot calls at concurrency 10 per server put 10 in flight at each
    (every reply is held until 20 are out, or 30 s have passed)."""
    holders: list[FakeInferenceServer] = []
    gate = threading.Event()

    def respond(request: FakeRequest) -> str:
        if sum(h.in_flight for h in holders) >= 20:
            gate.set()
        gate.wait(30)
        return "The answer is 4."

    with FakeInferenceServer(respond) as one, FakeInferenceServer(respond) as two:
        holders += [one, two]
        result = run_bare(
            [f"What is {i} + 4 - {i}?" for i in range(40)],
            {"A": [one.url, two.url]},
            concurrency=10,
            strategy="cot",
        )
        assert one.peak_in_flight == two.peak_in_flight == 10
    assert result.calls == 40 and one.request_count + two.request_count == 40


def test_bare_driver_runs_rstar_searches_against_the_simulator_in_the_papers_shape() -> None:
    questions = [
        f"Tom has {i} apples and buys {i + 2} more. How many apples does he have now?" for i in range(3)
    ]
    params = {"rollouts": 3, "max_depth": 3, "votes": 4, "last_votes": 6, "cuts": 2, "a5": False}
    with SimulatorProcess(SimConfig(max_concurrent_requests=32, time_scale=0.001)) as sim:
        result = run_bare(questions, {"A": sim.url}, concurrency=32, strategy="rstar", params=params)
        stats = sim.stats()
    # The simulator ignores n: every sampled sequence was a request of its own.
    assert result.sequences == result.calls == stats["ok"] > 3 * 3
    assert result.rounds == dict.fromkeys(range(3), 3)
    # Its answers are the question's (right, or right + 1 for one seed in three): it found the
    # question in A2's prose prompts too, which quote it rather than start with "Question:".
    for i, q in enumerate(questions):
        assert result.answers[i] in {str(right_answer(q)), str(right_answer(q) + 1)}, (q, result.answers[i])


def require_redis(url: str) -> None:
    """Skip without Redis there (fail in CI, where it must be)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis does not answer at {url}")
        pytest.skip(f"Redis does not answer at {url}")
    finally:
        client.close()


def test_benchmark_runs_end_to_end_on_five_problems(tmp_path: Path) -> None:
    require_redis(BENCH_REDIS_URL)
    code = throughput.main(
        [
            "--problems", "5", "--concurrency", "4", "--time-scale", "0.02", "--database", "sqlite",
            "--redis-url", BENCH_REDIS_URL, "--out", str(tmp_path), "--name", "tiny", "--timeout", "120",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    (run,) = report["runs"]
    bare, system = run["bare"], run["system"]
    assert system["answered"] == bare["answered"] == 5
    assert system["calls"] == bare["calls"] == system["server_requests"]
    assert system["rounds"] == bare["rounds"]
    assert system["rejected_429"] == 0
    assert system["worker_peak_rss_mb"] > 0 and system["rows_written"] > 0
    assert "| 1 | 1 | sqlite |" in (tmp_path / "tiny.md").read_text()
    assert (tmp_path / "tiny.png").stat().st_size > 0


def test_window_mean_weighs_each_value_by_how_long_it_held() -> None:
    series = [(0.0, 0), (1.0, 4), (3.0, 2), (4.0, 0)]
    assert throughput.window_mean(series, 0.0, 4.0) == (4 * 2 + 2 * 1) / 4
    assert throughput.window_mean(series, 1.0, 3.0) == 4.0  # the middle only
    assert throughput.window_mean(series, 2.0, 6.0) == (4 * 1 + 2 * 1) / 4  # 0 after the last point


def test_fleet_benchmark_runs_one_rstar_job_on_two_replicas(tmp_path: Path) -> None:
    """`python -m bench.fleet`: A on both simulated servers, B on the first; every problem answered,
    both servers used, no 429."""
    require_redis(FLEET_REDIS_URL)
    code = fleet.main(
        [
            "--replicas", "2", "--problems", "4", "--server-limit", "6", "--time-scale", "0.02",
            "--param", "rollouts=2", "--param", "max_depth=2", "--database", "sqlite",
            "--redis-url", FLEET_REDIS_URL, "--out", str(tmp_path), "--name", "tiny", "--timeout", "300",
        ]
    )  # fmt: skip
    assert code == 0
    (run,) = json.loads((tmp_path / "tiny.json").read_text())["runs"]
    assert run["answered"] == 4 and run["rejected_429"] == 0 and run["ended"] == "finished"
    assert [s["limit"] for s in run["servers"]] == [6, 6]
    # 4 problems, a window of 32 (the least a job gets): all open until the first answer.
    assert run["job_window"] == 32 and 0 < run["window_phase_s"] <= run["makespan_s"]
    assert all(s["run_mean_in_flight"] > 0 for s in run["servers"]), run["servers"]
    assert all(s["window_mean_in_flight"] > 0 for s in run["servers"]), run["servers"]
    assert "| 2 | 2 | A |" in (tmp_path / "tiny.md").read_text()


def _fleet_run(answer_times: list[float], *, problems: int, window: int, ended: str) -> throughput.RunResult:
    """Two servers: the first full (4 of 4) for 10 s then empty, the second at 2 from 0 s to 20 s."""
    return throughput.RunResult(
        driver="system", endpoints=2, workers=1, database="sqlite", problems=problems,
        makespan_s=answer_times[-1] if ended == "finished" else 20.0, calls=0, answered=len(answer_times),
        server_requests=0, rejected_429=0, mean_in_flight=0.0, peak_in_flight=0, busy_fraction=0.0,
        machine_cpu_busy=0.0, simulator_cpu_s=0.0, redis_cpu_s=0.0, driver_cpu_s=0.0,
        series=[[(0.0, 4), (10.0, 0)], [(0.0, 2), (20.0, 0)]],
        answer_times=answer_times, job_window=window, ended=ended,
    )  # fmt: skip


def test_fleet_fill_is_measured_over_the_phase_the_window_is_full_and_over_the_run() -> None:
    """Of 6 problems in a window of 3, the 4th answer ends the phase in which 3 are open; a run
    that did not finish has no whole-run figure; one that timed out before the phase ended was in
    it all along: its phase figure is over what it recorded, and says so."""
    assert throughput.window_phase_answers(6, 3) == 4
    assert throughput.window_phase_answers(2, 32) == 1  # smaller than its window: the first answer
    finished = _fleet_run([5.0, 6.0, 8.0, 10.0, 15.0, 20.0], problems=6, window=3, ended="finished")
    assert throughput.window_phase_end(finished) == 10.0
    first, second = fleet.server_rows(finished, limit=4)
    assert (first.window_fill, second.window_fill) == (1.0, 0.5)  # middle 80% of 0-10 s: 1-9 s
    assert first.run_mean == 4 * (10 - 2) / 16 and second.run_mean == 2.0  # middle 80% of 0-20 s: 2-18 s
    assert fleet.lowest([r.window_fill for r in (first, second)]) == 0.5 and fleet.run_ok(finished)
    stopped = _fleet_run([5.0, 6.0, 8.0, 10.0], problems=6, window=3, ended="stopped")
    assert [r.window_fill for r in fleet.server_rows(stopped, limit=4)] == [1.0, 0.5]
    assert [r.run_fill for r in fleet.server_rows(stopped, limit=4)] == [None, None] and fleet.run_ok(stopped)
    early = _fleet_run([5.0, 6.0], problems=6, window=3, ended="timed out")
    assert throughput.window_phase_end(early) is None and fleet.measured_phase_end(early) == 20.0
    # Middle 80% of the 20 s recorded: 2-18 s, the first server full for 8 of its 16 s.
    assert [r.window_fill for r in fleet.server_rows(early, limit=4)] == [0.5, 0.5]
    assert [r.run_fill for r in fleet.server_rows(early, limit=4)] == [None, None]
    assert fleet.lowest([None, 0.9]) is None and not fleet.run_ok(early)
    assert "| 2 | 6 | 3 | 2 | 20.0 s, timed out | 20.0 s so far |" in fleet.markdown(
        "cmd", [(2, early, fleet.server_rows(early, limit=4))], throughput.SimConfig()
    )


def test_submit_benchmark_measures_a_submit_and_a_kill_trial(tmp_path: Path) -> None:
    """`python -m bench.submit_scale`: the submit stores the job with the window started and the
    rest waiting, the broker holds the window's first steps only; a kill trial passes."""
    out = tmp_path / "submit.md"
    args = ["--problems", "200", "--database", "sqlite", "--window", "16", "-o", str(out)]
    assert submit_scale.main(args) == 0
    row = out.read_text().strip().splitlines()[-1].split(" | ")
    assert row[3:] == ["64", "184 / 16", "64 |"]  # rstar starts with 4 steps a problem
    code = submit_scale.main(
        ["--problems", "60", "--database", "sqlite", "--window", "8", "--kill-trials", "1", "-o", str(out)]
    )
    assert code == 0 and "1 of 1 trials pass." in out.read_text()


def test_tokens_plot_draws_every_job_of_every_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = "job_id,label,strategy,accuracy,ci_low,ci_high,generated_tokens_per_problem\n"
    for run, rows in {
        "a": ["1,1 cot (greedy),cot,0.4,0.3,0.5,260", '2,"2 rstar, 3 rollouts",rstar,0.36,0.2,0.5,4000'],
        "b": ["1,1 self-consistency k=14 (= rstar's tokens),self-consistency,0.46,0.3,0.6,3500"],
    }.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "summary.csv").write_text(head + "\n".join(rows) + "\n")
    points = tokens_plot.read_points([("v5", tmp_path / "a"), ("sc", tmp_path / "b")])
    assert [(p.run, p.label, p.tokens) for p in points] == [
        ("v5", "cot", 260.0), ("v5", "rstar, 3 rollouts", 4000.0), ("sc", "self-consistency k=14", 3500.0)
    ]  # fmt: skip
    out = tmp_path / "plot.png"
    assert tokens_plot.main([f"v5={tmp_path / 'a'}", str(tmp_path / "b"), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert tokens_plot.main([str(tmp_path), "-o", str(out)]) == 2
    assert "no summary.csv" in capsys.readouterr().err


def test_step_cost_counts_cpu_and_statements_per_call() -> None:
    """`python -m bench.step_cost` runs a small job through the real tasks in one process."""
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.step_cost", "--problems", "3"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(
        r"3 problems, mutual, (\d+) model calls, \d+ sequences, (\d+) tasks; CPU ([\d.]+) ms per call,"
        r" [\d.]+ per sequence; ([\d.]+) SQL",
        done.stdout,
    )
    assert found, done.stdout
    calls, tasks, cpu, statements = int(found[1]), int(found[2]), float(found[3]), float(found[4])
    # Every problem takes at least one round (4 calls), one task per model step, and some work.
    assert calls >= 12 and tasks == calls and cpu > 0 and statements > 1


def test_record_bytes_measures_a_release_database_before_and_after_compaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bench.record_bytes` on release d8f57ed's database, upgraded: each request smaller
    by its system prompt (counted once per job), each output's text counted once."""
    import shutil

    from bench import record_bytes
    from db import migrate
    from db.session import dispose_all

    db = tmp_path / "jobs.sqlite"
    shutil.copy(Path(__file__).parent / "data" / "release_0007" / "jobs.sqlite", db)
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    try:
        cot = record_bytes.measure(url, 1)  # greedy cot: one call and one output per problem
        assert cot["problems"] == 6 and cot["calls per problem"] == 1.0
        assert 0 < cot["request now"] < cot["request before"]
        assert 0 < cot["shared texts"] < cot["request before"] - cot["request now"] + 512
        assert cot["output text before"] > 0 and cot["output text now"] == 0
        assert cot["response now"] < cot["response before"] - cot["response_text"]  # its text left out
        assert (
            cot["now"] == pytest.approx(sum(cot[c] for c in record_bytes.NOW)) and cot["now"] < cot["before"]
        )
        assert record_bytes.main([url, "1", "3"]) == 0
    finally:
        dispose_all()
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| job | problems |") and [r.split("|")[1].strip() for r in table[2:]] == [
        "1",
        "3",
    ]


def test_the_accuracy_bench_takes_gsm8k_lines_or_an_authors_array_as_published(tmp_path: Path) -> None:
    from bench.accuracy import write_problems

    lines = tmp_path / "train.jsonl"
    lines.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(5))
    )
    path, n = write_problems(tmp_path, dataset=lines, offset=1, n=2)
    assert (path.name, n) == ("problems.jsonl", 2)
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["gsm8k-train-2", "gsm8k-train-3"]
    array = tmp_path / "svamp.dev.json"
    records = [{"id": f"s{i}", "problem": f"p{i}", "solution": float(i)} for i in range(5)]
    array.write_text(json.dumps(records))
    path, n = write_problems(tmp_path, dataset=array, offset=3, n=10)
    assert (path.name, n) == ("problems.json", 2) and json.loads(path.read_text()) == records[3:]


def test_a_benchmark_uses_a_redis_of_its_own_unless_one_is_named() -> None:
    """The Redis at 6379 is the user's: by default a run gets a redis-server of its own, gone
    afterwards; a named database is refused while another client uses it, else emptied."""
    from bench.services import bench_redis

    with bench_redis(None) as url:
        client = redis.Redis.from_url(url)
        assert client.ping() and not url.startswith("redis://127.0.0.1:6379/")
        client.set("k", "v")
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()

    named = BENCH_REDIS_URL.rsplit("/", 1)[0] + "/10"  # a database no other test connects to
    require_redis(named)
    other = redis.Redis.from_url(named)
    other.set("theirs", "1")
    with pytest.raises(RuntimeError, match="in use by 1 other connection"), bench_redis(named):
        pass
    assert other.get("theirs") == b"1"
    other.close()
    with bench_redis(named) as url:
        assert url == named and redis.Redis.from_url(url).dbsize() == 0
