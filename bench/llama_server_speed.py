"""Aggregate generation speed of a local OpenAI-compatible server under N concurrent chat requests.

    M=~/.cache/rstar/models/qwen2.5-coder-0.5b-instruct.gguf
    LS=$(scripts/build_llama_server.sh)
    S="python -m bench.llama_server_speed --model $M --threads 2"
    # llama.cpp's llama-server, 1 / 4 / 8 slots with continuous batching (started and stopped here):
    $S --kind llama-server --binary "$LS" --parallel 1 --concurrency 1 --requests 6
    $S --kind llama-server --binary "$LS" --parallel 4 --ctx 8192 --concurrency 4 --requests 12
    $S --kind llama-server --binary "$LS" --parallel 8 --ctx 16384 --concurrency 8 --requests 16
    $S --kind llama-server --binary "$LS" --parallel 8 --concurrency 8 --server-args="--flash-attn on"
    # llama-cpp-python's server (one request at a time), what `rstar serve-local` runs today:
    $S --kind llama-cpp-python --python ~/.cache/rstar/devvenv/bin/python --concurrency 1 --requests 4
    # a server that is already running; also check structured output and print /v1/models, /props:
    python -m bench.llama_server_speed --url http://127.0.0.1:8080 --concurrency 4 --check-json --show-info

Each of `--concurrency` client threads sends the same GSM8K-style question (chat completion,
`--max-tokens` 256, temperature 0.7, a different seed per request) until `--requests` requests
(default 2 per thread) are done. Printed: the wall time from the first request to the last reply,
the generated tokens (the servers' `usage.completion_tokens`) and aggregate tokens/s = tokens / wall
time, the mean latency per request and single-stream speed; `--json-out` appends one JSON line.

Only the standard library is used, so it runs with any Python 3.11. The servers it starts run in
their own session with their output in a log file and are stopped (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "Then in June she sold 12 more clips than in May. How many clips did Natalia sell altogether in "
    "April, May and June?"
)
SYSTEM = "You are a careful math tutor. Reason step by step, then give the final answer as a number."

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "answer": {"type": "integer"},
    },
    "required": ["reasoning", "answer"],
    "additionalProperties": False,
}


def log(message: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# HTTP


def http(method: str, url: str, body: Any = None, timeout: float = 600.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def chat(base: str, *, max_tokens: int, temperature: float, seed: int, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "local",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        **extra,
    }
    t0 = time.monotonic()
    status, data = http("POST", f"{base}/v1/chat/completions", body)
    elapsed = time.monotonic() - t0
    if status != 200 or not isinstance(data, dict):
        raise RuntimeError(f"HTTP {status}: {str(data)[:500]}")
    data["_elapsed"] = elapsed
    return data


# ----------------------------------------------------------------------------------------------------
# Servers started here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    model = str(Path(args.model).expanduser())
    if args.kind == "llama-server":
        parallel = args.parallel or max(args.concurrency)
        # The KV cache (--ctx-size) is shared by the slots: give each one --ctx-per-slot tokens.
        ctx = args.ctx or parallel * args.ctx_per_slot
        return [
            str(Path(args.binary).expanduser()),
            "--model", model,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--threads", str(args.threads),
            "--threads-batch", str(args.threads),
            "--parallel", str(parallel),
            "--ctx-size", str(ctx),
            "--cont-batching",
            "--no-webui",
            *shlex.split(args.server_args),
        ]  # fmt: skip
    return [
        args.python, "-m", "llama_cpp.server",
        "--model", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_threads", str(args.threads),
        "--n_threads_batch", str(args.threads),
        "--n_ctx", str(args.ctx or 4096),
        "--logits_all", "false",
        "--interrupt_requests", "false",
        "--use_mlock", "false",
        *shlex.split(args.server_args),
    ]  # fmt: skip


def server_env(port: int, threads: int) -> dict[str, str]:
    # Both servers read settings from the environment (llama-cpp-python: HOST, PORT, MODEL, ... with
    # no prefix; llama-server: LLAMA_ARG_*): start them with a clean one.
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    env.update(HOST="127.0.0.1", PORT=str(port), OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = server_command(args, self.port)
        self.log_path = Path(args.log or tempfile.mkstemp(prefix=f"{args.kind}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.threads = args.threads

    def __enter__(self) -> Server:
        log(f"starting: {' '.join(self.command)}  (log: {self.log_path})")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env(self.port, self.threads),
                start_new_session=True,
            )
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            try:
                # llama-server answers /health 503 while loading; llama-cpp-python has no /health.
                status, _ = http("GET", f"{self.url}/v1/models", timeout=2)
                if status == 200:
                    status_h, _ = http("GET", f"{self.url}/health", timeout=2)
                    if status_h in (200, 404):
                        log(f"ready in {time.monotonic() - t0:.1f} s at {self.url}")
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after 180 s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# ----------------------------------------------------------------------------------------------------
# Measurements


def measure(base: str, concurrency: int, requests: int, args: argparse.Namespace) -> dict[str, Any]:
    seeds = iter(range(args.seed, args.seed + requests))
    lock = threading.Lock()
    replies: list[dict[str, Any]] = []
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                seed = next(seeds, None)
            if seed is None:
                return
            try:
                reply = chat(base, max_tokens=args.max_tokens, temperature=args.temperature, seed=seed)
            except Exception as e:  # counted and reported
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                replies.append(reply)

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.monotonic() - t0
    tokens = [r.get("usage", {}).get("completion_tokens", 0) for r in replies]
    latencies = [r["_elapsed"] for r in replies]
    per_stream = [t / lat for t, lat in zip(tokens, latencies, strict=True) if lat > 0]
    return {
        "concurrency": concurrency,
        "requests": len(replies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 2),
        "completion_tokens": sum(tokens),
        "prompt_tokens": sum(r.get("usage", {}).get("prompt_tokens", 0) for r in replies),
        "tokens_per_s": round(sum(tokens) / wall, 2) if wall > 0 else None,
        "mean_latency_s": round(statistics.mean(latencies), 2) if latencies else None,
        "mean_stream_tokens_per_s": round(statistics.mean(per_stream), 2) if per_stream else None,
        "finish_length": sum(1 for r in replies if r["choices"][0].get("finish_reason") == "length"),
    }


def check_json(base: str, args: argparse.Namespace) -> None:
    forms = {
        "json_object+schema": {"type": "json_object", "schema": ANSWER_SCHEMA},
        "json_schema": {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
        "json_object (no schema)": {"type": "json_object"},
    }
    for name, fmt in forms.items():
        try:
            reply = chat(
                base, max_tokens=args.max_tokens, temperature=args.temperature, seed=1, response_format=fmt
            )
        except RuntimeError as e:
            print(f"response_format {name}: refused: {e}")
            continue
        text = reply["choices"][0]["message"].get("content") or ""
        finish = reply["choices"][0].get("finish_reason")
        try:
            obj = json.loads(text)
            ok = (
                isinstance(obj, dict)
                and set(obj) == {"reasoning", "answer"}
                and isinstance(obj["reasoning"], str)
                and isinstance(obj["answer"], int)
            )
            verdict = "matches the schema" if ok else f"valid JSON, NOT the schema (keys {sorted(obj)})"
        except ValueError:
            verdict = "NOT valid JSON"
        print(f"response_format {name}: {verdict}; finish={finish}; content={text[:160]!r}")


def show_info(base: str) -> None:
    for path in ("/v1/models", "/props", "/info", "/health"):
        try:
            status, data = http("GET", f"{base}{path}", timeout=10)
        except OSError as e:
            print(f"GET {path}: {e}")
            continue
        if isinstance(data, dict) and path == "/props":
            # abridged: the chat template is long
            data = {k: (v[:80] + "..." if isinstance(v, str) and len(v) > 80 else v) for k, v in data.items()}
            dgs = data.get("default_generation_settings")
            if isinstance(dgs, dict):
                data["default_generation_settings"] = {
                    k: dgs[k] for k in ("n_ctx", "params", "id", "is_processing") if k in dgs
                } | {"...": f"{len(dgs)} keys"}
        print(f"GET {path} -> {status}: {json.dumps(data)[:1500]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="an already running server (otherwise one is started: --kind, --model)")
    p.add_argument("--kind", choices=("llama-server", "llama-cpp-python"), default="llama-server")
    p.add_argument("--model", help="GGUF file (for a server started here)")
    p.add_argument("--binary", default="llama-server", help="llama-server executable")
    p.add_argument(
        "--python", default=sys.executable, help="Python with llama_cpp installed (llama-cpp-python)"
    )
    p.add_argument("--parallel", type=int, default=0, help="llama-server slots (default: max --concurrency)")
    p.add_argument(
        "--ctx", type=int, default=0, help="--ctx-size in all (default: parallel x --ctx-per-slot)"
    )
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--server-args",
        default="",
        help='further server arguments, one string: --server-args="--flash-attn on"',
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1], help="one run per value")
    p.add_argument("--requests", type=int, default=0, help="requests per run (default: 2 x concurrency)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=1, help="requests sent (and not counted) before measuring")
    p.add_argument("--check-json", action="store_true", help="try the response_format forms")
    p.add_argument("--show-info", action="store_true", help="print /v1/models, /props, /info, /health")
    p.add_argument("--log", help="server log file (default: a temporary file)")
    p.add_argument("--json-out", help="append one JSON line per run to this file")
    args = p.parse_args(argv)
    if not args.url and not args.model:
        p.error("give --url, or --model to start a server")

    server = None if args.url else Server(args)
    base = args.url.rstrip("/") if args.url else server.url  # type: ignore[union-attr]
    try:
        if server is not None:
            server.__enter__()
        if args.show_info:
            show_info(base)
        if args.check_json:
            check_json(base, args)
        for _ in range(args.warmup):
            chat(base, max_tokens=16, temperature=args.temperature, seed=1)
        label = args.url or f"{args.kind}" + (
            f" --parallel {args.parallel or max(args.concurrency)}" if args.kind == "llama-server" else ""
        )
        for conc in args.concurrency:
            n = args.requests or 2 * conc
            log(f"{label}: {n} requests, {conc} at a time")
            row = measure(base, conc, n, args) | {"server": label, "threads": args.threads}
            print(json.dumps(row))
            if args.json_out:
                with open(args.json_out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        if server is not None:
            server.__exit__()
    return 0


if __name__ == "__main__":
    sys.exit(main())
