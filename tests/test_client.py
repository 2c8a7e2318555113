"""The model client against fake servers over real HTTP: dialects, records, and error mapping."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rstar.prompts import SOLUTION_SCHEMA
from rstar.records import recorded_texts
from rstar.types import ChatMessage, ModelRequest
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply
from workers.client import (
    InFlightLimit,
    ModelClient,
    in_flight_share,
    probe_server,
    stored_text,
)
from workers.errors import (
    MalformedReplyError,
    ModelTimeoutError,
    OverloadedError,
    RequestRejectedError,
    RetryableError,
    UnavailableError,
)

REQUEST = ModelRequest(
    messages=(ChatMessage("user", "What is 2+2?"),),
    temperature=0.5,
    max_tokens=64,
    seed=3,
    json_schema=SOLUTION_SCHEMA,
)
ANSWER = json.dumps({"steps": ["2+2=4"], "final_answer": "4"})


@pytest.mark.parametrize(
    ("kind", "expected_format"),
    [
        ("tgi", {"type": "json", "value": SOLUTION_SCHEMA}),
        ("llama-cpp", {"type": "json_object", "schema": SOLUTION_SCHEMA}),
        ("llama-server", {"type": "json_object", "schema": SOLUTION_SCHEMA}),
        ("vllm", {"type": "json_object"}),
    ],
)
def test_each_server_kind_gets_its_structured_output_dialect(kind: str, expected_format: dict) -> None:  # type: ignore[type-arg]
    with FakeInferenceServer(lambda r: ANSWER, kind=kind) as srv:  # type: ignore[arg-type]
        client = ModelClient(srv.url, timeout=5)
        assert client.info.kind == kind
        reply = client.complete(REQUEST)
        sent = srv.requests[0].body
    assert sent is not None and sent["response_format"] == expected_format
    assert sent["seed"] == 3 and sent["max_tokens"] == 64 and sent["temperature"] == 0.5
    assert reply.text == ANSWER and reply.finish_reason == "stop"
    assert reply.prompt_tokens and reply.completion_tokens and reply.latency_ms > 0
    assert reply.request["response_format"] == expected_format
    assert reply.response["choices"][0]["message"]["content"] == ANSWER


def test_probe_reads_tgi_info() -> None:
    with FakeInferenceServer(kind="tgi", model_id="org/m", max_concurrent_requests=77) as srv:
        info = probe_server(srv.url)
    assert (info.kind, info.model_id, info.max_concurrent_requests) == ("tgi", "org/m", 77)


def test_probe_knows_llama_server_and_its_slots() -> None:
    """llama.cpp's llama-server: owned_by "llamacpp" in /v1/models, its parallel slots in /props
    (the shapes it answers, abridged). Both take the json_object + schema dialect."""
    routes = {
        "/v1/models": {"object": "list", "data": [{"id": "qwen", "object": "model", "owned_by": "llamacpp"}]},
        "/props": {"total_slots": 8, "model_alias": "qwen", "build_info": "b1-0c1e570"},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(routes[self.path]).encode() if self.path in routes else b"{}"
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        info = probe_server(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert (info.kind, info.model_id, info.max_concurrent_requests) == ("llama-server", "qwen", 8)


def test_a_llama_cpp_python_server_is_sized_as_one_request_at_a_time() -> None:
    """It serves one request at a time: a worker that assumed 32 in flight saw most time out."""
    with FakeInferenceServer(kind="llama-cpp") as srv:
        info = probe_server(srv.url)
        share = in_flight_share(srv.url, max_in_flight=None, share=1)
    assert (info.kind, info.max_concurrent_requests) == ("llama-cpp", 1)
    assert share.slots == 1 and "one request at a time" in share.source


def test_the_served_model_is_the_one_the_server_lists_not_dummy() -> None:
    """llama-cpp-python echoes the request's model name: the demo's calls recorded "dummy"."""
    with FakeInferenceServer(lambda r: ANSWER, kind="llama-cpp", model_id="smollm2-135m") as srv:
        reply = ModelClient(srv.url, timeout=5).complete(REQUEST)
        [sent] = srv.requests
    assert reply.model == "smollm2-135m" == sent.body["model"]
    assert "model" not in reply.request  # the recorded request is the question's, not the server's


def test_bearer_token_is_sent_but_never_recorded() -> None:
    with FakeInferenceServer(lambda r: ANSWER) as srv:
        reply = ModelClient(srv.url, timeout=5, token="s3cret-token").complete(REQUEST)
        headers = srv.requests[0].headers
    assert headers["authorization"] == "Bearer s3cret-token"
    assert "s3cret-token" not in json.dumps(reply.request) + json.dumps(reply.response)


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Reply(status=429), OverloadedError, 429),
        (Reply(status=503), UnavailableError, 503),
        (Reply(status=424), UnavailableError, 424),
        (
            Reply(status=422, error="Input validation error: max_new_tokens too large"),
            RequestRejectedError,
            422,
        ),
        (Reply(raw_body=b'{"choices": [{"message": '), MalformedReplyError, None),
        (Reply(raw_body=b'{"object": "error"}'), MalformedReplyError, None),
        (Reply(raw_body=b"<html>bad gateway</html>"), MalformedReplyError, None),
        (Reply(raw_body=json.dumps({"blob": "x" * 10_000_000}).encode()), MalformedReplyError, None),
        (Reply(close_connection=True), UnavailableError, None),
        (Reply(hang=True), ModelTimeoutError, None),
    ],
    ids=["429", "503", "424", "422", "truncated-json", "wrong-shape", "html", "10MB", "dropped", "hang"],
)
def test_failures_map_onto_the_exception_tree(
    fault: Reply, error: type[Exception], status: int | None
) -> None:
    with FakeInferenceServer(lambda r: ANSWER, kind="tgi") as srv:
        client = ModelClient(srv.url, timeout=1.0)
        assert client.info.kind == "tgi"
        srv.inject(fault)
        with pytest.raises(error) as caught:
            client.complete(REQUEST)
    exc = caught.value
    assert exc.http_status == status  # type: ignore[attr-defined]
    assert exc.request is not None and exc.request["messages"]  # type: ignore[attr-defined]
    assert isinstance(exc, RetryableError) != isinstance(exc, RequestRejectedError)
    if exc.body is not None:  # type: ignore[attr-defined]
        assert len(exc.body) < 70_000  # type: ignore[attr-defined]


def test_connection_refused_is_retryable() -> None:
    with FakeInferenceServer(kind="tgi") as srv:
        url = srv.url
    with pytest.raises(UnavailableError):
        ModelClient(url, kind="tgi", timeout=2).complete(REQUEST)
    with pytest.raises(UnavailableError, match="cannot identify"):
        probe_server(url, timeout=2)


# -- n samples per request ----------------------------------------------------------------------

SAMPLED = ModelRequest(
    messages=(ChatMessage("user", "Next step?"),),
    temperature=0.8,
    max_tokens=32,
    seed=7,
    n=3,
    top_p=0.95,
    top_k=40,
)


def _by_choice_and_seed(request: FakeRequest) -> str:
    return f"sample choice={request.choice} seed={(request.body or {}).get('seed')}"


def test_vllm_samples_n_in_one_request_and_the_record_keeps_every_sequence() -> None:
    with FakeInferenceServer(_by_choice_and_seed, kind="vllm") as srv:
        reply = ModelClient(srv.url, timeout=5).complete(SAMPLED)
        assert srv.request_count == 1
        sent = srv.requests[0].body
    assert sent is not None and sent["n"] == 3 and sent["top_p"] == 0.95 and sent["top_k"] == 40
    assert reply.sequences == tuple(f"sample choice={i} seed=7" for i in range(3))
    assert reply.requests == 1 and reply.request["n"] == 3 and "fan_out_seeds" not in reply.request
    assert len(reply.response["choices"]) == 3
    # What the call records as response_text gives the sequences back (a resumed step reads it).
    assert recorded_texts(stored_text(reply), len(reply.sequences)) == reply.sequences


@pytest.mark.parametrize("kind", ["tgi", "llama-cpp"])
def test_servers_that_ignore_n_get_n_requests_at_once_with_their_own_seeds(kind: str) -> None:
    with FakeInferenceServer(_by_choice_and_seed, kind=kind) as srv:  # type: ignore[arg-type]
        reply = ModelClient(srv.url, timeout=5).complete(SAMPLED)
        bodies = [r.body or {} for r in srv.requests]
    assert sorted(b["seed"] for b in bodies) == [7, 8, 9]
    assert all("n" not in b for b in bodies)
    # TGI's Messages API has no top_k; llama.cpp's servers take it.
    assert all(("top_k" in b) is (kind == "llama-cpp") for b in bodies)
    assert reply.sequences == tuple(f"sample choice=0 seed={s}" for s in (7, 8, 9))
    assert reply.requests == 3
    assert reply.request["n"] == 3 and reply.request["fan_out_seeds"] == [7, 8, 9]
    assert len(reply.response["responses"]) == 3
    assert reply.completion_tokens == sum(
        r["usage"]["completion_tokens"] for r in reply.response["responses"]
    )


def test_llama_server_samples_n_in_one_request_and_counts_every_sequences_tokens() -> None:
    """llama.cpp's server takes `n` and evaluates the prompt once; it reports the first choice's
    usage only, so the client counts the others by the server's /tokenize (plus the end token a
    choice ends on when the request has no stop string)."""
    with FakeInferenceServer(_by_choice_and_seed, kind="llama-server", slots=8) as srv:
        client = ModelClient(srv.url, timeout=5)
        assert client.info.kind == "llama-server" and client.info.max_concurrent_requests == 8
        reply = client.complete(SAMPLED)
        assert srv.request_count == 1 and srv.peak_sequences == 3
        sent = srv.requests[0].body
    assert sent is not None and sent["n"] == 3 and sent["seed"] == 7 and sent["top_k"] == 40
    assert reply.sequences == tuple(f"sample choice={i} seed=7" for i in range(3))
    assert reply.requests == 1 and reply.request["n"] == 3 and "fan_out_seeds" not in reply.request
    words = [len(t.split()) for t in reply.sequences]
    assert reply.response["usage"]["completion_tokens"] == words[0]  # what llama-server says
    assert reply.completion_tokens == words[0] + sum(w + 1 for w in words[1:])
    assert recorded_texts(stored_text(reply), len(reply.sequences)) == reply.sequences


def test_llama_server_gets_n_above_its_slots_in_requests_of_at_most_that_many() -> None:
    """It refuses n above its slots (HTTP 400): n=5 on 2 slots goes out as 2 + 2 + 1, seeded as
    one request's choices would be (base, base + 1, ...), and is recorded as one call."""
    with FakeInferenceServer(_by_choice_and_seed, kind="llama-server", slots=2) as srv:
        reply = ModelClient(srv.url, timeout=5).complete(replace(SAMPLED, n=5))
        bodies = sorted((r.body or {} for r in srv.requests), key=lambda b: b["seed"])
        assert srv.peak_sequences <= 2
    assert [(b["seed"], b.get("n", 1)) for b in bodies] == [(7, 2), (9, 2), (11, 1)]
    assert reply.sequences == tuple(
        f"sample choice={c} seed={s}" for s, c in [(7, 0), (7, 1), (9, 0), (9, 1), (11, 0)]
    )
    assert reply.requests == 3 and reply.request["n"] == 5
    # Told a wrong slot count (8 where it has 2), the client asks too much and is refused.
    with (
        FakeInferenceServer(_by_choice_and_seed, kind="llama-server", slots=2) as srv,
        pytest.raises(RequestRejectedError, match="n_cmpl"),
    ):
        ModelClient(srv.url, timeout=5, kind="llama-server", max_in_flight=8).complete(replace(SAMPLED, n=5))


def test_an_in_flight_limit_counts_slots_and_serves_first_come_first_served() -> None:
    limit = InFlightLimit(4)
    order: list[str] = []
    first = limit.slot(3)
    first.__enter__()

    def take(name: str, weight: int) -> None:
        with limit.slot(weight):
            order.append(name)

    big = threading.Thread(target=take, args=("big", 4))
    big.start()
    wait_for(lambda: len(limit._queue) == 1)
    small = threading.Thread(target=take, args=("small", 1))
    small.start()  # one slot is free, but the request before it waits for four
    wait_for(lambda: len(limit._queue) == 2)
    assert order == []
    first.__exit__(None, None, None)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]
    assert limit._used == 0


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_failed_sample_fails_the_call_and_the_failure_counts_what_the_others_generated() -> None:
    with FakeInferenceServer(_by_choice_and_seed, kind="tgi") as srv:
        srv.inject(Reply(status=503, error="busy"))
        with pytest.raises(UnavailableError) as failed:
            ModelClient(srv.url, timeout=5).complete(SAMPLED)
        assert srv.request_count == 3
    exc = failed.value
    # All three requests went out and two came back: they are paid for, and the record says so.
    assert exc.requests == 3 and exc.sequences == 2
    assert exc.request is not None and exc.request["n"] == 3 and exc.request["fan_out_seeds"] == [7, 8, 9]
    assert exc.response is not None and len(exc.response["responses"]) == 2
    assert exc.response["errors"] == [f"UnavailableError: {exc.message}"]
    assert exc.completion_tokens == sum(r["usage"]["completion_tokens"] for r in exc.response["responses"])


def test_a_rejected_sample_makes_the_fanned_out_call_permanent() -> None:
    with FakeInferenceServer(_by_choice_and_seed, kind="tgi") as srv:
        srv.inject(Reply(status=503, error="busy"), Reply(status=422, error="too long"))
        with pytest.raises(RequestRejectedError, match="2 of 3 sampled requests failed") as failed:
            ModelClient(srv.url, timeout=5).complete(SAMPLED)
    assert failed.value.requests == 3 and failed.value.sequences == 1


def test_a_server_that_returns_fewer_choices_than_asked_is_a_malformed_reply() -> None:
    one = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"},
                                   "finish_reason": "stop"}]}).encode()  # fmt: skip
    with FakeInferenceServer(kind="vllm") as srv:
        srv.inject(Reply(raw_body=one))
        with pytest.raises(MalformedReplyError, match="1 choices where 3 were asked for"):
            ModelClient(srv.url, timeout=5).complete(SAMPLED)
