"""Local OpenAI-compatible model servers (llama-cpp-python) for roles A and B.

    with serve_local(model_a, model_b) as servers:
        client = InferenceClient(base_url=servers.url_a)

Each role gets its own `python -m llama_cpp.server` process on a free 127.0.0.1 port, so calls for A
and B run in parallel. llama-cpp-python's server runs one request at a time (it holds a lock around
the model; later requests wait in line, no 429), so one process per role is the unit of parallelism
and the CPU cores are split between the processes (1 thread each on 2 cores).

`backend="llama-server"` runs llama.cpp's own server instead (built from the same source by
`scripts/build_llama_server.sh`; `llama_server_binary()` finds or builds it): `parallel` slots
with continuous batching, so one process serves many requests at once. On 2 CPU cores 8 slots
give about twice the tokens per second of llama-cpp-python's server (bench/llama_server_speed.py);
use it with `single=True` (one server, all cores, for both roles).

The servers are started in their own session, with their output in log files (paths exposed), and
stopped with SIGTERM, then SIGKILL after a grace period, when the context exits (also on Ctrl-C).
On Linux they also get SIGTERM if the process that started them dies. A server that exits on its own
(a crash on the first decode, say) is not restarted: `LocalServerSet.check()` raises
`ServerExitedError` naming the server, how it exited (`describe_exit`) and its log's last lines, so
callers poll it and fail at once instead of seeing "connection refused" for every request.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "BACKENDS",
    "LocalServer",
    "LocalServerError",
    "LocalServerSet",
    "LocalServers",
    "ServerExitedError",
    "default_threads",
    "describe_exit",
    "free_port",
    "llama_server_binary",
    "llama_server_command",
    "serve_local",
    "server_command",
    "signal_group",
    "stop_group",
]

ROLES = ("A", "B")
BACKENDS = ("llama-cpp-python", "llama-server")

# Environment variables passed on to a server. llama-cpp-python's settings are pydantic BaseSettings
# without a prefix, so stray variables such as HOST, PORT, MODEL, API_KEY or CONFIG_FILE would
# change the server's behaviour; everything not listed here is dropped.
_ENV_KEEP = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "SYSTEMROOT",
}
_ENV_KEEP_PREFIXES = ("LC_", "GGML_", "LLAMA_CPP_", "OMP_", "GOMP_")


class LocalServerError(RuntimeError):
    """A local model server could not be started, did not become ready, or exited."""


class ServerExitedError(LocalServerError):
    """Model servers exited. `summary` is the one-line cause; str() adds the logs' last lines."""

    def __init__(self, summary: str, details: str) -> None:
        super().__init__(f"{summary}; {details}")
        self.summary = summary


# What a shell would print for the signals a model server dies of (SIGKILL: often the OOM killer).
_SIGNAL_WORDS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGILL: "illegal instruction",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGABRT: "aborted",
    signal.SIGKILL: "killed",
    signal.SIGTERM: "terminated",
    signal.SIGINT: "interrupted",
}


def describe_exit(returncode: int) -> str:
    """A child's exit status in words: 'segmentation fault (SIGSEGV, signal 11)' for Popen's -11,
    'segmentation fault (SIGSEGV, signal 11, exit 139)' for a shell's 128 + 11, else 'exit status 3'."""
    if returncode < 0:
        signum, shown = -returncode, f"signal {-returncode}"
    elif 128 < returncode < 128 + 65:
        signum, shown = returncode - 128, f"signal {returncode - 128}, exit {returncode}"
    else:
        return f"exit status {returncode}"
    try:
        sig = signal.Signals(signum)
    except ValueError:
        return f"killed by {shown}" if returncode < 0 else f"exit status {returncode}"
    return f"{_SIGNAL_WORDS.get(sig, 'killed by ' + sig.name)} ({sig.name}, {shown})"


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the session of a process started with start_new_session=True (it and anything it
    spawned); the process alone when the group is gone or not ours."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM to the process's session, SIGKILL after `grace` seconds; returns the exit status."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def default_threads(n_servers: int = 2) -> int:
    """CPU threads per server so that `n_servers` servers do not fight over the cores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, n_servers))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(
    model: Path,
    *,
    host: str,
    port: int,
    alias: str | None = None,
    n_ctx: int = 4096,
    n_threads: int = 1,
    n_batch: int = 512,
    chat_format: str | None = None,
    logprobs: bool = False,
    python: str = sys.executable,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The `python -m llama_cpp.server` command line for one server."""
    cmd = [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias or model.stem,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--n_batch",
        str(n_batch),
        # Its default (True) keeps logits for every position: n_ctx x n_vocab floats (~800 MB for
        # SmolLM2 at n_ctx 4096, ~2.5 GB for Qwen2.5) and slower prompts; only logprobs need it.
        "--logits_all",
        "true" if logprobs else "false",
        # Its default (True) cuts a *streaming* response short as soon as another request waits.
        "--interrupt_requests",
        "false",
        # mlock of the weights fails (with a warning) in most containers and buys nothing here.
        "--use_mlock",
        "false",
    ]
    if chat_format:  # None: the chat template stored in the GGUF file
        cmd += ["--chat_format", chat_format]
    cmd += list(extra_args)
    return cmd


def llama_server_command(
    binary: Path,
    model: Path,
    *,
    host: str,
    port: int,
    alias: str | None = None,
    n_ctx: int = 4096,
    n_threads: int = 1,
    n_batch: int = 512,
    parallel: int = 8,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The llama.cpp `llama-server` command line: `parallel` slots of `n_ctx` tokens each."""
    return [
        str(binary),
        "--model", str(model),
        "--alias", alias or model.stem,
        "--host", host,
        "--port", str(port),
        # The context is split between the slots: give each the n_ctx a request may need.
        "--ctx-size", str(n_ctx * parallel),
        "--parallel", str(parallel),
        "--threads", str(n_threads),
        "--threads-batch", str(n_threads),
        "--batch-size", str(n_batch),
        *extra_args,
    ]  # fmt: skip


def llama_server_binary(*, build: bool = True) -> Path:
    """The cached `llama-server` binary made for this machine's CPU and checked on it; built and
    checked first (minutes, once) when missing and `build`.

    The build script alone knows the cache key (CPU features, compilers), so it is asked each time.
    """
    from workers.settings import get_settings

    script = Path(__file__).resolve().parent.parent / "scripts" / "build_llama_server.sh"
    cache = get_settings().cache_dir
    env = {**os.environ, "RSTAR_CACHE_DIR": str(cache), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script), *([] if build else ["--no-build"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if build else subprocess.PIPE,
        text=True,
    )
    if done.returncode == 3 and not build:
        raise LocalServerError(f"no llama-server is built and checked for this machine yet: run {script}")
    if done.returncode != 0:
        raise LocalServerError(f"building llama-server failed (exit {done.returncode}); see the output above")
    return Path(done.stdout.strip().splitlines()[-1])


def _server_env(host: str, port: int, n_threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)}
    # The server's __main__ lets $HOST / $PORT override --host / --port: pin them to ours.
    env.update(HOST=host, PORT=str(port), OMP_NUM_THREADS=str(n_threads), PYTHONUNBUFFERED="1")
    return env


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a preexec_fn that makes the kernel SIGTERM the server when the thread that started it
    dies (a backstop for a parent killed with SIGKILL). Everything is looked up here, in the parent:
    the function itself runs between fork and exec, where importing is not safe."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigterm)

    return preexec


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) or "    (empty log)"


@dataclass
class LocalServer:
    role: str
    model: Path
    host: str
    port: int
    n_threads: int
    log_path: Path
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The server's root URL (append /v1/chat/completions, or give it to InferenceClient)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"$ {' '.join(self.command)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_server_env(self.host, self.port, self.n_threads),
            start_new_session=True,  # Ctrl-C reaches us, not the servers: we stop them in order
            preexec_fn=_parent_death_signal(),
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exit_code(self) -> int | None:
        """The exit status once the process has exited (reaping it), else None."""
        return self.process.poll() if self.process is not None else None

    def exit_summary(self, code: int, *, starting: bool = False) -> str:
        """One line: 'model server A (pid 12, port 8001) exited: segmentation fault (...)'."""
        how = describe_exit(code)
        when = " while starting" if starting else ""
        return f"model server {self.role} (pid {self.pid}, port {self.port}) exited{when}: {how}"

    def log_tail(self) -> str:
        return f"last lines of {self.log_path}:\n{_tail(self.log_path)}"

    def poll_ready(self) -> bool:
        """True once GET /v1/models answers 200; raises ServerExitedError if the process has died."""
        code = self.exit_code()
        if code is not None:
            raise ServerExitedError(self.exit_summary(code, starting=True), self.log_tail())
        try:
            with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    json.load(resp)
                    return True
        except (OSError, ValueError):
            pass
        return False

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
        try:
            return stop_group(self.process, grace) if self.process is not None else None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


@dataclass(frozen=True)
class LocalServerSet:
    """The running servers: `url_a`, `url_b` (equal when one server serves both roles)."""

    servers: dict[str, LocalServer]
    log_dir: Path

    @property
    def url_a(self) -> str:
        return self.servers["A"].url

    @property
    def url_b(self) -> str:
        return self.servers.get("B", self.servers["A"]).url

    @property
    def log_paths(self) -> dict[str, Path]:
        return {role: s.log_path for role, s in self.servers.items()}

    def env(self) -> dict[str, str]:
        """The environment variables that point rstar at these servers."""
        return {"RSTAR_MODEL_A_URL": self.url_a, "RSTAR_MODEL_B_URL": self.url_b}

    def dead(self) -> dict[str, int]:
        """The servers that have exited (nothing restarts them): role -> exit status."""
        codes = {role: s.exit_code() for role, s in self.servers.items()}
        return {role: code for role, code in codes.items() if code is not None}

    def check(self) -> None:
        """Raise ServerExitedError if any server has exited; cheap enough to call every second."""
        dead = self.dead()
        if dead:
            exited = [self.servers[role] for role in dead]
            raise ServerExitedError(
                "; ".join(s.exit_summary(dead[s.role]) for s in exited),
                "\n".join(s.log_tail() for s in exited),
            )


class LocalServers:
    """Context manager: start the servers on enter (waiting until they answer), stop them on exit."""

    def __init__(
        self,
        model_a: Path,
        model_b: Path | None = None,
        *,
        single: bool = False,
        port_a: int | None = None,
        port_b: int | None = None,
        host: str = "127.0.0.1",
        alias_a: str | None = None,
        alias_b: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        chat_format: str | None = None,
        logprobs: bool = False,
        log_dir: Path | None = None,
        startup_timeout: float = 120.0,
        stop_grace: float = 10.0,
        python: str = sys.executable,
        extra_args: Sequence[str] = (),
        backend: str = "llama-cpp-python",
        parallel: int = 8,
    ) -> None:
        model_a = Path(model_a)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if single and model_b is not None and Path(model_b) != model_a:
            raise ValueError("single=True serves one model for both roles; do not pass a different model_b")
        models = {"A": model_a} if single else {"A": model_a, "B": Path(model_b or model_a)}
        for m in models.values():
            if not m.is_file():
                raise LocalServerError(f"model file not found: {m}")
        self._models = models
        self._ports = {"A": port_a, "B": port_b}
        self._aliases = {"A": alias_a, "B": alias_b or (alias_a if model_b is None else None)}
        self._host = host
        self._n_threads = n_threads or default_threads(len(models))
        self._n_ctx, self._n_batch = n_ctx, n_batch
        self._chat_format, self._logprobs = chat_format, logprobs
        self._python = python
        self._extra = tuple(extra_args)
        self._backend = backend
        self._parallel = parallel
        self._log_dir = log_dir
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        self._servers: dict[str, LocalServer] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> LocalServerSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalServerSet:
        log_dir = self._log_dir
        if log_dir is None:
            from workers.settings import get_settings

            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_dir = get_settings().cache_dir / "logs" / f"local-servers-{stamp}-{os.getpid()}"
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for role, model in self._models.items():
                self._servers[role] = self._spawn(role, model, log_dir)
            self._wait_ready(log_dir)
        except BaseException:  # also KeyboardInterrupt while waiting
            self.stop()
            raise
        return LocalServerSet(servers=dict(self._servers), log_dir=log_dir)

    def stop(self) -> None:
        # Signal all first, then wait: the servers shut down in parallel.
        servers = list(self._servers.values())
        for s in servers:
            if s.process is not None and s.process.poll() is None:
                signal_group(s.process, signal.SIGTERM)
        for s in servers:
            s.stop(grace=self._stop_grace)
        self._servers.clear()

    # -- internals ---------------------------------------------------------------------------------

    def _spawn(self, role: str, model: Path, log_dir: Path) -> LocalServer:
        port = self._ports.get(role)
        if port is None:
            port = free_port(self._host)
        elif not _port_is_free(self._host, port):
            raise LocalServerError(f"port {port} on {self._host} (for model server {role}) is already in use")
        server = LocalServer(
            role=role,
            model=model,
            host=self._host,
            port=port,
            n_threads=self._n_threads,
            log_path=log_dir / f"server-{role}.log",
            command=self._command(role, model, port),
        )
        server.start()
        return server

    def _command(self, role: str, model: Path, port: int) -> list[str]:
        if self._backend == "llama-server":
            return llama_server_command(
                llama_server_binary(),
                model,
                host=self._host,
                port=port,
                alias=self._aliases.get(role),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_batch=self._n_batch,
                parallel=self._parallel,
                extra_args=self._extra,
            )
        return server_command(
            model,
            host=self._host,
            port=port,
            alias=self._aliases.get(role),
            n_threads=self._n_threads,
            python=self._python,
            extra_args=self._extra,
            n_ctx=self._n_ctx,
            n_batch=self._n_batch,
            chat_format=self._chat_format,
            logprobs=self._logprobs,
        )

    def _wait_ready(self, log_dir: Path) -> None:
        deadline = time.monotonic() + self._startup_timeout
        pending = dict(self._servers)
        retries = {role: 2 for role in pending}
        while pending:
            for role, server in list(pending.items()):
                try:
                    ready = server.poll_ready()
                except LocalServerError:
                    # A port picked by free_port() can be taken by someone else before the server
                    # binds it: try another one.
                    if self._ports.get(role) is None and retries[role] > 0 and _port_clash(server):
                        retries[role] -= 1
                        server.stop()
                        pending[role] = self._servers[role] = self._spawn(role, server.model, log_dir)
                        continue
                    raise
                if ready:
                    del pending[role]
            if not pending:
                return
            if time.monotonic() > deadline:
                role, server = next(iter(pending.items()))
                raise LocalServerError(
                    f"local model server {role} ({server.model.name}) did not answer GET "
                    f"{server.url}/v1/models within {self._startup_timeout:.0f} s; last lines of "
                    f"{server.log_path}:\n{_tail(server.log_path)}"
                )
            time.sleep(0.2)


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _port_clash(server: LocalServer) -> bool:
    return "address already in use" in _tail(server.log_path, 10).lower()


def serve_local(model_a: Path, model_b: Path | None = None, **kwargs: object) -> LocalServers:
    """Start local servers for roles A and B (B serves model_a too when model_b is None).

    Use as `with serve_local(a, b) as servers: ...`; see LocalServers for the options.
    """
    return LocalServers(model_a, model_b, **kwargs)  # type: ignore[arg-type]
