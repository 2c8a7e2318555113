"""The reference for the throughput benchmark: a strategy's call graph, no Celery, no database.

Each problem runs as a coroutine over an in-memory `ProblemState`: it asks the real strategy's
`plan()` (mutual by default; rstar for the MCTS-shaped mode) which steps come next, builds each
request with `build_request()` (the same prompts and parameters the system sends, via
`ModelClient.build_payload`), issues it with huggingface_hub's `AsyncInferenceClient` under one
semaphore per endpoint (the concurrency), parses the reply with the same parsers, and finally
calls `select()`. A request for n samples to a server that ignores `n` (TGI, the simulator) goes
out as n requests at once with the seeds the client uses (`workers.client.fan_out_seeds`), each
under the semaphore. All problems start at once; the semaphores decide what is in flight, first
come first served, like the system's queues. A model given several URLs (replicas) sends each call
to the one with the fewest calls in flight or waiting, as the worker does (workers/replicas.py).

The views below carry the same fields `db.state.load_state` reads (the views render them for the
next prompt), so both drivers send identical prompts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import set_async_client_factory
from huggingface_hub.utils._http import (
    async_hf_request_event_hook,
    async_hf_response_event_hook,
    default_async_client_factory,
)

from rstar.strategies import get_strategy
from rstar.strategies.base import OutputView, ProblemState, StepSpec, StepView, output_views
from workers.client import ModelClient


@dataclass
class BareResult:
    makespan_s: float
    calls: int
    """HTTP requests answered (a fanned-out sample counts one)."""
    retries_429: int
    sequences: int
    answers: dict[int, str | None]
    rounds: dict[int, int]
    cpu_s: float
    """CPU seconds of this process while driving (the asyncio client's cost)."""
    started_at: float = 0.0
    """time.monotonic() when the first request could go out."""
    peak_in_flight: dict[str, int] = field(default_factory=dict)
    """Per endpoint URL, the most requests it had in flight at once (at most the concurrency)."""


@dataclass
class _Problem:
    index: int
    question: str
    models: tuple[str, ...]
    steps: dict[str, StepView] = field(default_factory=dict)
    outputs: dict[str, OutputView] = field(default_factory=dict)

    def state(self) -> ProblemState:
        return ProblemState(self.question, self.models, dict(self.steps), dict(self.outputs))


def _uncapped_async_client() -> httpx2.AsyncClient:
    """The library's AsyncClient without its pool limit: it allows 100 connections, so at a
    concurrency above 100 the rest waited in the pool, unseen, and the yardstick was capped (the
    ratios above 1.0 published at 128). The semaphores alone bound what is in flight."""
    return httpx2.AsyncClient(
        event_hooks={"request": [async_hf_request_event_hook], "response": [async_hf_response_event_hook]},
        follow_redirects=True,
        timeout=None,
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=None),
    )


class _Endpoint:
    def __init__(self, url: str, concurrency: int, timeout: float) -> None:
        self.url = url
        self.semaphore = asyncio.Semaphore(concurrency)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.load = 0  # calls sent to it, in flight or waiting for its semaphore
        self.client = AsyncInferenceClient(base_url=url, timeout=timeout)
        # Only for the payload: the same body (structured-output dialect included) the system sends.
        self.payloads = ModelClient(url)


class BareDriver:
    def __init__(
        self,
        urls: Mapping[str, str | Sequence[str]],
        *,
        concurrency: int,
        params: Mapping[str, Any] | None = None,
        timeout: float = 120.0,
        strategy: str = "mutual",
    ) -> None:
        """`urls`: each model's server, or its replicas (`concurrency` is per server)."""
        self.strategy = get_strategy(strategy, params)
        self.replicas = {m: (u,) if isinstance(u, str) else tuple(u) for m, u in urls.items()}
        self.urls = {m: u[0] for m, u in self.replicas.items()}
        self.concurrency = concurrency
        self.timeout = timeout
        self.calls = 0
        self.sequences = 0
        self.retries_429 = 0
        self._ids = 0
        self._endpoints: dict[str, _Endpoint] = {}

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    async def _sample(self, model: str, payload: dict[str, Any]) -> list[str]:
        """A request's sequences: one call, or n at once with their seeds (see the module doc)."""
        seeds = payload.get("fan_out_seeds")
        if seeds is None:
            return [await self._call(model, payload)]
        singles = [{**payload, "seed": seed} for seed in seeds]
        return list(await asyncio.gather(*(self._call(model, p) for p in singles)))

    def _pick(self, model: str) -> _Endpoint:
        return min((self._endpoints[u] for u in self.replicas[model]), key=lambda e: e.load)

    async def _call(self, model: str, payload: dict[str, Any]) -> str:
        endpoint = self._pick(model)
        endpoint.load += 1
        try:
            return await self._call_on(endpoint, payload)
        finally:
            endpoint.load -= 1

    async def _call_on(self, endpoint: _Endpoint, payload: dict[str, Any]) -> str:
        delay = 0.05
        while True:
            async with endpoint.semaphore:
                endpoint.in_flight += 1
                endpoint.peak_in_flight = max(endpoint.peak_in_flight, endpoint.in_flight)
                try:
                    out = await endpoint.client.chat_completion(
                        messages=payload["messages"],
                        temperature=payload["temperature"],
                        max_tokens=payload["max_tokens"],
                        seed=payload.get("seed"),
                        stop=payload.get("stop"),
                        response_format=payload.get("response_format"),
                        top_p=payload.get("top_p"),
                    )
                    self.calls += 1
                    text = out.choices[0].message.content
                    return text if isinstance(text, str) else ""
                except HfHubHTTPError as exc:
                    if exc.response is None or exc.response.status_code != 429:
                        raise
                    self.retries_429 += 1
                finally:
                    endpoint.in_flight -= 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _run_step(self, problem: _Problem, spec: StepSpec) -> None:
        # What the worker does around a call, in memory: request, parent, call, the strategy's parse.
        assert spec.model is not None
        state = problem.state()
        request = self.strategy.build_request(spec, state)
        parent = self.strategy.parent(spec, state)
        payload = self._endpoints[self.urls[spec.model]].payloads.build_payload(request)
        texts = await self._sample(spec.model, payload)
        self.sequences += len(texts)
        problem.outputs.update(output_views(self.strategy, spec, parent, texts, self._next_id))
        problem.steps[spec.key] = StepView(spec.key, str(spec.kind), spec.model, spec.round, "done")

    async def _solve(self, problem: _Problem) -> tuple[str | None, int]:
        running: dict[str, asyncio.Task[None]] = {}
        while True:
            plan = self.strategy.plan(problem.state())
            for spec in plan.steps:
                if spec.key not in problem.steps:
                    problem.steps[spec.key] = StepView(
                        spec.key, str(spec.kind), spec.model, spec.round, "queued"
                    )
                    running[spec.key] = asyncio.ensure_future(self._run_step(problem, spec))
            if plan.finished and not running:
                chosen = self.strategy.select(problem.state())
                return chosen.answer, chosen.rounds_used
            if not running:
                raise RuntimeError(f"problem {problem.index}: nothing to run and not finished")
            done, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
            for key in [k for k, t in running.items() if t in done]:
                running.pop(key).result()

    async def run(self, questions: Sequence[str]) -> BareResult:
        set_async_client_factory(_uncapped_async_client)
        try:
            return await self._run(questions)
        finally:
            set_async_client_factory(default_async_client_factory)

    async def _run(self, questions: Sequence[str]) -> BareResult:
        for url in {u for urls in self.replicas.values() for u in urls}:
            self._endpoints[url] = _Endpoint(url, self.concurrency, self.timeout)
            self._endpoints[url].payloads.info  # probe /info before the clock starts  # noqa: B018
        problems = [_Problem(i, q, tuple(self.urls)) for i, q in enumerate(questions)]
        cpu0, t0 = time.process_time(), time.monotonic()
        results = await asyncio.gather(*(self._solve(p) for p in problems))
        makespan = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        for endpoint in self._endpoints.values():
            await endpoint.client.close()
        return BareResult(
            makespan_s=makespan,
            calls=self.calls,
            retries_429=self.retries_429,
            sequences=self.sequences,
            answers={i: a for i, (a, _) in enumerate(results)},
            rounds={i: r for i, (_, r) in enumerate(results)},
            cpu_s=cpu,
            started_at=t0,
            peak_in_flight={e.url: e.peak_in_flight for e in self._endpoints.values()},
        )


def run_bare(
    questions: Sequence[str],
    urls: Mapping[str, str | Sequence[str]],
    *,
    concurrency: int,
    params: Mapping[str, Any] | None = None,
    strategy: str = "mutual",
) -> BareResult:
    driver = BareDriver(urls, concurrency=concurrency, params=params, strategy=strategy)
    return asyncio.run(driver.run(questions))
