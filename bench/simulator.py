"""A simulated GPU inference server for throughput benchmarks (not the test fake: this one models time).

It speaks the HTTP that rstar-batch's client and the bare driver use (TGI's `/info`, `/health`,
`/v1/models`, `POST /v1/chat/completions`) and models *continuous batching* as a fluid: every
admitted request first waits a prefill time, then joins the decode batch, where all requests gain
one token per decode step and a step lasts `step_ms * (1 + batch / batch_knee)`. So a request's time
is prefill + generated tokens x step time(current batch size), and the server's token throughput
grows with the batch: an idle slot is GPU time thrown away. Like TGI, it refuses at once with HTTP
429 when `max_concurrent_requests` are already in flight (there is no queue in front of it).

Replies follow the mutual protocol deterministically per question (see `mutual_reply`): about half
of the problems agree in round 1, the rest need 2 or 3 rounds, so problems go through real rounds.
rstar's MCTS prompts get replies in the paper's shape (`rstar_reply`); like TGI, the simulator
ignores `n`, so a many-sample expansion arrives as that many requests.

Run standalone (prints the URL once listening; serves until SIGTERM):

    python -m bench.simulator --max-concurrent 64 --time-scale 0.2

`GET /stats` returns what it saw (requests, 429s sent, mean and peak in-flight, busy fraction,
the in-flight-over-time series); `POST /reset` clears it. `SimulatorProcess` runs one in a child
process so its CPU is measured apart from the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

MODEL_ID = "bench/simulated-7b"
TGI_VERSION = "3.3.6"


@dataclass(frozen=True)
class SimConfig:
    """Timing of the simulated GPU. All durations are multiplied by `time_scale`."""

    max_concurrent_requests: int = 64
    step_ms: float = 20.0
    """Decode step time of a batch of one."""
    batch_knee: float = 64.0
    """Step time = step_ms * (1 + batch / batch_knee): a batch of 64 takes twice as long per step."""
    prefill_ms: float = 30.0
    prefill_ms_per_token: float = 0.05
    time_scale: float = 0.2
    """Shrinks every duration, so a 500-problem benchmark takes a minute, not half an hour."""
    model_id: str = MODEL_ID

    def step_seconds(self, batch: int) -> float:
        return self.step_ms * (1.0 + batch / self.batch_knee) * self.time_scale / 1000.0

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return (self.prefill_ms + self.prefill_ms_per_token * prompt_tokens) * self.time_scale / 1000.0


# -- the mutual protocol, scripted -------------------------------------------------------------

_BLOCK = re.compile(r"<<<\n(.*?)\n>>>", re.S)
_FINAL = re.compile(r"Final answer: (\S+)")
_WORD = re.compile(r"\S+")
_FILLER_TEXT = (
    "we read the quantities carefully then combine them in order and check the arithmetic once more "
    "before moving on to the next part of the problem so that nothing is lost"
)
FILLER = tuple(_FILLER_TEXT.split())


def count_tokens(text: str) -> int:
    """Pseudo-tokens: whitespace-separated words (at least one)."""
    return max(1, len(_WORD.findall(text)))


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def agree_round(question: str) -> int:
    """The round in which both models reach the right answer: 1 for ~50%, 2 for ~30%, 3 for ~20%."""
    bucket = _digest("round", question) % 10
    return 1 if bucket < 5 else 2 if bucket < 8 else 3


def right_answer(question: str) -> int:
    return 10 + _digest("answer", question) % 990


def _filler(n_words: int, seed: int) -> str:
    start = seed % len(FILLER)
    return " ".join(FILLER[(start + i) % len(FILLER)] for i in range(max(1, n_words)))


def _prompt_kind(user: str, response_format: Any) -> str:
    """generate | review | refine, from the structured-output schema and the quoted blocks."""
    schema = json.dumps(response_format) if response_format is not None else ""
    blocks = len(_BLOCK.findall(user))
    if '"verdict"' in schema or ('"final_answer"' not in schema and blocks == 2):
        return "review"
    return "refine" if blocks >= 3 else "generate"


def mutual_reply(user: str, response_format: Any, max_tokens: int | None) -> tuple[str, int]:
    """(reply text, generated tokens) for a mutual-strategy prompt.

    Both models answer `right + k` in round k before the question's agreement round and the right
    answer from then on; a reviewer accepts exactly the right answer. Stateless: the round of a
    refinement is read back from the answer of the solution it revises. Lengths (the generated
    tokens the timing uses) are deterministic per question, kind and round: ~100-260 for a
    solution, ~60-160 for a review; the text has about that many words.
    """
    blocks = _BLOCK.findall(user)
    question = blocks[0] if blocks else user
    right = right_answer(question)
    target = agree_round(question)
    kind = _prompt_kind(user, response_format)
    shown = _FINAL.search(blocks[1]) if len(blocks) > 1 else None
    given = shown.group(1) if shown else None
    if kind == "review":
        tokens = 60 + _digest("review-len", question, given) % 101
        ok = given == str(right)
        body: dict[str, Any] = {
            "issues": []
            if ok
            else [{"step": 2, "description": "the result is wrong: " + _filler(12, tokens)}],
            "scores": {
                "logical_consistency": 5 if ok else 3,
                "calculation_accuracy": 5 if ok else 2,
                "step_completeness": 4,
            },
            "verdict": "correct" if ok else "incorrect",
            "correct_answer": str(right),
        }
        body["notes"] = _filler(tokens - 30, tokens)
    else:
        round_ = 1
        if kind == "refine" and given is not None:
            try:
                offset = int(given) - right
            except ValueError:
                offset = 0
            round_ = (offset if 0 < offset < 10 else target) + 1
        answer = right if round_ >= target else right + round_
        tokens = 100 + _digest("solution-len", question, round_) % 161
        n_steps = max(1, min(12, tokens // 20))
        per_step = max(3, tokens * 3 // 4 // n_steps)
        steps = [f"Step {i + 1}: {_filler(per_step, tokens + i)}" for i in range(n_steps)]
        steps[-1] = f"So the result is {answer}."
        body = {"steps": steps, "final_answer": str(answer)}
    if max_tokens is not None and max_tokens > 0:
        tokens = min(tokens, max_tokens)
    return json.dumps(body), tokens


# -- rstar's MCTS requests, scripted ---------------------------------------------------------

_QUESTION_LINE = re.compile(r"^Question(?: \d+)?: (.*)$", re.M)  # "Question 5:" since rstar-v4
_WRITE_ONLY = re.compile(r'Write (?:only )?"(?:Step |Sub-question |Question 5\.|Answer 5\.)(\d+):"')


def is_rstar_request(user: str, body: dict[str, Any]) -> bool:
    """rstar's prompts: its few-shot actions by their wording; A2 and the discriminator's
    completions, which since rstar-v3 use the seed strategies' prose solve prompt, by the nucleus
    sampling only rstar asks for (top_p)."""
    return (
        "The answer is: <number>" in user
        or "Rewrite the question as a list of conditions" in user
        or body.get("top_p") is not None
    )


def rstar_reply(user: str, seed: object, max_tokens: int | None) -> tuple[str, int]:
    """(reply text, generated tokens) for an rstar prompt, in the paper's shape: short single steps
    (A1: ~15-40 tokens) and sub-questions (~10-25), medium sub-answers (~30-70), long chains of
    thought (A2 and the discriminator's completions: ~100-260), the answer right for two seeds in
    three. Deterministic per question, instruction and seed, so both drivers grow the same trees."""
    found = _QUESTION_LINE.search(user)
    quoted = _BLOCK.search(user)  # the prose prompts quote the question
    question = found.group(1) if found else quoted.group(1) if quoted else user
    right = right_answer(question)
    answer = right if _digest("rstar-right", question, seed) % 3 else right + 1
    k_found = _WRITE_ONLY.search(user)
    k = int(k_found.group(1)) if k_found else 1
    salt = _digest("rstar-len", question, seed, user[-80:])
    if 'Write only "Step' in user:
        tokens = 15 + salt % 26
        tail = f" The answer is: {answer}" if k >= 3 and salt % 2 else ""
        text = f"Step {k}: {_filler(tokens - 3, salt)}{tail}"
    elif 'Write only "Sub-question' in user or 'Write "Question 5.' in user:
        tokens = 10 + salt % 16
        # rstar-v4's first sub-question is never the question itself.
        lead = "Now we can answer the question:" if salt % 3 == 0 and k > 1 else "How many"
        label = f"Sub-question {k}:" if "Sub-question" in user else f"Question 5.{k}:"
        text = f"{label} {lead} {_filler(tokens - 4, salt)}?"
    elif "Answer Sub-question" in user or 'Write "Answer 5.' in user:
        tokens = 30 + salt % 41
        label = f"Answer {k}:" if "Sub-question" in user else f"Answer 5.{k}:"
        text = f"{label} {_filler(tokens - 4, salt)}. The answer is: {answer}"
    elif "Rewrite the question" in user:
        tokens = 40 + salt % 41
        text = f"Condition 1: {_filler(tokens - 4, salt)}. Question: {question}"
    else:  # A2's remaining steps, a completion of a cut trajectory
        tokens = 100 + salt % 161
        n_steps = max(2, min(8, tokens // 30))
        per_step = max(3, tokens * 3 // 4 // n_steps)
        steps = [f"Step {i + 1}: {_filler(per_step, salt + i)}" for i in range(n_steps)]
        text = "\n".join([*steps, f"The answer is: {answer}"])
    if max_tokens is not None and max_tokens > 0:
        tokens = min(tokens, max_tokens)
    return text, tokens


# -- the continuous-batching engine ----------------------------------------------------------


class Engine:
    """The fluid model: all decoding requests progress at 1 / step_seconds(batch) tokens per second."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self._decoding: dict[int, list[Any]] = {}  # id -> [tokens left, future]
        self._next_id = 0
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.reset()

    def reset(self) -> None:
        now = time.monotonic()
        self.t0 = now
        self.in_flight = getattr(self, "in_flight", 0)
        self.requests = 0
        self.ok = 0
        self.rejected = 0
        self.tokens = 0
        self.peak = self.in_flight
        self.series: list[tuple[float, int]] = [(0.0, self.in_flight)]
        self.area = 0.0  # integral of in-flight dt
        self.busy = 0.0  # time with at least one request in flight
        self.first: float | None = None
        self.last_done: float | None = None
        self._mark = now

    def _account(self, now: float) -> None:
        dt = now - self._mark
        self.area += self.in_flight * dt
        if self.in_flight:
            self.busy += dt
        self._mark = now

    def admit(self) -> bool:
        """Take an in-flight slot, or say no (429)."""
        self.requests += 1
        if self.in_flight >= self.cfg.max_concurrent_requests:
            self.rejected += 1
            return False
        now = time.monotonic()
        self._account(now)
        if self.first is None:
            self.first = now
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.series.append((now - self.t0, self.in_flight))
        return True

    def leave(self, tokens: int) -> None:
        now = time.monotonic()
        self._account(now)
        self.in_flight -= 1
        self.ok += 1
        self.tokens += tokens
        self.last_done = now
        self.series.append((now - self.t0, self.in_flight))

    async def generate(self, prompt_tokens: int, tokens: int) -> None:
        await asyncio.sleep(self.cfg.prefill_seconds(prompt_tokens))
        if tokens <= 0:
            return
        self._progress(time.monotonic())
        future: asyncio.Future[None] = self.loop.create_future()
        self._decoding[self._next_id] = [float(tokens), future]
        self._next_id += 1
        self._reschedule()
        await future

    def _progress(self, now: float) -> None:
        """Advance every decoding request to `now` at the current batch's rate; finish the done ones."""
        if self._decoding:
            gained = (now - self._last) / self.cfg.step_seconds(len(self._decoding))
            done = []
            for key, entry in self._decoding.items():
                entry[0] -= gained
                if entry[0] <= 1e-3:
                    done.append(key)
            for key in done:
                future = self._decoding.pop(key)[1]
                if not future.done():
                    future.set_result(None)
        self._last = now

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._decoding:
            left = min(entry[0] for entry in self._decoding.values())
            due = self._last + left * self.cfg.step_seconds(len(self._decoding))
            self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._progress(time.monotonic())
        self._reschedule()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        self._account(now)
        end = self.last_done if self.in_flight == 0 and self.last_done else now
        start = self.first if self.first is not None else now
        span = max(end - start, 1e-9)
        # area and busy run from the reset; nothing is in flight before the first request.
        tail = now - end
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rejected_429": self.rejected,
            "generated_tokens": self.tokens,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak,
            "mean_in_flight": self.area / span if self.first is not None else 0.0,
            "busy_fraction": min(1.0, self.busy / span) if self.first is not None else 0.0,
            "first_request_s": (start - self.t0) if self.first is not None else None,
            "last_reply_s": (end - self.t0) if self.last_done is not None else None,
            "idle_after_s": tail,
            "series": self.series,
            "config": asdict(self.cfg),
        }


# -- HTTP/1.1, the minimum TGI's clients use ---------------------------------------------------


class SimServer:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.engine: Engine | None = None

    async def serve(self, host: str, port: int, ready: asyncio.Future[str] | None = None) -> None:
        self.engine = Engine(self.cfg)
        server = await asyncio.start_server(self._connection, host, port, backlog=1024)
        sock = server.sockets[0].getsockname()
        url = f"http://{sock[0]}:{sock[1]}"
        if ready is not None:
            ready.set_result(url)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                status, payload, ctype = await self._route(method, target.split("?", 1)[0], body)
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
                    f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        engine = self.engine
        assert engine is not None
        if method == "GET" and path == "/info":
            return _json(200, self._info())
        if method == "GET" and path == "/health":
            return 200, b"", "text/plain"
        if method == "GET" and path == "/v1/models":
            return _json(200, {"object": "list", "data": [{"id": self.cfg.model_id, "object": "model"}]})
        if method == "GET" and path == "/stats":
            return _json(200, engine.stats())
        if method == "POST" and path == "/reset":
            engine.reset()
            return _json(200, {"reset": True})
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(body)
        return 404, b"", "text/plain"

    def _info(self) -> dict[str, Any]:
        return {
            "model_id": self.cfg.model_id,
            "model_dtype": "torch.float16",
            "model_device_type": "cuda",
            "max_concurrent_requests": self.cfg.max_concurrent_requests,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": 8191,
            "max_total_tokens": 8192,
            "router": "text-generation-router",
            "version": TGI_VERSION,
        }

    async def _chat(self, raw: bytes) -> tuple[int, bytes, str]:
        engine = self.engine
        assert engine is not None
        if not engine.admit():
            return _json(429, {"error": "Model is overloaded", "error_type": "overloaded"})
        tokens = 0
        try:
            try:
                body = json.loads(raw)
                messages = body["messages"]
                user = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
            except (ValueError, KeyError, TypeError, StopIteration):
                return _json(422, {"error": "Input validation error", "error_type": "validation"})
            prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
            if is_rstar_request(user, body):
                text, tokens = rstar_reply(user, body.get("seed"), body.get("max_tokens"))
            else:
                text, tokens = mutual_reply(user, body.get("response_format"), body.get("max_tokens"))
            await engine.generate(prompt_tokens, tokens)
            reply = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.cfg.model_id,
                "system_fingerprint": f"{TGI_VERSION}-sim",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": tokens,
                    "total_tokens": prompt_tokens + tokens,
                },
            }
            return _json(200, reply)
        finally:
            # Leave the in-flight set before the reply is written, like the test fake: a client's
            # next request must not be refused for a slot its answered request still held.
            engine.leave(tokens)


_REASONS = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity", 429: "Too Many Requests"}


def _json(status: int, obj: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(obj).encode(), "application/json"


# -- running one in a child process ----------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class SimulatorProcess:
    """`python -m bench.simulator` in a child process; `.url`, `.stats()`, `.reset()`, `.cpu_seconds()`."""

    def __init__(self, cfg: SimConfig, *, log: Path | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SimulatorProcess:
        args = [
            sys.executable, "-m", "bench.simulator", "--port", "0",
            "--max-concurrent", str(self.cfg.max_concurrent_requests),
            "--step-ms", str(self.cfg.step_ms), "--batch-knee", str(self.cfg.batch_knee),
            "--prefill-ms", str(self.cfg.prefill_ms),
            "--prefill-ms-per-token", str(self.cfg.prefill_ms_per_token),
            "--time-scale", str(self.cfg.time_scale), "--model-id", self.cfg.model_id,
        ]  # fmt: skip
        stderr = self.log.open("w") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=Path(__file__).resolve().parent.parent
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the simulator did not start (said {line!r})")
        self.url = line
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated continuous-batching inference server (TGI-like).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    d = SimConfig()
    parser.add_argument("--max-concurrent", type=int, default=d.max_concurrent_requests)
    parser.add_argument("--step-ms", type=float, default=d.step_ms)
    parser.add_argument("--batch-knee", type=float, default=d.batch_knee)
    parser.add_argument("--prefill-ms", type=float, default=d.prefill_ms)
    parser.add_argument("--prefill-ms-per-token", type=float, default=d.prefill_ms_per_token)
    parser.add_argument("--time-scale", type=float, default=d.time_scale)
    parser.add_argument("--model-id", default=d.model_id)
    args = parser.parse_args(argv)
    cfg = SimConfig(
        max_concurrent_requests=args.max_concurrent,
        step_ms=args.step_ms,
        batch_knee=args.batch_knee,
        prefill_ms=args.prefill_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        time_scale=args.time_scale,
        model_id=args.model_id,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready: asyncio.Future[str] = loop.create_future()
        server = asyncio.ensure_future(SimServer(cfg).serve(args.host, args.port, ready))
        print(await ready, flush=True)
        await stop.wait()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
