"""The model-server client: one boundary around huggingface_hub's InferenceClient.

It speaks the Messages API (`/v1/chat/completions`), which TGI, vLLM, SGLang and llama.cpp's
servers all serve, and asks for structured output in each server's own dialect. Every failure is
mapped once, here, onto `workers.errors`; nothing from huggingface_hub or httpx2 leaks out.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from base64 import b64encode
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

# Building its user agent, huggingface_hub otherwise asks huggingface.co for a registry on first
# use: seconds of stall per process, and a timeout where the hub is out of reach.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import httpx2
from huggingface_hub import InferenceClient, InferenceTimeoutError, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session, set_client_factory
from huggingface_hub.utils._http import hf_request_event_hook

from rstar.types import ModelRequest
from workers.errors import (
    MalformedReplyError,
    ModelServerError,
    ModelTimeoutError,
    OverloadedError,
    RequestRejectedError,
    RetryableError,
    UnavailableError,
)
from workers.redact import url_credentials, without_userinfo
from workers.settings import ServerKind

logger = logging.getLogger(__name__)

constants.HF_HUB_DISABLE_TELEMETRY = True
# httpx2 logs every request at INFO: a line per model call, which the audit trail records anyway.
logging.getLogger("httpx2").setLevel(logging.WARNING)

# One worker process keeps up to a few hundred requests in flight; the library's shared client
# would queue threads beyond 100 connections and count that wait against the timeout.
HTTP_LIMITS = httpx2.Limits(max_connections=512, max_keepalive_connections=256)


def _client_factory() -> httpx2.Client:
    return httpx2.Client(
        event_hooks={"request": [hf_request_event_hook]},
        follow_redirects=True,
        timeout=None,
        limits=HTTP_LIMITS,
    )


set_client_factory(_client_factory)

# Stored bodies are capped: a broken server can send megabytes, the audit trail keeps the start.
MAX_STORED_BODY = 64 * 1024
# No max_tokens budget produces more text than this: a longer reply is a broken server (refused,
# and retried like any malformed reply).
MAX_REPLY_CHARS = 1_000_000
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerInfo:
    kind: ServerKind
    model_id: str | None
    max_concurrent_requests: int | None


@dataclass(frozen=True)
class ModelReply:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    model: str | None
    request: dict[str, Any]
    response: dict[str, Any]
    server_kind: ServerKind | None = None
    """What the server was identified as before the call (recording must not probe it again)."""
    texts: tuple[str, ...] = ()
    """Every sequence generated, in order (`text` is the first); empty: just `text`."""
    requests: int = 1
    """HTTP requests it took: 1, or `n` when a server that ignores `n` was sent one per sample."""

    @property
    def sequences(self) -> tuple[str, ...]:
        return self.texts or (self.text,)


# Servers whose chat route samples `n` choices per request, evaluating the shared prompt once.
# llama.cpp's llama-server takes `n` (an alias of its `n_cmpl`) up to its slot count, giving the
# i-th choice the seed base + i (tools/server/server-task.h, `add_child`): a larger n is split into
# requests of at most that many. TGI ignores `n` and llama-cpp-python's server does not take it:
# they get one request per sample, sent together, with the same seeds.
NATIVE_N: frozenset[ServerKind] = frozenset({"vllm", "openai", "llama-server"})
# Servers that take top_k on the chat route (TGI's Messages API has no such field).
TAKES_TOP_K: frozenset[ServerKind] = frozenset({"vllm", "llama-cpp", "llama-server"})
# Servers whose in-flight limit counts sequences (a request with n takes n slots), not requests.
SLOTS_PER_SEQUENCE: frozenset[ServerKind] = frozenset({"llama-server"})


MAX_SAMPLER_THREADS = 512
"""Threads one client keeps for fanned-out samples, when the server does not bound its requests."""


def fan_out_seeds(request: ModelRequest) -> list[int | None]:
    """The seeds of the n requests that sample a request's n sequences one by one."""
    if request.seed is None:
        return [None] * request.n
    return [(request.seed + i) % 2**31 for i in range(request.n)]


def stored_text(reply: ModelReply) -> str | None:
    """What a call records as `response_text`: the text, or the JSON list of a sampled call's
    sequences, each cut to its share of the stored size."""
    texts = reply.sequences
    if len(texts) == 1:
        return truncate(texts[0])
    share = max(256, MAX_STORED_BODY // len(texts))
    return json.dumps([truncate(t, share) for t in texts], ensure_ascii=False)


def truncate(text: str | None, limit: int = MAX_STORED_BODY) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [truncated, {len(text)} characters in all]"


def response_format_for(kind: ServerKind, schema: dict[str, Any]) -> dict[str, Any] | None:
    """Structured output in each server's dialect (see the brief: they differ and fail silently)."""
    if kind == "tgi":
        return {"type": "json", "value": schema}
    if kind in ("llama-cpp", "llama-server"):
        return {"type": "json_object", "schema": schema}
    if kind in ("vllm", "openai"):
        # huggingface_hub rewrites the `json_schema` form into TGI's; plain JSON mode passes through
        # unchanged, and the prompt carries the schema. The parser validates either way.
        return {"type": "json_object"}
    return None


def auth_headers(url: str, token: str | None) -> dict[str, str]:
    """The Authorization header for an endpoint: basic auth from the URL's credentials (they are
    that server's own, so they win), else the bearer token (RSTAR_API_TOKEN), else none."""
    credentials = url_credentials(url)
    if credentials is not None:
        return {"Authorization": "Basic " + b64encode(":".join(credentials).encode()).decode()}
    return {"Authorization": f"Bearer {token}"} if token else {}


_info_cache: dict[str, ServerInfo] = {}
_info_lock = threading.Lock()

# Endpoints this process found not answering (connection refused, no route...) and said so in its
# log, with when they last failed: a server that is down for good fails every step sent to it, and
# one warning tells the operator more than a line per step; a model's other replicas take its work
# meanwhile (workers/replicas.py). Forgotten when the endpoint answers again.
_down: dict[str, float] = {}
_down_lock = threading.Lock()


def forget_servers() -> None:
    """Forget what this process learnt of servers (kinds, limits, which were down): for a process
    that outlives them, such as a test session, where a later server may get a former one's port."""
    with _info_lock:
        _info_cache.clear()
    with _down_lock:
        _down.clear()


def endpoint_down(base_url: str) -> bool:
    """True while this process has reported the endpoint as not answering."""
    return base_url.rstrip("/") in _down


def down_since(base_url: str) -> float | None:
    """When (time.monotonic) the endpoint last failed to answer, while it is reported down."""
    return _down.get(without_userinfo(base_url).rstrip("/"))


def _not_answering(base_url: str, exc: Exception) -> None:
    base = without_userinfo(base_url).rstrip("/")
    with _down_lock:
        known = base in _down
        _down[base] = time.monotonic()
    if known:
        return
    logger.warning(
        "endpoint %s is not answering (%s: %s); steps for it will retry with backoff",
        base,
        type(exc).__name__,
        exc,
    )


def mark_not_answering(base_url: str, exc: Exception) -> None:
    """Report the endpoint down (or still down): a call to it failed before the server answered."""
    _not_answering(base_url, exc)


def _answering(base_url: str) -> None:
    base = base_url.rstrip("/")
    if base not in _down:  # the hot path: no lock
        return
    with _down_lock:
        if base not in _down:
            return
        del _down[base]
    logger.info("endpoint %s answers again", base)


def probe_server(base_url: str, *, token: str | None = None, timeout: float = PROBE_TIMEOUT) -> ServerInfo:
    """Ask the server what it is: TGI answers `/info`, the OpenAI-compatible ones `/v1/models`."""
    headers = auth_headers(base_url, token)
    base = without_userinfo(base_url).rstrip("/")
    session = get_session()
    try:
        info = session.get(f"{base}/info", headers=headers, timeout=timeout)
        if info.status_code == 200:
            data = info.json()
            if isinstance(data, dict) and "model_id" in data:
                max_conc = data.get("max_concurrent_requests")
                return ServerInfo(
                    "tgi", str(data["model_id"]), max_conc if isinstance(max_conc, int) else None
                )
        models = session.get(f"{base}/v1/models", headers=headers, timeout=timeout)
        models.raise_for_status()
        entries = models.json().get("data") or []
        first = entries[0] if entries and isinstance(entries[0], dict) else {}
        owner = str(first.get("owned_by", ""))
        # "me": llama-cpp-python's server; "llamacpp": llama.cpp's llama-server. Both take
        # {"type": "json_object", "schema": S}; only llama-server takes `n`.
        kind: ServerKind = (
            "vllm"
            if owner == "vllm"
            else "llama-cpp"
            if owner == "me"
            else "llama-server"
            if owner == "llamacpp"
            else "openai"
        )
        model_id = first.get("id")
        # llama-cpp-python's server decodes one request at a time (a lock around its model): more in
        # flight only wait there, and time out (32 assumed, the README's local path timed out).
        slots = _slots(session, base, headers) if owner == "llamacpp" else 1 if owner == "me" else None
        _answering(base)
        return ServerInfo(kind, str(model_id) if model_id is not None else None, slots)
    except (httpx2.HTTPError, ValueError, AttributeError) as exc:
        if isinstance(exc, httpx2.ConnectError):
            _not_answering(base, exc)
        raise UnavailableError(f"cannot identify the model server at {base}: {exc}") from exc


def unreachable(base_url: str, *, token: str | None = None, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the server at `base_url` does not answer HTTP (refused, no route, timed out), or None
    when it answers anything: `rstar submit` refuses a roster with a model no one serves."""
    base = without_userinfo(base_url).rstrip("/")
    try:
        get_session().get(f"{base}/health", headers=auth_headers(base_url, token), timeout=timeout)
    except httpx2.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _slots(session: Any, base: str, headers: dict[str, str]) -> int | None:
    """llama-server's parallel slots (`/props` total_slots): its concurrent requests at most."""
    try:
        props = session.get(f"{base}/props", headers=headers, timeout=PROBE_TIMEOUT)
        slots = props.json().get("total_slots") if props.status_code == 200 else None
    except (httpx2.HTTPError, ValueError, AttributeError):
        return None
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 else None


def server_info(base_url: str, *, kind: ServerKind = "auto", token: str | None = None) -> ServerInfo:
    """`probe_server`, once per process and URL; a configured kind skips the probe."""
    if kind != "auto":
        return ServerInfo(kind, None, None)
    with _info_lock:
        cached = _info_cache.get(base_url)
    if cached is not None:
        return cached
    info = probe_server(base_url, token=token)
    with _info_lock:
        _info_cache[base_url] = info
    return info


class InFlightLimit:
    """At most `limit` slots in flight from this process to one endpoint (None: no limit).

    TGI refuses at once with 429 beyond `--max-concurrent-requests`; a worker with more threads
    than its share of that limit would trip it all the time. Threads beyond the limit wait here
    with their step already claimed, so a freed slot is refilled without a broker round trip.
    A request may take several slots (llama-server decodes each of a request's n sequences in a
    slot of its own); waiters are served first come, first served, so a request that needs many
    slots is not starved by a stream of single ones.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._used = 0
        self._queue: deque[object] = deque()

    @contextmanager
    def slot(self, weight: int = 1) -> Iterator[None]:
        if not self.limit:
            yield
            return
        need = min(max(1, weight), self.limit)
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self._used + need > self.limit:
                self._cond.wait()
            self._queue.popleft()
            self._used += need
            self._cond.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()


_limits: dict[str, InFlightLimit] = {}


@dataclass(frozen=True)
class InFlightShare:
    slots: int | None
    """Requests this process may keep in flight to the endpoint; None: the server does not say."""
    source: str
    """Where the number comes from, e.g. "TGI max_concurrent_requests 128" (for the start-up line)."""


def in_flight_share(
    base_url: str, *, max_in_flight: int | None, share: int, token: str | None = None
) -> InFlightShare:
    """`max_in_flight` when set, else the server's limit (TGI's `/info` max_concurrent_requests,
    llama-server's `/props` slots) divided by `share`, the number of worker processes that send
    to it. Raises UnavailableError when the server cannot be asked."""
    if max_in_flight is not None:
        return InFlightShare(max_in_flight, f"RSTAR_MAX_IN_FLIGHT {max_in_flight}")
    info = server_info(base_url, token=token)
    server_max = info.max_concurrent_requests
    if not server_max:
        return InFlightShare(None, f"{info.kind} server reports no limit")
    what = {
        "tgi": "TGI max_concurrent_requests",
        "llama-cpp": "llama-cpp-python, one request at a time:",
    }.get(info.kind, "llama-server slots")
    split = f" / {share} workers" if share > 1 else ""
    return InFlightShare(max(1, server_max // max(1, share)), f"{what} {server_max}{split}")


def in_flight_limit(
    base_url: str, *, max_in_flight: int | None, share: int, token: str | None = None
) -> InFlightLimit:
    """This process's limit for an endpoint (`in_flight_share`), made once; no limit when the
    server does not say."""
    with _info_lock:
        limit = _limits.get(base_url)
    if limit is not None:
        return limit
    try:
        slots = in_flight_share(base_url, max_in_flight=max_in_flight, share=share, token=token).slots
    except UnavailableError:
        return InFlightLimit(None)  # not up yet: no limit for this call, ask again on the next
    with _info_lock:
        return _limits.setdefault(base_url, InFlightLimit(slots))


class ModelClient:
    """Chat completions against one endpoint, with a timeout on every call.

    Example:
        >>> client = ModelClient("http://tgi-a:8080", timeout=60)
        >>> reply = client.complete(ModelRequest(messages=(...,), temperature=0.7, max_tokens=512))
        >>> reply.text, reply.completion_tokens
    """

    def __init__(
        self,
        base_url: str,
        *,
        kind: ServerKind = "auto",
        timeout: float = 120.0,
        token: str | None = None,
        max_in_flight: int | None = None,
        share: int = 1,
    ) -> None:
        # Credentials in the URL go into an Authorization header, never into the URL requested:
        # base_url is shown and stored (errors, call records), and httpx puts the URL it requested,
        # userinfo and all, into its error messages.
        self._url = base_url.rstrip("/")  # credentials and all: only for requests, never shown
        self.base_url = without_userinfo(self._url)
        self._kind = kind
        self._token = token
        self._max_in_flight = max_in_flight
        self._share = share
        self._client = InferenceClient(
            base_url=self.base_url, timeout=timeout, api_key=token, headers=auth_headers(base_url, token)
        )
        self._samplers: ThreadPoolExecutor | None = None
        self._samplers_lock = threading.Lock()

    @property
    def info(self) -> ServerInfo:
        return server_info(self._url, kind=self._kind, token=self._token)

    def build_payload(self, request: ModelRequest) -> dict[str, Any]:
        """The request body as sent (minus transport details): what the audit trail stores."""
        payload: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        kind = self.info.kind if (request.top_k is not None or request.n > 1) else None
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.top_k is not None and kind in TAKES_TOP_K:
            payload["top_k"] = request.top_k
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.n > 1:
            payload["n"] = request.n
            if kind not in NATIVE_N:  # sent as n requests, that differ only in their seed
                payload["fan_out_seeds"] = fan_out_seeds(request)
        if request.json_schema is not None:
            fmt = response_format_for(self.info.kind, request.json_schema)
            if fmt is not None:
                payload["response_format"] = fmt
        return payload

    @property
    def in_flight(self) -> InFlightLimit:
        return in_flight_limit(
            self._url, max_in_flight=self._max_in_flight, share=self._share, token=self._token
        )

    def complete(self, request: ModelRequest) -> ModelReply:
        """Run one chat completion in one of this process's in-flight slots for the endpoint (the
        wait for a slot is not part of the reply's latency).

        Raises:
            OverloadedError, UnavailableError, ModelTimeoutError, MalformedReplyError: retryable.
            RequestRejectedError: the server refused the request; retrying will not help.
        """
        kind = self.info.kind
        if request.n > 1 and kind not in NATIVE_N:
            return self._fan_out(request)
        if kind in SLOTS_PER_SEQUENCE:
            chunk = self._sequences_per_request()
            if request.n > chunk:
                return self._split(request, chunk)
            with self.in_flight.slot(request.n):
                return self._complete(request)
        with self.in_flight.slot():
            return self._complete(request)

    def _sequences_per_request(self) -> int:
        """The largest `n` one request may ask of a server that decodes each sequence in a slot
        (llama-server refuses n above its slot count): its slots, or this process's share of them."""
        known = [x for x in (self.info.max_concurrent_requests, self.in_flight.limit) if x]
        return min(known) if known else MAX_SAMPLER_THREADS

    def _split(self, request: ModelRequest, chunk: int) -> ModelReply:
        """`n` samples from a server that takes at most `chunk` per request: requests of at most
        `chunk` sent together, the i-th sequence seeded base + i as in one request (the server
        seeds a request's choices base, base + 1, ...), recorded as one call of that many requests;
        a failure is recorded like a fanned-out call's."""
        seeds = fan_out_seeds(request)
        parts = [
            replace(request, n=min(chunk, request.n - start), seed=seeds[start])
            for start in range(0, request.n, chunk)
        ]
        return self._gather(request, parts)

    def _fan_out(self, request: ModelRequest) -> ModelReply:
        """`n` samples from a server that does not take `n`: n requests at once, seeds base, base+1,
        ... (each in an in-flight slot of its own), recorded as one call of n requests. One failure
        fails the call (the step retries all n: a partial expansion would not be the tree's); the
        failure carries what the others generated, so that the audit trail counts them."""
        return self._gather(request, [replace(request, n=1, seed=seed) for seed in fan_out_seeds(request)])

    def _gather(self, request: ModelRequest, parts: list[ModelRequest]) -> ModelReply:
        """The parts of a request sent together (each in its in-flight slots), as one reply."""
        futures = [self._sampler_pool().submit(self.complete, part) for part in parts]
        replies: list[ModelReply] = []
        errors: list[ModelServerError] = []
        for future in futures:
            try:
                replies.append(future.result())
            except ModelServerError as exc:
                errors.append(exc)
        if errors:
            raise self._fan_out_error(request, len(parts), replies, errors)
        first = replies[0]
        texts = tuple(t for r in replies for t in r.sequences)
        reasons = sorted({x for r in replies if r.finish_reason for x in r.finish_reason.split(",")})
        return replace(
            first,
            text=texts[0],
            texts=texts,
            requests=sum(r.requests for r in replies),
            finish_reason=",".join(reasons)[:50] or None,
            prompt_tokens=_sum_or_none(r.prompt_tokens for r in replies),
            completion_tokens=_sum_or_none(r.completion_tokens for r in replies),
            latency_ms=max(r.latency_ms for r in replies),
            request=self.build_payload(request),
            response={"responses": [r.response for r in replies]},
        )

    def _sampler_pool(self) -> ThreadPoolExecutor:
        """The threads that send fanned-out samples, shared by all of this client's calls: a pool
        per call started n threads for every expansion. As many as the process's in-flight slots
        (samples beyond them would only wait for a slot), so every slot can be used."""
        with self._samplers_lock:
            if self._samplers is None:
                slots = self.in_flight.limit or MAX_SAMPLER_THREADS
                self._samplers = ThreadPoolExecutor(
                    max_workers=min(slots, MAX_SAMPLER_THREADS), thread_name_prefix="rstar-sample"
                )
            return self._samplers

    def _fan_out_error(
        self, request: ModelRequest, parts: int, replies: list[ModelReply], errors: list[ModelServerError]
    ) -> ModelServerError:
        """The failure of a call sent in parts: a permanent one if any (retrying cannot help), with
        the whole call's request and what its requests cost and returned."""
        error = next((e for e in errors if not isinstance(e, RetryableError)), errors[0])
        if len(errors) > 1:
            error.message = f"{error.message} ({len(errors)} of {parts} sampled requests failed)"
            error.args = (error.message,)
        error.request = self.build_payload(request)
        error.requests = parts
        error.sequences = sum(len(r.sequences) for r in replies)
        error.prompt_tokens = _sum_or_none(r.prompt_tokens for r in replies)
        error.completion_tokens = _sum_or_none(r.completion_tokens for r in replies)
        error.response = {
            "responses": [r.response for r in replies],
            "errors": [f"{type(e).__name__}: {e.message}" for e in errors],
        }
        latencies = [e.latency_ms for e in errors if e.latency_ms is not None]
        error.latency_ms = max([*latencies, *(r.latency_ms for r in replies)], default=None)
        return error

    def _complete(self, request: ModelRequest) -> ModelReply:
        # Identify the server first: a probe that fails now costs nothing, after the call it would
        # lose a reply already paid for.
        info = self.info
        payload = self.build_payload(request)
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000.0

        try:
            out = self._client.chat_completion(
                # The name the server lists: huggingface_hub would send "dummy", which vLLM refuses
                # and llama-cpp-python echoes back as the served model. Not part of the recorded
                # request (it names the server, not the question; --resume-from matches requests).
                model=info.model_id,
                messages=payload["messages"],
                temperature=payload["temperature"],
                max_tokens=payload["max_tokens"],
                seed=payload.get("seed"),
                stop=payload.get("stop"),
                response_format=payload.get("response_format"),  # type: ignore[arg-type]
                top_p=payload.get("top_p"),
                n=payload.get("n"),
                extra_body={"top_k": payload["top_k"]} if "top_k" in payload else None,
            )
        except InferenceTimeoutError as exc:
            raise ModelTimeoutError(
                f"no answer within the timeout from {self.base_url}", request=payload, latency_ms=elapsed()
            ) from exc
        except HfHubHTTPError as exc:
            _answering(self.base_url)  # it answered, with an error status
            raise _http_error(exc, payload, elapsed()) from exc
        except httpx2.HTTPError as exc:
            if isinstance(exc, httpx2.ConnectError):
                _not_answering(self.base_url, exc)
            raise UnavailableError(
                f"connection to {self.base_url} failed: {type(exc).__name__}: {exc}",
                request=payload,
                latency_ms=elapsed(),
            ) from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise MalformedReplyError(
                f"reply from {self.base_url} is not JSON: {exc}", request=payload, latency_ms=elapsed()
            ) from exc
        _answering(self.base_url)
        reply = _reply_from(out, payload, elapsed(), self.base_url)
        if info.kind in SLOTS_PER_SEQUENCE and len(reply.sequences) > 1:
            reply = self._count_choices(reply, request)
        return replace(reply, server_kind=info.kind, model=reply.model or info.model_id)

    def _count_choices(self, reply: ModelReply, request: ModelRequest) -> ModelReply:
        """llama-server answers a request with `n` with the first choice's usage only (it merges
        its sequences' results into one and keeps the first's `usage`): the others' tokens are
        counted by its `/tokenize` of their text, plus the end-of-sequence token it counts when a
        choice stopped without a stop string to blame. Uncounted (None) if that fails."""
        if reply.completion_tokens is None:
            return reply
        session = get_session()
        headers = auth_headers(self._url, self._token)
        total = reply.completion_tokens
        reasons = [r.get("finish_reason") for r in reply.response.get("choices") or []]
        try:
            for i, text in enumerate(reply.sequences[1:], 1):
                done = session.post(
                    f"{self.base_url}/tokenize",
                    json={"content": text},
                    headers=headers,
                    timeout=PROBE_TIMEOUT,
                )
                tokens = done.json().get("tokens") if done.status_code == 200 else None
                if not isinstance(tokens, list):
                    return replace(reply, completion_tokens=None)
                ended = i < len(reasons) and reasons[i] == "stop" and not request.stop
                total += len(tokens) + (1 if ended else 0)
        except (httpx2.HTTPError, ValueError, AttributeError):
            return replace(reply, completion_tokens=None)
        return replace(reply, completion_tokens=total)


def _reply_from(out: Any, payload: dict[str, Any], latency: float, base_url: str) -> ModelReply:
    raw = dict(out) if isinstance(out, dict) else {"unexpected": repr(out)[:MAX_STORED_BODY]}
    try:
        choice = out.choices[0]
        texts = tuple(c.message.content for c in out.choices)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"message content is {type(t).__name__}")
        text = texts[0]
        if len(texts) < payload.get("n", 1):
            raise TypeError(f"{len(texts)} choices where {payload['n']} were asked for")
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise MalformedReplyError(
            f"reply from {base_url} is not a chat completion: {exc}",
            body=truncate(json.dumps(raw, default=str)),
            request=payload,
            latency_ms=latency,
        ) from exc
    if sum(len(t) for t in texts) > MAX_REPLY_CHARS:
        raise MalformedReplyError(
            f"reply from {base_url} is too large: {len(text)} characters (the limit is {MAX_REPLY_CHARS})",
            body=truncate(text, 2000),
            request=payload,
            latency_ms=latency,
        )
    usage = getattr(out, "usage", None)
    stored = json.loads(json.dumps(raw, default=str))
    if sum(len(t) for t in texts) > MAX_STORED_BODY:  # the texts are in response_text already
        stored = {
            **stored,
            "choices": [{**_plain(c), "message": "[in response_text]"} for c in stored.get("choices") or []],
        }
    reasons = sorted({str(r) for c in out.choices if (r := getattr(c, "finish_reason", None))})
    finish = getattr(choice, "finish_reason", None) if len(texts) == 1 else ",".join(reasons)[:50] or None
    return ModelReply(
        text=text,
        texts=texts if len(texts) > 1 else (),
        finish_reason=finish,
        prompt_tokens=_int_or_none(getattr(usage, "prompt_tokens", None)),
        completion_tokens=_int_or_none(getattr(usage, "completion_tokens", None)),
        latency_ms=latency,
        model=getattr(out, "model", None),
        request=payload,
        response=stored,
    )


def _plain(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": repr(value)[:200]}


def _sum_or_none(values: Iterator[int | None] | Any) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _http_error(exc: HfHubHTTPError, payload: dict[str, Any], latency: float) -> ModelServerError:
    response = exc.response
    status = response.status_code if response is not None else None
    try:
        body = truncate(response.text) if response is not None else None
    except Exception:  # a streamed body that was never read
        body = None
    message = f"HTTP {status}: {truncate(body or str(exc), 500)}"
    kwargs: dict[str, Any] = {"http_status": status, "body": body, "request": payload, "latency_ms": latency}
    if status == 429:
        return OverloadedError(message, **kwargs)
    if status is None or status >= 500 or status in (408, 424):
        return UnavailableError(message, **kwargs)
    return RequestRejectedError(message, **kwargs)
