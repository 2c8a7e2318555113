"""The local model build: which CPU features a build is made for (scripts/llama_build.sh), the cache
key that names them, and the one-token decode check that runs after every build
(localmodels/check.py), against children that crash the way a bad build does and against the
real build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from localmodels.check import check_llama_server, check_wheel
from tests.support import require_llama_server, require_real_model

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "scripts" / "llama_build.sh"

# The flags of the machine the crash was reported on (a VM on a CPU with AMX), and of an older one.
SAPPHIRE_RAPIDS = (
    "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 avx512f avx512dq avx512cd avx512bw "
    "avx512vl avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8 hypervisor"
)
HASWELL = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2"
SANDY_BRIDGE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx"


def run_script(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a build script in its own session, and kill the whole session if it overruns: a build
    (cmake, pip) left behind by a timed-out test would load the machine for an hour."""
    proc = subprocess.Popen(
        ["bash", *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lib(tmp_path: Path, flags: str, script: str, model: str = "Test CPU") -> str:
    """Run `script` with scripts/llama_build.sh sourced, on a pretend /proc/cpuinfo."""
    cpuinfo = tmp_path / f"cpuinfo-{abs(hash((flags, model)))}"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n")
    done = subprocess.run(
        ["bash", "-c", f'say() {{ :; }}; die() {{ echo "$*" >&2; exit 1; }}; source "{LIB}"; {script}'],
        env={**os.environ, "LLAMA_CPUINFO": str(cpuinfo)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def tiers(tmp_path: Path, flags: str) -> dict[str, str]:
    if os.uname().machine != "x86_64":
        pytest.skip("the CPU tiers are chosen for x86-64")
    lines = lib(tmp_path, flags, "llama_cpu_tiers").splitlines()
    return dict(line.split("\t", 1) for line in lines)


def test_no_build_is_native_or_uses_amx(tmp_path: Path) -> None:
    builds = tiers(tmp_path, SAPPHIRE_RAPIDS)
    assert list(builds) == ["full", "v3", "v2"]
    for args in builds.values():
        assert "-DGGML_NATIVE=OFF" in args
        for amx in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
            assert f"-DGGML_{amx}=OFF" in args
    # The best build keeps what the CPU has besides AMX.
    for feature in ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI"):
        assert f"-DGGML_{feature}=ON" in builds["full"]
    assert "-DGGML_AVX512=OFF" in builds["v3"] and "-DGGML_AVX2=ON" in builds["v3"]
    assert "-DGGML_AVX=OFF" in builds["v2"] and "-DGGML_SSE42=ON" in builds["v2"]


def test_a_cpu_gets_only_the_features_it_has(tmp_path: Path) -> None:
    haswell = tiers(tmp_path, HASWELL)
    assert list(haswell) == ["full", "v2"]  # full is v3 already
    assert "-DGGML_AVX2=ON" in haswell["full"] and "-DGGML_AVX512=OFF" in haswell["full"]
    old = tiers(tmp_path, SANDY_BRIDGE)
    assert list(old) == ["full", "v2"]
    assert "-DGGML_AVX=ON" in old["full"] and "-DGGML_AVX2=OFF" in old["full"]


def test_the_cache_key_names_the_cpu_features_and_the_python(tmp_path: Path) -> None:
    def key(flags: str, tier: str = "full", extra: str = "cp311") -> str:
        args = tiers(tmp_path, flags)[tier]
        return lib(tmp_path, flags, f'llama_build_key {tier} "{args}" {extra}').strip()

    spr = key(SAPPHIRE_RAPIDS)
    assert spr.startswith("0.3.36-x86_64-full-")
    assert spr == key(SAPPHIRE_RAPIDS)  # stable
    assert spr != key(HASWELL)  # other features compiled in: another build
    assert spr != key(SAPPHIRE_RAPIDS, extra="cp312")
    assert spr != key(SAPPHIRE_RAPIDS, "v3")


def test_a_check_is_recorded_per_machine(tmp_path: Path) -> None:
    build = tmp_path / "build"
    record = f'llama_record_check "{build}" "crashed: segmentation fault"; llama_check_state "{build}"'
    assert lib(tmp_path, SAPPHIRE_RAPIDS, record).strip() == "crashed: segmentation fault"
    # Another CPU has checked nothing yet, nor has the same CPU model with other flags.
    assert lib(tmp_path, HASWELL, f'llama_check_state "{build}"').strip() == ""
    assert lib(tmp_path, SAPPHIRE_RAPIDS.replace(" amx_int8", ""), f'llama_check_state "{build}"') == ""


def crashing_program(tmp_path: Path, name: str, before: str = "") -> Path:
    """A program that prints a line of log, then dies of a segmentation fault like a bad build."""
    path = tmp_path / name
    log = "echo 'load_tensors: AMX model buffer size = 50 MiB'"
    path.write_text(f"#!/bin/sh\n{log}\n{before}kill -SEGV $$\n")
    path.chmod(0o755)
    return path


def test_a_long_build_says_it_is_still_building_and_keeps_its_status(tmp_path: Path) -> None:
    """A compile is silent for many minutes (25 on a busy machine): a line with the elapsed time
    while it runs, none after it ends, and the command's own exit status."""
    script = (
        f'say() {{ echo "bootstrap: $*"; }}; source "{LIB}"; '
        "llama_with_ticker llama-cpp-python bash -c 'sleep 2.5; exit 7'; echo \"status $?\"; sleep 2.5"
    )
    done = subprocess.run(
        ["bash", "-c", script], env={**os.environ, "LLAMA_TICK_SECONDS": "1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[-1] == "status 7", lines  # the command's status, and no tick after it ended
    assert lines[0].startswith("bootstrap: llama-cpp-python: still building, ")
    assert lines[0].endswith(" s so far")
    assert all("still building" in line for line in lines[:-1])


def test_the_wheel_check_reports_a_crash(tmp_path: Path) -> None:
    fake_python = crashing_program(tmp_path, "python")
    result = check_wheel(tmp_path / "model.gguf", python=str(fake_python), timeout=30)
    assert not result.ok
    assert result.detail == "the decode died: segmentation fault (SIGSEGV, signal 11)"
    assert "AMX model buffer" in result.output


def test_the_llama_server_check_reports_a_crash(tmp_path: Path) -> None:
    binary = crashing_program(tmp_path, "llama-server", before="sleep 0.3\n")
    result = check_llama_server(binary, tmp_path / "model.gguf", startup_timeout=30)
    assert not result.ok
    assert "segmentation fault" in result.detail
    assert "AMX model buffer" in result.output


@pytest.mark.realmodel
def test_the_installed_wheel_decodes_on_this_machine() -> None:
    model = require_real_model()
    result = check_wheel(model)
    assert result.ok, f"{result.detail}\n{result.output}"


@pytest.mark.realmodel
def test_the_llama_server_build_decodes_on_this_machine() -> None:
    model = require_real_model()
    result = check_llama_server(require_llama_server(), model)
    assert result.ok, f"{result.detail}\n{result.output}"


def test_no_build_on_an_empty_cache_builds_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "RSTAR_CACHE_DIR": str(tmp_path / "cache"), "PYTHON": sys.executable}
    env["PIP_NO_INDEX"] = "1"
    done = run_script([str(REPO / "scripts" / "build_llama_server.sh"), "--no-build"], env, tmp_path, 60)
    assert done.returncode == 3, done.stderr
    assert "no llama-server for this machine" in done.stderr
    assert not list((tmp_path / "cache" / "llama-server").glob("*/bin"))
    assert not (tmp_path / "cache" / "sdists").exists()  # not even the source was fetched


def test_the_check_command_exits_3_on_a_crash(tmp_path: Path) -> None:
    binary = crashing_program(tmp_path, "llama-server")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    done = subprocess.run(
        [sys.executable, "-m", "localmodels.check", "llama-server", "--binary", str(binary),
         "--model", str(model)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 3  # BUILD_FAILED: not 1, which any Python error gives
    assert "FAILED: llama-server died: segmentation fault (SIGSEGV, signal 11)" in done.stderr


FAKE_LLAMA_SERVER = """#!{python}
# Answers like llama-server: /health, then one token from /completion.
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1])
class Handler(BaseHTTPRequestHandler):
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._send({{"status": "ok"}})
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({{"content": " 10", "tokens_predicted": 1}})
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_a_build_that_crashes_here_is_marked_and_the_next_one_down_is_used(tmp_path: Path) -> None:
    """build_llama_server.sh on a cache where the best build crashes on this machine and the next
    one down works: the fallback, the records, and no second check on the next run."""
    if os.uname().machine != "x86_64":
        pytest.skip("the CPU tiers are chosen for x86-64")
    cache = tmp_path / "cache"
    # The keys this machine computes for its first two tiers, from the script's own library.
    keys = subprocess.run(
        ["bash", "-c", f'say() {{ :; }}; source "{LIB}"; llama_cpu_tiers | head -n 2 | '
         "while IFS=$'\\t' read -r t a; do llama_build_key \"$t\" \"$a\"; done"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(keys) == 2
    crashing = cache / "llama-server" / keys[0] / "bin" / "llama-server"
    working = cache / "llama-server" / keys[1] / "bin" / "llama-server"
    crashing.parent.mkdir(parents=True)
    crashing.write_text(crashing_program(tmp_path, "crash").read_text())
    crashing.chmod(0o755)
    working.parent.mkdir(parents=True)
    working.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable))
    working.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    env = {
        **os.environ,
        "RSTAR_CACHE_DIR": str(cache),
        "PYTHON": sys.executable,
        "RSTAR_CHECK_MODEL": str(model),
    }
    env.pop("LLAMA_SERVER_CMAKE_ARGS", None)
    # Nothing here is to be built: a cmake that fails makes a wrong key fail fast, not compile.
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "cmake").write_text("#!/bin/sh\necho 'cmake: not in this test' >&2\nexit 1\n")
    (shims / "cmake").chmod(0o755)
    env["PATH"] = f"{shims}:{env['PATH']}"
    env["PIP_NO_INDEX"] = "1"  # nor is anything to be downloaded

    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return run_script([str(REPO / "scripts" / "build_llama_server.sh"), *args], env, tmp_path)

    # --no-build never builds (it did once: a local of the shared loop hid the script's flag).
    nothing = build("--no-build")
    assert nothing.returncode == 3, nothing.stderr
    assert "not checked on this machine yet" in nothing.stderr
    assert not (cache / "llama-server" / keys[0] / "checked").exists()

    first = build()
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(working)
    assert "segmentation fault" in first.stderr
    records = {k: list((cache / "llama-server" / k / "checked").iterdir()) for k in keys}
    assert records[keys[0]][0].read_text().startswith("crashed: llama-server died: segmentation fault")
    assert records[keys[1]][0].read_text().strip() == "ok"

    again = build("--no-build")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(working)
    assert "checking" not in again.stderr  # checked once per machine
    assert "skipping the" in again.stderr and "segmentation fault" in again.stderr


def test_rstar_models_check_exits_3_when_the_build_cannot_decode(tmp_path: Path) -> None:
    # A file that passes for a GGUF but is not a model: llama.cpp fails in the child, not here.
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF" + bytes(1000))
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "models", "check", "--model", str(model)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "llama-cpp-python on broken.gguf: FAILED: the decode died" in done.stderr


@pytest.mark.realmodel
def test_rstar_models_check_decodes_with_the_real_model() -> None:
    require_real_model()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "models", "check"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "llama-cpp-python on SmolLM2-135M-Instruct.Q4_1.gguf: decoded 1 token" in done.stdout
