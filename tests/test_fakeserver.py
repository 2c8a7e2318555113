"""The fake inference server over real HTTP, and how huggingface_hub's InferenceClient reacts to its faults.

The exception tests double as documentation of huggingface_hub 2.4's error surface, which the model
client classifies into retryable / permanent failures.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    IncompleteGenerationError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
    UnknownError,
    ValidationError,
)

from tests.fakeserver import (
    FakeInferenceServer,
    FakeRequest,
    Reply,
    count_tokens,
    mean_concurrency,
    scripted,
)

MSGS = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _no_hub_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Otherwise InferenceClient's first calls GET huggingface.co/api/agent-harnesses to build the
    # user-agent, through the same connection pool (HF_HUB_OFFLINE can't help: it blocks localhost too).
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.fixture
def tgi() -> Iterator[FakeInferenceServer]:
    with FakeInferenceServer(scripted([("hi", "Hello there, friend")], default="?"), kind="tgi") as srv:
        yield srv


def _post(client: httpx2.Client, srv: FakeInferenceServer, content: str, **extra: Any) -> httpx2.Response:
    return client.post(f"{srv.url}{CHAT}", json={"messages": [{"role": "user", "content": content}], **extra})


# ----------------------------------------------------------------- happy paths through huggingface_hub


def test_chat_completion_through_huggingface_hub(tgi: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=tgi.url, timeout=5)
    out = client.chat_completion(messages=MSGS, max_tokens=50, seed=7, temperature=0.2)

    assert out.choices[0].message.content == "Hello there, friend"
    assert out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (1, 3, 4)
    assert out.model == tgi.model_id
    [req] = tgi.requests
    assert (req.path, req.prompt, req.index) == (CHAT, "hi", 0)
    assert req.messages == MSGS
    # With base_url, huggingface_hub sends model "dummy" and drops None-valued parameters.
    assert req.body == {
        "model": "dummy",
        "messages": MSGS,
        "max_tokens": 50,
        "seed": 7,
        "temperature": 0.2,
        "stream": False,
    }
    assert req.headers["content-type"] == "application/json"
    assert tgi.status_counts == Counter({200: 1})


def test_chat_completion_truncates_at_max_tokens_and_stop() -> None:
    text = " ".join(f"w{i}" for i in range(30))
    with FakeInferenceServer(lambda r: text) as srv:
        client = InferenceClient(base_url=srv.url, timeout=5)
        out = client.chat_completion(messages=MSGS, max_tokens=10)
        stopped = client.chat_completion(messages=MSGS, max_tokens=100, stop=["w5 "])
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.content == " ".join(f"w{i}" for i in range(10))
    assert out.usage.completion_tokens == 10
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == "w0 w1 w2 w3 w4 "  # chat omits the stop sequence


def test_text_generation_with_details(tgi: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=tgi.url, timeout=5)
    out = client.text_generation("hi", details=True, max_new_tokens=20, seed=3)
    short = client.text_generation("hi", max_new_tokens=2)

    assert out.generated_text == "Hello there, friend"
    assert out.details is not None
    assert (out.details.finish_reason, out.details.generated_tokens, out.details.seed) == ("eos_token", 3, 3)
    assert short == "Hello there,"
    first = tgi.requests[0]
    assert first.path == "/"  # base_url is posted to as-is: TGI's compat route
    assert first.body == {"inputs": "hi", "parameters": {"details": True, "max_new_tokens": 20, "seed": 3}}
    assert first.messages == [{"role": "user", "content": "hi"}]


def test_generate_route_finish_reasons() -> None:
    with FakeInferenceServer(lambda r: "a b STOP c d") as srv, httpx2.Client(timeout=5) as client:

        def gen(**params: Any) -> dict[str, Any]:
            r = client.post(f"{srv.url}/generate", json={"inputs": "q", "parameters": params})
            return r.json()

        assert gen() == {"generated_text": "a b STOP c d"}
        assert gen(details=True, stop=["STOP"])["details"]["finish_reason"] == "stop_sequence"
        assert gen(details=True, stop=["STOP"])["generated_text"] == "a b STOP"  # TGI keeps it
        assert gen(details=True, max_new_tokens=2)["details"]["finish_reason"] == "length"
        override = Reply(text="x", finish_reason="stop")  # mapped to TGI's vocabulary
        srv.inject(override)
        assert gen(details=True)["details"]["finish_reason"] == "eos_token"


@pytest.mark.parametrize(
    ("response_format", "received"),
    [
        # Passed through, but huggingface_hub strips None values recursively (the "default": null).
        (
            {"type": "json", "value": {"type": "object", "properties": {"a": {"default": None}}}},
            {"type": "json", "value": {"type": "object", "properties": {"a": {}}}},
        ),
        (
            {"type": "json_object", "schema": {"type": "object", "properties": {"a": {"default": None}}}},
            {"type": "json_object", "schema": {"type": "object", "properties": {"a": {}}}},
        ),
        # Rewritten to TGI's grammar form: the name is dropped, the schema kept as-is.
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "properties": {"a": {"default": None}}},
                },
            },
            {"type": "json_object", "value": {"type": "object", "properties": {"a": {"default": None}}}},
        ),
    ],
    ids=["json", "json_object", "json_schema"],
)
def test_response_format_as_sent_by_huggingface_hub(
    tgi: FakeInferenceServer, response_format: dict[str, Any], received: dict[str, Any]
) -> None:
    InferenceClient(base_url=tgi.url, timeout=5).chat_completion(
        messages=MSGS, max_tokens=5, response_format=response_format
    )
    body = tgi.requests[-1].body
    assert body is not None
    assert body["response_format"] == received


# ----------------------------------------------------------------- faults as huggingface_hub sees them


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (429, "overloaded"),
        (422, "validation"),
        (424, "generation"),
        (500, "incomplete_generation"),
        (503, "unhealthy"),
    ],
)
def test_chat_http_errors_are_hfhubhttperror(tgi: FakeInferenceServer, status: int, error_type: str) -> None:
    tgi.inject(Reply(status=status))
    with pytest.raises(HfHubHTTPError) as info:
        InferenceClient(base_url=tgi.url, timeout=5).chat_completion(messages=MSGS, max_tokens=5)
    assert info.value.response.status_code == status
    assert info.value.response.json()["error_type"] == error_type
    assert isinstance(info.value, httpx2.HTTPError)  # every huggingface_hub error below is one


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (429, OverloadedError),
        (422, ValidationError),
        (424, GenerationError),
        (500, IncompleteGenerationError),
        (503, UnknownError),
    ],
)
def test_text_generation_http_errors_are_typed(
    tgi: FakeInferenceServer, status: int, exc_type: type[TextGenerationError]
) -> None:
    tgi.inject(Reply(status=status))
    with pytest.raises(exc_type) as info:
        InferenceClient(base_url=tgi.url, timeout=5).text_generation("hi", max_new_tokens=5)
    # Not an HfHubHTTPError: the HTTP response hangs off the cause.
    assert not isinstance(info.value, HfHubHTTPError)
    cause = info.value.__cause__
    assert isinstance(cause, HfHubHTTPError)
    assert cause.response.status_code == status


@pytest.mark.parametrize("method", ["chat", "text"])
def test_hang_trips_client_timeout(tgi: FakeInferenceServer, method: str) -> None:
    tgi.inject(Reply(hang=True))
    client = InferenceClient(base_url=tgi.url, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(InferenceTimeoutError) as info:
        if method == "chat":
            client.chat_completion(messages=MSGS, max_tokens=5)
        else:
            client.text_generation("hi", max_new_tokens=5)
    assert time.monotonic() - start < 3
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, httpx2.ReadTimeout)


def test_bad_bodies(tgi: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=tgi.url, timeout=5)

    tgi.inject(Reply(raw_body=b'{"choices": ['))
    with pytest.raises(json.JSONDecodeError):
        client.chat_completion(messages=MSGS, max_tokens=5)

    tgi.inject(Reply(raw_body=b"[1, 2]"))
    with pytest.raises(ValueError, match="Invalid data type"):
        client.chat_completion(messages=MSGS, max_tokens=5)

    # A wrong-shaped object is NOT an error: the caller must check for missing choices.
    tgi.inject(Reply(raw_body=b'{"foo": 1}'))
    assert client.chat_completion(messages=MSGS, max_tokens=5).choices is None

    tgi.inject(Reply(raw_body=b"x" * 10_000_000))
    with pytest.raises(json.JSONDecodeError):
        client.chat_completion(messages=MSGS, max_tokens=5)

    huge = "y" * 10_000_000
    envelope = {"choices": [{"index": 0, "message": {"role": "assistant", "content": huge}}]}
    tgi.inject(Reply(raw_body=json.dumps(envelope).encode()))
    assert client.chat_completion(messages=MSGS, max_tokens=5).choices[0].message.content == huge

    # A non-JSON error page still becomes an HfHubHTTPError carrying the status.
    tgi.inject(Reply(status=502, raw_body=b"<html>Bad Gateway</html>"))
    with pytest.raises(HfHubHTTPError) as info:
        client.chat_completion(messages=MSGS, max_tokens=5)
    assert info.value.response.status_code == 502
    assert tgi.status_counts == Counter({200: 5, 502: 1})  # raw bodies count as sent


def test_dropped_connection_and_refused_connection() -> None:
    srv = FakeInferenceServer(lambda r: "ok").start()
    client = InferenceClient(base_url=srv.url, timeout=5)
    srv.inject(Reply(close_connection=True))
    # Not wrapped by huggingface_hub: the raw transport error surfaces.
    with pytest.raises(httpx2.RemoteProtocolError):
        client.chat_completion(messages=MSGS, max_tokens=5)
    assert client.chat_completion(messages=MSGS, max_tokens=5).choices[0].message.content == "ok"
    assert srv.unanswered == 1
    srv.stop()
    with pytest.raises(httpx2.ConnectError):
        client.chat_completion(messages=MSGS, max_tokens=5)


# ----------------------------------------------------------------- concurrency


def _all_at_once(n: int) -> tuple[Callable[[FakeRequest], Reply | str], list[FakeInferenceServer]]:
    """A responder that holds every reply until `n` requests are in flight at the server: the
    server proves it holds them all at once, whatever the machine's load (a timed delay did not:
    on two busy cores, CI saw 77 and 90 of 100)."""
    holder: list[FakeInferenceServer] = []
    gate = threading.Event()

    def respond(request: FakeRequest) -> str:
        if holder[0].in_flight >= n:
            gate.set()
        if not gate.wait(60):
            raise AssertionError(f"only {holder[0].in_flight} of {n} requests were ever in flight at once")
        return f"ok {request.index}"

    return respond, holder


def test_hundred_concurrent_requests() -> None:
    limits = httpx2.Limits(max_connections=200, max_keepalive_connections=200)
    respond, holder = _all_at_once(100)
    with (
        FakeInferenceServer(respond) as srv,
        httpx2.Client(limits=limits, timeout=90) as client,
    ):
        holder.append(srv)
        with ThreadPoolExecutor(100) as pool:
            responses = list(pool.map(lambda i: _post(client, srv, f"q{i}", max_tokens=5), range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {
        f"ok {i}" for i in range(100)
    }
    assert srv.peak_in_flight == 100
    assert sorted(r.index for r in srv.requests) == list(range(100))
    assert len(srv.intervals) == 100
    # Every request started before any ended: all 100 were served at once.
    assert max(start for start, _ in srv.intervals) < min(end for _, end in srv.intervals)
    assert srv.in_flight == 0


def test_hundred_concurrent_requests_through_huggingface_hub() -> None:
    # huggingface_hub's shared httpx2 client allows 100 connections (20 kept alive): 100 threads fit.
    respond, holder = _all_at_once(100)
    with FakeInferenceServer(respond) as srv:
        holder.append(srv)
        client = InferenceClient(base_url=srv.url, timeout=90)
        with ThreadPoolExecutor(100) as pool:
            outs = list(pool.map(lambda i: client.chat_completion(messages=MSGS, max_tokens=5), range(100)))
    assert all(o.choices[0].message.content.startswith("ok ") for o in outs)
    assert srv.peak_in_flight == 100


def test_max_concurrent_requests_answers_429() -> None:
    with (
        FakeInferenceServer(lambda r: Reply(text="ok", delay=0.3), max_concurrent_requests=5) as srv,
        httpx2.Client(limits=httpx2.Limits(max_connections=50), timeout=10) as client,
    ):
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda i: _post(client, srv, "q"), range(20)))
        statuses = Counter(r.status_code for r in responses)
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert statuses[200] >= 5
    assert statuses[429] >= 1
    assert statuses[200] + statuses[429] == 20
    assert srv.peak_in_flight == 5
    assert srv.rejected == statuses[429] == srv.status_counts[429]
    assert srv.request_count == 20


def test_limit_is_released_before_the_reply_is_sent() -> None:
    # A client doing one request at a time must never be refused by its own previous request.
    with (
        FakeInferenceServer(lambda r: "ok", max_concurrent_requests=1) as srv,
        httpx2.Client(timeout=5) as client,
    ):
        assert [_post(client, srv, "q").status_code for _ in range(30)] == [200] * 30


# ----------------------------------------------------------------- scripting and lifecycle


def test_injected_faults_come_before_the_responder() -> None:
    seen: list[int] = []

    def responder(request: FakeRequest) -> str:
        seen.append(request.index)
        return "fine"

    with FakeInferenceServer(responder) as srv, httpx2.Client(timeout=5) as client:
        srv.inject(Reply(status=429), Reply(status=429), Reply(status=503))
        assert [_post(client, srv, "q").status_code for _ in range(4)] == [429, 429, 503, 200]
        assert seen == [3]
        srv.fail_next(2, Reply(status=424, error="CUDA out of memory"))
        assert srv.pending_faults == 2
        assert [_post(client, srv, "q").status_code for _ in range(3)] == [424, 424, 200]
        assert srv.status_counts == Counter({429: 2, 503: 1, 424: 2, 200: 2})
        srv.reset_stats()
        assert (srv.request_count, srv.status_counts, srv.intervals) == (0, Counter(), [])
        _post(client, srv, "q")
        assert srv.requests[0].index == 0


def test_scripted_rules_match_prompt_substrings() -> None:
    rules: list[tuple[str, Reply | str | Any]] = [
        ("review", Reply(text='{"verdict": "correct"}')),
        ("boom", Reply(status=503, error="warming up")),
        ("echo", lambda r: r.prompt.upper()),
    ]
    with FakeInferenceServer(scripted(rules, default="solution")) as srv, httpx2.Client(timeout=5) as client:

        def content(prompt: str) -> str:
            return str(_post(client, srv, prompt).json()["choices"][0]["message"]["content"])

        assert content("please review this") == '{"verdict": "correct"}'
        assert content("echo me") == "ECHO ME"
        assert content("anything else") == "solution"
        failed = _post(client, srv, "boom")
        assert (failed.status_code, failed.json()["error"]) == (503, "warming up")


def test_prompt_is_the_last_user_message() -> None:
    with FakeInferenceServer() as srv, httpx2.Client(timeout=5) as client:
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ]
        r = client.post(f"{srv.url}{CHAT}", json={"messages": messages})
        assert r.json()["choices"][0]["message"]["content"] == "second"  # the default responder echoes
        assert r.json()["usage"]["prompt_tokens"] == 2 + 1 + 1 + 1


def test_responder_exception_is_a_500_and_recorded() -> None:
    def broken(request: FakeRequest) -> str:
        raise RuntimeError("bug in test script")

    with FakeInferenceServer(broken) as srv, httpx2.Client(timeout=5) as client:
        r = _post(client, srv, "q")
    assert r.status_code == 500
    assert [str(e) for e in srv.errors] == ["bug in test script"]


def test_validation_errors() -> None:
    with FakeInferenceServer(max_total_tokens=100) as srv, httpx2.Client(timeout=5) as client:
        too_long = _post(client, srv, "q", max_tokens=100)
        assert too_long.status_code == 422
        assert too_long.json()["error_type"] == "validation"
        assert "must be <= 100" in too_long.json()["error"]
        garbage = client.post(
            f"{srv.url}{CHAT}", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert garbage.status_code == 422
        assert srv.requests[-1].body is None
        assert client.post(f"{srv.url}/generate", json={"parameters": {}}).status_code == 422
    with FakeInferenceServer(kind="llama-cpp", max_total_tokens=5) as srv, httpx2.Client(timeout=5) as client:
        r = _post(client, srv, "one two three four five six")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert client.post(f"{srv.url}/generate", json={"inputs": "q"}).status_code == 404


@pytest.mark.parametrize("kind", ["tgi", "llama-cpp", "vllm"])
def test_discovery_routes(kind: str) -> None:
    with FakeInferenceServer(kind=kind) as srv, httpx2.Client(timeout=5) as client:  # type: ignore[arg-type]
        info = client.get(f"{srv.url}/info")
        models = client.get(f"{srv.url}/v1/models").json()
        health = client.get(f"{srv.url}/health")
        metrics = client.get(f"{srv.url}/metrics")
        chat = _post(client, srv, "hello")
    assert models["object"] == "list"
    assert models["data"][0]["id"] == srv.model_id
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "hello"
    if kind == "tgi":
        assert info.json()["version"] == "3.3.6"
        assert info.json()["router"] == "text-generation-router"
        assert info.json()["model_id"] == srv.model_id
        assert (health.status_code, health.content) == (200, b"")
        assert "tgi_request_count 1" not in metrics.text  # scraped before the chat request
        assert "tgi_request_count 0" in metrics.text
    else:
        assert (info.status_code, info.json()) == (404, {"detail": "Not Found"})
    if kind == "llama-cpp":
        assert models["data"][0] == {
            "id": srv.model_id,
            "object": "model",
            "owned_by": "me",
            "permissions": [],
        }
        assert health.status_code == 404
        assert metrics.status_code == 404
    if kind == "vllm":
        assert models["data"][0]["owned_by"] == "vllm"
        assert health.status_code == 200
        assert "vllm:num_requests_running" in metrics.text


def test_stop_is_prompt_while_a_request_hangs() -> None:
    srv = FakeInferenceServer(lambda r: Reply(hang=True)).start()
    idle = httpx2.Client(timeout=5)
    idle.get(f"{srv.url}/health")  # leaves an idle keep-alive connection open at the server
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx2.post(f"{srv.url}{CHAT}", json={"messages": MSGS}, timeout=30)
        except httpx2.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert srv.wait_for_in_flight(1, timeout=5)
    start = time.monotonic()
    srv.stop()
    assert time.monotonic() - start < 1.0
    caller.join(5)
    idle.close()
    assert not caller.is_alive()
    assert [type(e) for e in errors] == [httpx2.RemoteProtocolError]
    assert (srv.in_flight, srv.unanswered) == (0, 1)


def test_delay_is_cut_short_by_stop() -> None:
    srv = FakeInferenceServer(lambda r: Reply(text="late", delay=30)).start()
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx2.post(f"{srv.url}{CHAT}", json={"messages": MSGS}, timeout=30)
        except httpx2.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert srv.wait_for_in_flight(1, timeout=5)
    start = time.monotonic()
    srv.stop()
    caller.join(5)
    assert time.monotonic() - start < 1.0
    assert [type(e) for e in errors] == [httpx2.RemoteProtocolError]
    assert srv.status_counts == Counter()


def test_token_helpers() -> None:
    assert count_tokens("") == 1
    assert count_tokens("  two\nwords ") == 2
    assert mean_concurrency([(0.0, 1.0), (0.5, 1.0)]) == 1.5
    assert mean_concurrency([]) == 0.0


def test_runs_as_a_separate_process() -> None:
    cmd = [sys.executable, "-m", "tests.fakeserver", "--port", "0", "--kind", "tgi", "--script", "echo"]
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx2.Client(timeout=5) as client:
            r = client.post(f"{url}{CHAT}", json={"messages": MSGS})
            assert json.loads(r.json()["choices"][0]["message"]["content"])["answer"] == "42"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
