"""A fake LLM inference server speaking real HTTP/1.1 on 127.0.0.1, for tests and benchmarks.

It mimics the parts of text-generation-inference (TGI), llama-cpp-python's server, llama.cpp's
llama-server and vLLM that rstar-batch's client touches, so the real
`huggingface_hub.InferenceClient` talks to it unmodified.
Replies are scripted per request by a *responder*; faults (429/503/hangs/dropped sockets/garbage
bodies) can be queued independently with `inject()`. Standard library only.

    with FakeInferenceServer(lambda req: "42", kind="tgi") as srv:
        InferenceClient(base_url=srv.url).chat_completion(messages=[...])

Run standalone (prints the URL once listening, serves until SIGTERM):

    python -m tests.fakeserver --port 8080 --kind tgi --script echo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import uuid
from base64 import b64encode
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

ServerKind = Literal["tgi", "llama-cpp", "llama-server", "vllm"]
SERVER_KINDS: tuple[ServerKind, ...] = ("tgi", "llama-cpp", "llama-server", "vllm")
# Servers whose chat route samples `n` choices per request (TGI and llama-cpp-python ignore `n`).
NATIVE_N = ("vllm", "llama-server")
TGI_VERSION = "3.3.6"


@dataclass(frozen=True)
class FakeRequest:
    """One generation request (chat or TGI generate) as the server received it."""

    path: str
    body: dict[str, Any] | None
    """The parsed JSON body; None when it was not a JSON object."""
    messages: list[dict[str, str]]
    """Chat messages; for /generate a single user message holding `inputs`."""
    prompt: str
    """The content of the last user message."""
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    index: int
    """0-based sequence number of this request at the server (since the last reset_stats())."""
    choice: int = 0
    """Which of the request's `n` choices the responder is asked for (vLLM and llama-server sample
    n per request)."""


@dataclass(frozen=True)
class Reply:
    """What the server does with one generation request."""

    text: str = ""
    status: int = 200
    delay: float = 0.0
    """Seconds to wait before answering; cut short (and nothing sent) by stop()."""
    hang: bool = False
    """Never answer; the handler waits until stop(), so the client's timeout must trip."""
    raw_body: bytes | None = None
    """Send exactly these bytes (application/json) with `status`: malformed / wrong-shape / huge bodies."""
    finish_reason: str | None = None
    """Override the computed finish reason (mapped to the route's vocabulary, e.g. stop <-> eos_token)."""
    error: str | None = None
    """Message for error statuses; a TGI-like default is used when None."""
    close_connection: bool = False
    """Drop the socket without sending anything."""


Responder = Callable[[FakeRequest], Reply | str]
Rule = tuple[str, Reply | str | Responder]


def basic_authorization(user: str, password: str) -> str:
    """The Authorization header value of HTTP basic auth, for `FakeInferenceServer(authorization=)`."""
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


def echo_prompt(request: FakeRequest) -> str:
    """The default responder: reply with the prompt itself."""
    return request.prompt


def scripted(rules: Sequence[Rule], default: Reply | str | Responder = "") -> Responder:
    """A responder answering with the first rule whose substring occurs in the prompt, else `default`.

    A rule's action is a Reply, a str (the reply text) or a callable taking the FakeRequest.
    """

    def respond(request: FakeRequest) -> Reply | str:
        action = default
        for needle, candidate in rules:
            if needle in request.prompt:
                action = candidate
                break
        return action(request) if callable(action) else action

    return respond


# Pseudo-tokens: whitespace-separated words. Deterministic and good enough for usage/limit logic.
_WORD = re.compile(r"\S+")


def count_tokens(text: str) -> int:
    """Pseudo-token count of `text` (whitespace-split words, at least 1, like a real BOS/EOS floor)."""
    return max(1, len(_WORD.findall(text)))


def _truncate_words(text: str, limit: int) -> tuple[str, bool]:
    """The first `limit` pseudo-tokens of text (original spacing kept) and whether anything was cut."""
    words = list(_WORD.finditer(text))
    if len(words) <= limit:
        return text, False
    return (text[: words[limit - 1].end()] if limit > 0 else ""), True


def mean_concurrency(
    intervals: Sequence[tuple[float, float]], start: float | None = None, end: float | None = None
) -> float:
    """Time-averaged number of requests in flight over [start, end] (defaults: span of the intervals)."""
    if not intervals:
        return 0.0
    lo = min(s for s, _ in intervals) if start is None else start
    hi = max(e for _, e in intervals) if end is None else end
    if hi <= lo:
        return 0.0
    busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in intervals)
    return busy / (hi - lo)


class _Drop(Exception):
    """Raised inside a handler to abandon the connection without answering."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # hung handlers must never keep the test process alive
    block_on_close = False
    request_queue_size = 512  # listen backlog: 100+ clients connecting at once must not be refused
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeInferenceServer) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-reply (timeouts, tests) are routine; don't spray tracebacks on stderr.
        logger.debug("fake server: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the pooled connections of httpx2
    server_version = "fake-inference"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid 40 ms Nagle stalls

    @property
    def fake(self) -> FakeInferenceServer:
        return cast(_HTTPServer, self.server).fake

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake server: " + format, *args)

    def do_GET(self) -> None:
        self._guard(self.fake._handle_get, self)

    def do_POST(self) -> None:
        self._guard(self.fake._handle_post, self)

    def _guard(self, handler: Callable[[_Handler], None], arg: _Handler) -> None:
        try:
            handler(arg)
        except _Drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client hung up (timed out) or stop() closed the socket
            self.close_connection = True

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        # The body must be consumed fully, or its bytes would be parsed as the next keep-alive request.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_bytes(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_bytes(status, json.dumps(obj).encode())


_TGI_ERROR_TYPES = {
    422: ("validation", "Input validation error"),
    424: ("generation", "Request failed during generation"),
    429: ("overloaded", "Model is overloaded"),
    500: ("incomplete_generation", "Incomplete generation"),
    503: ("unhealthy", "Model is not ready"),
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
# Finish reasons differ per route: OpenAI chat says stop/length, TGI native eos_token/length/stop_sequence.
_CHAT_FINISH = {"eos_token": "stop", "stop_sequence": "stop"}
_GENERATE_FINISH = {"stop": "eos_token"}


class _Invalid(Exception):
    """A request the server rejects as invalid (422 on TGI, 400/422 elsewhere)."""

    def __init__(self, message: str, status: int = 422, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class FakeInferenceServer:
    """A scripted TGI / llama-cpp-python / llama-server / vLLM look-alike on 127.0.0.1, serving from
    daemon threads.

    Generation routes: POST /v1/chat/completions (all kinds), POST /generate and POST / (tgi).
    Each generation request is recorded, checked against `max_concurrent_requests` (429 when over),
    validated, then answered by the next injected fault if any, else by the responder.
    A llama-server look-alike reports `slots` in `/props` and, like the real one, refuses a request
    whose `n` is above them (HTTP 400); it records the sequences it decoded at once in
    `peak_sequences`.
    """

    def __init__(
        self,
        responder: Responder = echo_prompt,
        *,
        kind: ServerKind = "tgi",
        model_id: str | None = None,
        max_concurrent_requests: int | None = None,
        max_input_tokens: int = 4095,
        max_total_tokens: int = 4096,
        host: str = "127.0.0.1",
        port: int = 0,
        authorization: str | None = None,
        slots: int = 8,
    ) -> None:
        """`authorization`: the exact Authorization header every request must carry (e.g.
        `basic_authorization(user, password)` or "Bearer TOKEN"); others get a 401 and are counted
        in `unauthorized`, not in `requests`."""
        if kind not in SERVER_KINDS:
            raise ValueError(f"kind must be one of {SERVER_KINDS}, not {kind!r}")
        self.responder = responder
        self.kind: ServerKind = kind
        self.model_id = model_id or (
            "/models/fake-model-Q4_K_M.gguf" if kind == "llama-cpp" else "fake-org/fake-model"
        )
        self.max_concurrent_requests = max_concurrent_requests
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.authorization = authorization
        self.slots = slots
        self._address = (host, port)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # hangs and delays wait on this, so stop() is prompt
        self._cond = threading.Condition()  # guards all counters below; notified on every change
        self._connections: set[socket.socket] = set()
        self._faults: deque[Reply | str] = deque()
        self._in_flight = 0
        self._sequences = 0
        self._reset_locked()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeInferenceServer:
        if self._httpd is not None:
            raise RuntimeError("server already started (a FakeInferenceServer is single-use)")
        self._httpd = _HTTPServer(self._address, self)
        self._thread = threading.Thread(
            # A short poll interval keeps shutdown() (and so stop()) fast.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakeserver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving: wake hung/delayed handlers, close every connection, wait briefly for handlers."""
        httpd = self._httpd
        if httpd is None or self._stopping.is_set():
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            # Unblocks handler threads idling in recv() on keep-alive connections.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            self._cond.wait_for(lambda: not self._connections, timeout)

    def __enter__(self) -> FakeInferenceServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    # ----------------------------------------------------------------- scripting

    def inject(self, *faults: Reply | str) -> None:
        """Queue replies used, one each, by the next generation requests before the responder."""
        with self._cond:
            self._faults.extend(faults)

    def fail_next(self, n: int, reply: Reply | None = None) -> None:
        """Make the next `n` generation requests fail with `reply` (default: 503 unhealthy)."""
        self.inject(*[reply or Reply(status=503)] * n)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._cond:
            return len(self._faults)

    # ----------------------------------------------------------------- observability

    def _reset_locked(self) -> None:
        self._requests: list[FakeRequest] = []
        self._status_counts: Counter[int] = Counter()
        self._intervals: list[tuple[float, float]] = []
        self._errors: list[BaseException] = []
        self._rejected = 0
        self._unauthorized = 0
        self._unanswered = 0
        self._peak = self._in_flight
        self._peak_sequences = self._sequences

    def reset_stats(self) -> None:
        """Forget recorded requests and counters (not in-flight requests nor queued faults)."""
        with self._cond:
            self._reset_locked()
            self._cond.notify_all()

    @property
    def requests(self) -> list[FakeRequest]:
        """Generation requests received, in arrival order (including ones rejected with 429/422)."""
        with self._cond:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._cond:
            return len(self._requests)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        with self._cond:
            return self._peak

    @property
    def peak_sequences(self) -> int:
        """The most sequences decoded at once: a request's `n` on the servers that take it."""
        with self._cond:
            return self._peak_sequences

    @property
    def status_counts(self) -> Counter[int]:
        """Statuses sent on generation routes (dropped/hung requests are counted in `unanswered`)."""
        with self._cond:
            return Counter(self._status_counts)

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """(start, end) time.monotonic() of each admitted generation request, in completion order."""
        with self._cond:
            return list(self._intervals)

    @property
    def rejected(self) -> int:
        """Requests refused with 429 because `max_concurrent_requests` were already in flight."""
        with self._cond:
            return self._rejected

    @property
    def unauthorized(self) -> int:
        """Requests (any route) refused with 401 for a missing or wrong Authorization header."""
        with self._cond:
            return self._unauthorized

    @property
    def unanswered(self) -> int:
        """Generation requests that got no response (close_connection, hang, or cut off by stop())."""
        with self._cond:
            return self._unanswered

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by the responder (each answered with a 500); tests should expect none."""
        with self._cond:
            return list(self._errors)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least `n` generation requests have arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._requests) >= n, timeout)

    def wait_for_in_flight(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least `n` generation requests are in flight at once."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight >= n, timeout)

    # ----------------------------------------------------------------- request handling

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
                self._cond.notify_all()

    def _authorized(self, h: _Handler) -> bool:
        """True when no credentials are required or the request carries them; else answers 401."""
        if self.authorization is None or h.headers.get("Authorization") == self.authorization:
            return True
        with self._cond:
            self._unauthorized += 1
        h.send_json(401, {"error": "Unauthorized", "error_type": "authentication"})
        return False

    def _handle_get(self, h: _Handler) -> None:
        if not self._authorized(h):
            return
        path = urlsplit(h.path).path
        if path == "/v1/models":
            owned_by = {"tgi": self.model_id, "llama-cpp": "me", "llama-server": "llamacpp", "vllm": "vllm"}
            card: dict[str, Any] = {"id": self.model_id, "object": "model", "owned_by": owned_by[self.kind]}
            if self.kind in ("llama-cpp", "llama-server"):
                card["permissions"] = []
            else:
                card["created"] = int(time.time())
            h.send_json(200, {"object": "list", "data": [card]})
        elif path == "/info" and self.kind == "tgi":
            h.send_json(200, self._info())
        elif path == "/props" and self.kind == "llama-server":
            h.send_json(200, {"total_slots": self.slots, "model_path": self.model_id})
        elif path == "/health" and self.kind != "llama-cpp":
            h.send_bytes(200, b"")
        elif path == "/metrics" and self.kind != "llama-cpp":
            h.send_bytes(200, self._metrics().encode(), "text/plain; version=0.0.4")
        else:
            self._not_found(h)

    def _handle_post(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        raw = h.read_body()  # read even when refused: its bytes would be taken for the next request
        if not self._authorized(h):
            return
        if path == "/v1/chat/completions":
            self._generation(h, path, raw, chat=True)
        elif path == "/tokenize" and self.kind == "llama-server":
            try:
                content = json.loads(raw).get("content")
            except (ValueError, AttributeError):
                content = None
            if not isinstance(content, str):
                h.send_json(400, {"error": {"code": 400, "message": "content must be a string"}})
            else:
                h.send_json(200, {"tokens": list(range(len(_WORD.findall(content))))})
        elif path in ("/generate", "/") and self.kind == "tgi":
            self._generation(h, path, raw, chat=False)
        else:
            self._not_found(h)

    def _not_found(self, h: _Handler) -> None:
        if self.kind == "tgi":
            h.send_bytes(404, b"")  # axum answers unknown routes with an empty 404
        else:
            h.send_json(404, {"detail": "Not Found"})  # FastAPI's default

    def _info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": "torch.float16",
            "model_device_type": "cuda",
            "model_pipeline_tag": "text-generation",
            # TGI's default when no limit is configured.
            "max_concurrent_requests": self.max_concurrent_requests or 128,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": None,
            "docker_label": None,
        }

    def _metrics(self) -> str:
        with self._cond:
            total, ok, running = len(self._requests), self._status_counts[200], self._in_flight
        if self.kind == "vllm":
            return (
                f'vllm:num_requests_running{{model_name="{self.model_id}"}} {running}\n'
                f'vllm:num_requests_waiting{{model_name="{self.model_id}"}} 0\n'
                f'vllm:request_success_total{{model_name="{self.model_id}"}} {ok}\n'
            )
        return (
            "# TYPE tgi_request_count counter\n"
            f"tgi_request_count {total}\n"
            "# TYPE tgi_request_success counter\n"
            f"tgi_request_success {ok}\n"
            "# TYPE tgi_batch_current_size gauge\n"
            f"tgi_batch_current_size {running}\n"
            "# TYPE tgi_queue_size gauge\n"
            "tgi_queue_size 0\n"
        )

    def _generation(self, h: _Handler, path: str, raw: bytes, *, chat: bool) -> None:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        messages, prompt = _extract_messages(body, chat=chat)
        n = _choices(body) if chat and self.kind in NATIVE_N else 1
        started = 0.0
        with self._cond:
            request = FakeRequest(
                path=path,
                body=body,
                messages=messages,
                prompt=prompt,
                headers={k.lower(): v for k, v in h.headers.items()},
                index=len(self._requests),
            )
            self._requests.append(request)
            # Like TGI's semaphore: refuse at once rather than queue when the limit is reached.
            over = (
                self.max_concurrent_requests is not None and self._in_flight >= self.max_concurrent_requests
            )
            if over:
                self._rejected += 1
            else:
                self._in_flight += 1
                self._peak = max(self._peak, self._in_flight)
                self._sequences += n
                self._peak_sequences = max(self._peak_sequences, self._sequences)
                started = time.monotonic()
            self._cond.notify_all()
        if over:
            self._send_error(h, 429, None)
            return
        finished = False
        try:
            try:
                limit = self._validate(body, messages, chat=chat)
            except _Invalid as invalid:
                finished = self._finish(started, n)
                self._send_error(h, invalid.status, str(invalid), code=invalid.code)
                return
            reply = self._next_reply(request)
            if reply.hang:
                self._stopping.wait()
                raise _Drop
            if reply.delay > 0 and self._stopping.wait(reply.delay):
                raise _Drop
            if reply.close_connection:
                raise _Drop
            # Leave the in-flight set before sending, so a client's next request is never refused
            # by a limit its previous, already-answered request still occupied.
            finished = self._finish(started, n)
            if reply.raw_body is not None:
                self._send(h, reply.status, reply.raw_body)
            elif reply.status >= 400:
                self._send_error(h, reply.status, reply.error)
            else:
                # vLLM and llama-server sample `n` choices per chat request (TGI and
                # llama-cpp-python ignore `n`): the first is the reply drawn above, the others the
                # responder's for later choices.
                extra = [self._respond(replace(request, choice=i)) for i in range(1, n)]
                self._send_success(h, reply, body or {}, messages, limit, chat=chat, extra=extra)
        finally:
            if not finished:
                self._finish(started, n)
                with self._cond:
                    self._unanswered += 1

    def _finish(self, started: float, n: int = 1) -> bool:
        """Leave the in-flight set; returns True for the caller's `finished` flag."""
        with self._cond:
            self._in_flight -= 1
            self._sequences -= n
            self._intervals.append((started, time.monotonic()))
            self._cond.notify_all()
        return True

    def _next_reply(self, request: FakeRequest) -> Reply:
        with self._cond:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            return Reply(text=fault) if isinstance(fault, str) else fault
        return self._respond(request)

    def _respond(self, request: FakeRequest) -> Reply:
        try:
            result = self.responder(request)
        except Exception as exc:  # a responder bug must surface as a 500 and in `errors`, not a hang
            logger.exception("fake server: responder failed")
            with self._cond:
                self._errors.append(exc)
            return Reply(status=500, error=f"fake server responder raised {exc!r}")
        return Reply(text=result) if isinstance(result, str) else result

    def _validate(
        self, body: dict[str, Any] | None, messages: list[dict[str, str]], *, chat: bool
    ) -> int | None:
        """Check the request like the real servers do; return the max new tokens asked for, if any."""
        if body is None:
            raise _Invalid("Failed to deserialize the JSON body into the target type: expected an object")
        if chat:
            if not isinstance(body.get("messages"), list) or not messages:
                raise _Invalid("Failed to deserialize the JSON body: missing or empty field `messages`")
            limit = body.get("max_tokens", body.get("max_completion_tokens"))
            if body.get("stream") is True:
                raise _Invalid("stream=true is not supported by the fake server")
            if self.kind == "llama-server" and not 1 <= _choices(body) <= self.slots:
                # llama-server's hard limit on n_cmpl (alias n): 1 .. its parallel slots.
                raise _Invalid(f"n_cmpl must be between 1 and {self.slots}", status=400)
        else:
            params = body.get("parameters") or {}
            if not isinstance(body.get("inputs"), str) or not isinstance(params, dict):
                raise _Invalid("Failed to deserialize the JSON body: `inputs` must be a string")
            limit = params.get("max_new_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise _Invalid(f"Input validation error: invalid max tokens {limit!r}")
        prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
        if self.kind == "tgi":
            if limit is not None and limit <= 0:
                raise _Invalid("Input validation error: `max_new_tokens` must be strictly positive")
            if prompt_tokens > self.max_input_tokens:
                raise _Invalid(
                    f"Input validation error: `inputs` must have less than {self.max_input_tokens} tokens."
                    f" Given: {prompt_tokens}"
                )
            if limit is not None and prompt_tokens + limit > self.max_total_tokens:
                raise _Invalid(
                    "Input validation error: `inputs` tokens + `max_new_tokens` must be <="
                    f" {self.max_total_tokens}. Given: {prompt_tokens} `inputs` tokens and {limit}"
                    " `max_new_tokens`"
                )
            return limit
        # llama-cpp-python rejects over-long prompts but clamps max_tokens to the remaining context.
        if prompt_tokens >= self.max_total_tokens:
            raise _Invalid(
                f"This model's maximum context length is {self.max_total_tokens} tokens. However, you"
                f" requested {prompt_tokens} tokens in the messages."
                " Please reduce the length of the messages.",
                status=400,
                code="context_length_exceeded",
            )
        room = self.max_total_tokens - prompt_tokens
        return room if limit is None or limit <= 0 else min(limit, room)

    def _send(self, h: _Handler, status: int, body: bytes) -> None:
        with self._cond:
            self._status_counts[status] += 1
        h.send_bytes(status, body)

    def _send_error(self, h: _Handler, status: int, message: str | None, code: str | None = None) -> None:
        error_type, default = _TGI_ERROR_TYPES.get(status, ("unknown", f"Error {status}"))
        message = message or default
        payload: dict[str, Any]
        if self.kind == "tgi":
            payload = {"error": message, "error_type": error_type}
        else:
            kind = _OPENAI_ERROR_TYPES.get(status, "internal_server_error")
            payload = {"error": {"message": message, "type": kind, "param": None, "code": code or status}}
        self._send(h, status, json.dumps(payload).encode())

    def _send_success(
        self,
        h: _Handler,
        reply: Reply,
        body: dict[str, Any],
        messages: list[dict[str, str]],
        limit: int | None,
        *,
        chat: bool,
        extra: Sequence[Reply] = (),
    ) -> None:
        params = body if chat else (body.get("parameters") or {})
        stops = params.get("stop") or []

        def finished(r: Reply) -> tuple[str, str, int]:
            text, finish = _complete(r.text, [stops] if isinstance(stops, str) else stops, limit, chat=chat)
            if r.finish_reason is not None:
                finish = (_CHAT_FINISH if chat else _GENERATE_FINISH).get(r.finish_reason, r.finish_reason)
            return text, finish, limit if finish == "length" and limit is not None else count_tokens(text)

        text, finish, generated = finished(reply)
        if chat:
            choices = [(text, finish, generated), *(finished(r) for r in extra)]
            # llama-server merges its n results into the first one and keeps that one's usage.
            generated = generated if self.kind == "llama-server" else sum(c[2] for c in choices)
            prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
            fingerprint = f"{TGI_VERSION}-sha-fake" if self.kind == "tgi" else "fp_fake"
            payload: dict[str, Any] = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                # llama-cpp-python answers with the model name the request gave (its "model"
                # field), whatever alias it serves; the others with their own.
                "model": body.get("model") if self.kind == "llama-cpp" else self.model_id,
                "system_fingerprint": fingerprint,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": t},
                        "logprobs": None,
                        "finish_reason": f,
                    }
                    for i, (t, f, _) in enumerate(choices)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": generated,
                    "total_tokens": prompt_tokens + generated,
                },
            }
        else:
            payload = {"generated_text": text}
            if params.get("details"):
                words = _WORD.findall(text)
                payload["details"] = {
                    "finish_reason": finish,
                    "generated_tokens": generated,
                    "seed": params.get("seed"),
                    "prefill": [],
                    "tokens": [
                        {"id": i, "text": f" {w}", "logprob": -0.5, "special": False}
                        for i, w in enumerate(words)
                    ],
                }
        self._send(h, 200, json.dumps(payload).encode())


def _choices(body: dict[str, Any] | None) -> int:
    """The `n` a chat request asks for (1 when absent or not an integer)."""
    n = (body or {}).get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) else 1


def _content_text(content: Any) -> str:
    """Message content as text; OpenAI's list-of-parts form is joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _extract_messages(body: dict[str, Any] | None, *, chat: bool) -> tuple[list[dict[str, str]], str]:
    if body is None:
        return [], ""
    if not chat:
        inputs = body.get("inputs")
        text = inputs if isinstance(inputs, str) else ""
        return [{"role": "user", "content": text}], text
    raw = body.get("messages")
    messages = [
        {"role": str(m.get("role", "")), "content": _content_text(m.get("content"))}
        for m in (raw if isinstance(raw, list) else [])
        if isinstance(m, dict)
    ]
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return messages, prompt


def _complete(text: str, stops: Sequence[str], limit: int | None, *, chat: bool) -> tuple[str, str]:
    """Apply stop sequences then the token limit; return the output text and its finish reason."""
    stopped = False
    hits = [(text.find(s), s) for s in stops if isinstance(s, str) and s and s in text]
    if hits:
        at, seq = min(hits)
        # OpenAI-style chat omits the stop sequence; TGI's native API keeps it.
        text = text[:at] if chat else text[: at + len(seq)]
        stopped = True
    if limit is not None:
        text, cut = _truncate_words(text, limit)
        if cut:
            return text, "length"
    if chat:
        return text, "stop"
    return text, "stop_sequence" if stopped else "eos_token"


# ----------------------------------------------------------------- standalone process

SOLUTION_JSON = json.dumps({"steps": ["Add the numbers: 40 + 2 = 42."], "answer": "42"})
REVIEW_JSON = json.dumps(
    {
        "verdict": "correct",
        "logical_consistency": 5,
        "calculation_accuracy": 5,
        "step_completeness": 5,
        "issues": [],
        "suggested_answer": "42",
    }
)
SCRIPTS: dict[str, Responder] = {
    "echo": lambda request: SOLUTION_JSON,
    "review": lambda request: REVIEW_JSON,
    # Reviews when the prompt talks about reviewing, solves otherwise.
    "mutual": lambda request: REVIEW_JSON if "review" in request.prompt.lower() else SOLUTION_JSON,
    "prompt": echo_prompt,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fake LLM inference server (TGI / llama-cpp / vLLM look-alike)."
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kind", choices=SERVER_KINDS, default="tgi")
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="echo")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--max-concurrent", type=int, default=None, help="429 beyond this many in flight")
    parser.add_argument("--model-id", default=None)
    args = parser.parse_args(argv)

    script = SCRIPTS[args.script]
    delay: float = args.delay

    def responder(request: FakeRequest) -> Reply | str:
        result = script(request)
        return Reply(text=result, delay=delay) if isinstance(result, str) and delay > 0 else result

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: done.set())
    srv = FakeInferenceServer(
        responder,
        kind=args.kind,
        model_id=args.model_id,
        max_concurrent_requests=args.max_concurrent,
        port=args.port,
    )
    with srv:
        print(srv.url, flush=True)
        done.wait()  # interrupted by the signal handlers on POSIX
    return 0


if __name__ == "__main__":
    sys.exit(main())
