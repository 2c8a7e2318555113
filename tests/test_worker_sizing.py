"""`rstar worker` sizes its thread pool from its endpoints' limits, unless told a number."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cli import main as cli_main
from tests.conftest import SettingsEnv
from tests.fakeserver import FakeInferenceServer
from workers.settings import CONTROL_THREADS, FALLBACK_SLOTS, Settings, pool_threads

# -- the arithmetic ---------------------------------------------------------------------------------


def test_a_quarter_more_than_the_slots_plus_the_control_queue() -> None:
    assert pool_threads([128, 128], fallback=32, control=1) == 321
    assert pool_threads([64], fallback=32, control=1) == 81
    assert pool_threads([10], fallback=32, control=0) == 13  # 12.5 rounds up: never fewer than asked
    assert pool_threads([1], fallback=32, control=0) == 2


def test_an_endpoint_that_does_not_say_counts_the_fallback() -> None:
    assert pool_threads([None], fallback=32, control=1) == 41
    assert pool_threads([128, None], fallback=32, control=1) == 201
    assert pool_threads([None, None]) == pool_threads([FALLBACK_SLOTS, FALLBACK_SLOTS])


def test_the_defaults() -> None:
    assert pool_threads([]) == CONTROL_THREADS  # no model endpoint: the control queue only
    assert Settings().worker_concurrency is None  # unset: sized from the servers


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
def exec_args(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """What `rstar worker` would exec, instead of exec'ing it."""
    calls: list[list[str]] = []
    monkeypatch.setattr(cli_main.os, "execvp", lambda _file, argv: calls.append(list(argv)))
    # Whatever the command leaves in the environment for the Celery process goes with the test.
    monkeypatch.setattr(cli_main.os, "environ", dict(cli_main.os.environ))
    yield calls


def run_worker(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main.app, ["worker", *args])
    assert result.exit_code == 0, result.output
    return result.exit_code, result.output


def concurrency_of(argv: list[str]) -> int:
    return int(argv[argv.index("--concurrency") + 1])


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_no_flags_fill_two_tgi_servers(settings_env: SettingsEnv, exec_args: list[list[str]]) -> None:
    with (
        FakeInferenceServer(max_concurrent_requests=128) as a,
        FakeInferenceServer(max_concurrent_requests=128) as b,
    ):
        settings_env.setenv("RSTAR_MODEL_A_URL", a.url)
        settings_env.setenv("RSTAR_MODEL_B_URL", b.url)
        _, out = run_worker([])
    assert concurrency_of(exec_args[0]) == 321
    assert (
        f"worker: 321 threads = 1.25 x (128 for {a.url} (TGI max_concurrent_requests 128) + 128 for "
        f"{b.url} (TGI max_concurrent_requests 128)) + 1 for rstar.control"
    ) in out.replace("\n", " ")


def test_the_share_of_each_worker_and_an_explicit_max_in_flight(
    settings_env: SettingsEnv, exec_args: list[list[str]]
) -> None:
    with FakeInferenceServer(max_concurrent_requests=128) as a:
        settings_env.setenv("RSTAR_WORKERS_PER_ENDPOINT", "4")
        _, out = run_worker(["--endpoint", a.url])
        assert concurrency_of(exec_args[-1]) == 32 + 8 + 1
        assert "(TGI max_concurrent_requests 128 / 4 workers)" in out
        settings_env.setenv("RSTAR_MAX_IN_FLIGHT", "16")  # wins over the server's limit
        _, out = run_worker(["--endpoint", a.url, "--endpoint", a.url])  # the same endpoint once
        assert concurrency_of(exec_args[-1]) == 16 + 4 + 1
        assert f"16 for {a.url} (RSTAR_MAX_IN_FLIGHT 16)" in out


def test_an_endpoint_that_is_down_or_silent_gets_the_fallback_and_says_so(
    settings_env: SettingsEnv, exec_args: list[list[str]]
) -> None:
    down = closed_port_url()
    with FakeInferenceServer(kind="vllm") as silent:  # vLLM reports no limit
        _, out = run_worker(["--endpoint", down, "--endpoint", silent.url])
    assert concurrency_of(exec_args[0]) == pool_threads([None, None]) == 81
    flat = out.replace("\n", " ")
    assert f"32 for {down} (not reachable: " in flat and "32 assumed" in flat
    assert f"32 for {silent.url} (vllm server reports no limit; 32 assumed)" in flat
    assert "did not say its limit" in flat


def test_concurrency_and_the_environment_override(
    settings_env: SettingsEnv, exec_args: list[list[str]]
) -> None:
    down = closed_port_url()  # not asked: nothing to size
    _, out = run_worker(["--endpoint", down, "--concurrency", "7"])
    assert concurrency_of(exec_args[-1]) == 7 and "worker: 7 threads (--concurrency)" in out
    settings_env.setenv("RSTAR_WORKER_CONCURRENCY", "9")
    _, out = run_worker(["--endpoint", down])
    assert concurrency_of(exec_args[-1]) == 9 and "worker: 9 threads (RSTAR_WORKER_CONCURRENCY)" in out
    _, out = run_worker(["--endpoint", down, "--concurrency", "7"])  # the flag wins
    assert concurrency_of(exec_args[-1]) == 7


def test_a_password_in_an_endpoint_url_is_not_printed(
    settings_env: SettingsEnv, exec_args: list[list[str]]
) -> None:
    down = closed_port_url().replace("http://", "http://user:hunter2@")
    with FakeInferenceServer(max_concurrent_requests=8) as up:
        with_password = up.url.replace("http://", "http://user:hunter2@")
        _, out = run_worker(["--endpoint", with_password, "--endpoint", down])
    assert concurrency_of(exec_args[0]) == pool_threads([8, None])
    sizing = [line for line in out.splitlines() if line.startswith("worker: ") and "threads" in line]
    assert len(sizing) == 1 and "hunter2" not in sizing[0] and "user:***@" in sizing[0]


def test_a_malformed_roster_in_the_environment_is_refused_not_skipped(
    settings_env: SettingsEnv, exec_args: list[list[str]]
) -> None:
    with FakeInferenceServer(max_concurrent_requests=8) as up:
        settings_env.setenv("RSTAR_MODELS", f"A={up.url},B=ftp://nowhere")
        result = CliRunner().invoke(cli_main.app, ["worker"])
    assert result.exit_code == 2
    assert "B" in result.output and "ftp://nowhere" in result.output
    assert exec_args == []  # no worker started on the half of the roster that parsed
