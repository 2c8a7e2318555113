"""A real one-token decode with the local model build, in a child process, so a build that crashes
on this machine is caught where it was made instead of in the middle of a demo.

    python -m localmodels.check wheel                        # llama-cpp-python in this interpreter
    python -m localmodels.check llama-server --binary PATH   # a llama-server binary

Exit status 0 when the model answered; 3 when the decode crashed or failed (the reason on stderr,
one line, then the child's last output lines): the build does not work here; 2 when there is no
model to check with. Any other status means the check itself failed, which says nothing about the
build.
`scripts/bootstrap.sh` and `scripts/build_llama_server.sh` run it after every build and on every
new machine, and fall back to a build with fewer CPU features when it fails; CI runs it every run.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from localmodels.servers import default_threads, describe_exit, free_port, signal_group

__all__ = ["BUILD_FAILED", "CheckResult", "check_llama_server", "check_wheel"]

# The exit status that condemns the build (the scripts mark it crashed for this machine). Not 1,
# which any Python error exits with (an import error must not pass for a crashed build).
BUILD_FAILED = 3

# Long enough that the prompt is decoded as a batch (the matrix-matrix kernels, where a CPU-specific
# code path such as AMX's runs), short enough to take about a second.
PROMPT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?\n"
    "Answer: Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and "
    "May. The answer is 72.\n"
    "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?\nAnswer:"
)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str  # what was decoded, or why it failed: one line
    output: str = ""  # the child's last lines, for a failure
    seconds: float = 0.0


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


_WHEEL_CHILD = """
import json, sys
from llama_cpp import Llama, llama_print_system_info
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_batch=512, n_threads=int(sys.argv[2]), verbose=False)
out = llm.create_completion(sys.argv[3], max_tokens=1, temperature=0.0)
print("system info:", llama_print_system_info().decode(errors="replace"), file=sys.stderr)
print(json.dumps({"text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"]}))
"""


def check_wheel(model: Path, *, python: str = sys.executable, timeout: float = 300.0) -> CheckResult:
    """Load `model` with llama-cpp-python in a child interpreter and decode one token."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [python, "-X", "faulthandler", "-c", _WHEEL_CHILD, str(model), str(default_threads(1)), PROMPT],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        return CheckResult(False, f"no token within {timeout:.0f} s", _tail(out or ""), timeout)
    seconds = time.monotonic() - started
    output = _tail(done.stderr + done.stdout)
    if done.returncode != 0:
        return CheckResult(False, f"the decode died: {describe_exit(done.returncode)}", output, seconds)
    try:
        reply = json.loads(done.stdout.strip().splitlines()[-1])
        tokens = int(reply["tokens"])
    except (ValueError, KeyError, IndexError, TypeError):
        return CheckResult(False, "the decode printed no reply", output, seconds)
    if tokens < 1:
        return CheckResult(False, "the decode generated no token", output, seconds)
    detail = f"decoded {tokens} token ({reply['text']!r}) in {seconds:.1f} s"
    return CheckResult(True, detail, seconds=seconds)


def check_llama_server(
    binary: Path, model: Path, *, startup_timeout: float = 120.0, timeout: float = 120.0
) -> CheckResult:
    """Start `binary` on a free port, ask for one token over HTTP, stop it."""
    started = time.monotonic()
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
             "--ctx-size", "1024", "--parallel", "1", "--threads", str(default_threads(1))],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            result = _ask_one_token(proc, f"http://127.0.0.1:{port}", startup_timeout, timeout)
        finally:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
        log.seek(0)
        output = _tail(log.read())
    seconds = time.monotonic() - started
    ok, text = result
    if ok:
        return CheckResult(True, f"decoded 1 token ({text!r}) in {seconds:.1f} s", seconds=seconds)
    return CheckResult(False, text, output, seconds)


def _ask_one_token(
    proc: subprocess.Popen[str], url: str, startup_timeout: float, timeout: float
) -> tuple[bool, str]:
    """(True, the generated text), or (False, why it failed)."""
    deadline = time.monotonic() + startup_timeout
    while True:
        if proc.poll() is not None:
            return False, f"llama-server died: {describe_exit(proc.returncode)}, while loading the model"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while loading
        if time.monotonic() > deadline:
            return False, f"llama-server did not become healthy within {startup_timeout:.0f} s"
        time.sleep(0.2)
    body = json.dumps({"prompt": PROMPT, "n_predict": 1, "temperature": 0.0}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{url}/completion", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            reply = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        time.sleep(0.5)  # let a crashing server finish dying, so its exit status is known
        if proc.poll() is not None:
            return False, f"llama-server died: {describe_exit(proc.returncode)}, during the decode"
        return False, f"the decode request failed: {type(exc).__name__}: {exc}"
    if not isinstance(reply, dict) or not reply.get("tokens_predicted"):
        return False, "llama-server answered without generating a token"
    return True, str(reply.get("content", ""))


def _default_model() -> Path:
    from localmodels.fetch import DEFAULT_MODEL, fetch_model
    from workers.settings import get_settings

    return fetch_model(DEFAULT_MODEL, models_dir=get_settings().models_dir, progress=False)


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m localmodels.check", description=summary)
    parser.add_argument("target", choices=("wheel", "llama-server"))
    parser.add_argument("--binary", type=Path, help="the llama-server binary (for llama-server)")
    parser.add_argument("--model", type=Path, help="a GGUF file [default: SmolLM2-135M, fetched if missing]")
    args = parser.parse_args(argv)
    if args.target == "llama-server" and args.binary is None:
        parser.error("llama-server needs --binary PATH")
    try:
        model = args.model or _default_model()
    except Exception as exc:  # the fetcher's errors: nothing is known about the build then
        print(f"local_check: no model to check with: {exc}", file=sys.stderr)
        return 2
    if args.target == "wheel":
        what, result = "llama-cpp-python", check_wheel(model)
    else:
        what, result = f"llama-server {args.binary}", check_llama_server(args.binary, model)
    if result.ok:
        print(f"local_check: {what} on {model.name}: {result.detail}", file=sys.stderr)
        return 0
    print(f"local_check: {what} on {model.name}: FAILED: {result.detail}", file=sys.stderr)
    if result.output:
        print(result.output, file=sys.stderr)
    return BUILD_FAILED


if __name__ == "__main__":
    sys.exit(main())
