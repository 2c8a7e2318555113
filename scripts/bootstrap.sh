#!/usr/bin/env bash
# Idempotent set-up of the development / CI environment:
#   1. a virtual environment at $VENV (created with python3 if missing);
#   2. a llama-cpp-python wheel in $RSTAR_CACHE_DIR/wheels/<key>/, built once per key from the
#      sha256-pinned sdist. It ships as source only and takes minutes to compile. The key names the
#      CPU features compiled in, the compilers and the Python (scripts/llama_build.sh), so a wheel
#      is never taken to a machine it was not made for;
#   3. `pip install -e '.[local,dev]'` with that wheel, skipped when nothing it depends on has changed
#      (a stamp in the venv holds a hash of pyproject.toml, the repo path, the packages and the wheel);
#   4. a real one-token decode with it (python -m localmodels.check wheel, on SmolLM2-135M, which
#      it fetches, or on $RSTAR_CHECK_MODEL), once per machine and wheel (RSTAR_RECHECK=1: again).
#      A wheel that crashes is marked so, and the next build down (fewer CPU features) is made and
#      checked instead; when none decodes, it fails loudly.
#
#   VENV=.venv RSTAR_CACHE_DIR=~/.cache/rstar PYTHON=python3 scripts/bootstrap.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)

VENV=${VENV:-.venv}
export RSTAR_CACHE_DIR=${RSTAR_CACHE_DIR:-$HOME/.cache/rstar}
PYTHON=${PYTHON:-python3}
WHEELS="$RSTAR_CACHE_DIR/wheels"
STAMP="$VENV/.rstar-bootstrap"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/llama_build.sh
source "$ROOT/scripts/llama_build.sh"
SECONDS=0

# -- 1. the virtual environment ------------------------------------------------------------------
fresh_venv=0
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON=/path/to/python3.11+"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); rstar-batch needs Python >= 3.11 (set PYTHON=...)"
    say "creating the virtual environment $VENV with $("$PYTHON" -V 2>&1)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    fresh_venv=1
else
    say "virtual environment $VENV exists ($("$VENV/bin/python" -V 2>&1))"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
pytag=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

# -- 2. the llama-cpp-python wheel for one tier of CPU features ----------------------------------
find_wheel() { compgen -G "$1/llama_cpp_python-$LLAMA_VERSION-*.whl" | head -n 1 || true; }

# build_wheel DIR CMAKE_ARGS: build into DIR unless a wheel is there (one build at a time).
# Returns 1 when the build fails, 2 when the source cannot be had.
build_wheel() {
    local dir=$1 args=$2 wheel build_dir sdist start
    mkdir -p "$dir"
    wheel=$(find_wheel "$dir")
    [[ -n "$wheel" ]] && return 0
    exec 9>"$WHEELS/.build.lock"
    if ! flock -n 9; then
        say "another process is building a llama-cpp-python wheel; waiting for it"
        flock 9
    fi
    if [[ -z "$(find_wheel "$dir")" ]]; then
        sdist=$(llama_fetch_sdist "$RSTAR_CACHE_DIR/sdists" "$VENV/bin/python") || {
            flock -u 9
            return 2
        }
        say "building llama-cpp-python $LLAMA_VERSION into $dir (a few minutes, once per key)"
        say "  CMAKE_ARGS=$args"
        build_dir=$(mktemp -d "$WHEELS/.build.XXXXXX")
        start=$SECONDS
        # --no-cache-dir: pip's own wheel cache is keyed by the sdist alone, not by CMAKE_ARGS, and
        # would hand back a build made with other CPU features.
        if ! CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            llama_with_ticker llama-cpp-python "${PIP[@]}" wheel --quiet --no-deps --no-cache-dir "$sdist" -w "$build_dir" >&2; then
            rm -rf "$build_dir"
            flock -u 9
            return 1
        fi
        mv "$build_dir"/llama_cpp_python-*.whl "$dir"/
        rm -rf "$build_dir"
        llama_build_info "$args" >"$dir/build-info.txt"
        say "built it in $((SECONDS - start)) s"
    fi
    flock -u 9
}

# -- 3. the project -----------------------------------------------------------------------------
# install WHEEL: the project and its dependencies, with this llama-cpp-python wheel.
install() {
    local wheel=$1 packages want
    packages=$(cd "$ROOT" && for d in */__init__.py; do printf '%s ' "${d%/__init__.py}"; done)
    want=$(
        {
            sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1
            echo "root=$ROOT"
            echo "packages=$packages"
            echo "wheel=$wheel"
            "$VENV/bin/python" -V 2>&1
        } | sha256sum | cut -d' ' -f1
    )
    if [[ $fresh_venv == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        say "dependencies up to date (pyproject.toml and the wheel unchanged); skipping pip install"
        return
    fi
    rm -f "$STAMP"
    if [[ $fresh_venv == 1 ]]; then
        say "upgrading pip"
        "${PIP[@]}" install --quiet --upgrade pip
        fresh_venv=0 # once: a fallback build installs again into the same venv
    fi
    # The same version from another build may be installed already: replace it.
    "${PIP[@]}" install --quiet --no-deps --force-reinstall "$wheel"
    say "installing rstar-batch (editable) with extras local,dev"
    "${PIP[@]}" install --quiet --find-links "$(dirname "$wheel")" -e "$ROOT[local,dev]"
    # pip's own cache may hold a llama-cpp-python built elsewhere (by a plain `pip install`): make
    # sure the one installed is this wheel, or the check below would vouch for the wrong build.
    local from
    from=$("$VENV/bin/python" -c 'import importlib.metadata as m, json
t = m.distribution("llama_cpp_python").read_text("direct_url.json")
print(json.loads(t)["url"] if t else "")')
    [[ "$from" == "file://$wheel" ]] || die "llama-cpp-python in $VENV is not $wheel but ${from:-another build}"
    echo "$want" >"$STAMP"
}

# -- 4. a real decode, on this machine ---------------------------------------------------------
wheel_use() { install "$(find_wheel "$1")"; }
wheel_check() {
    llama_run_check "$1" "$VENV/bin/python" -m localmodels.check wheel ${RSTAR_CHECK_MODEL:+--model "$RSTAR_CHECK_MODEL"}
}

mkdir -p "$WHEELS"
# LLAVA_BUILD=OFF: no multimodal library (llama_cpp imports it only for image chat formats); it is
# a third of the build.
llama_choose_build "$WHEELS" "-DLLAVA_BUILD=OFF" "$pytag" build_wheel wheel_use wheel_check \
    "${RSTAR_RECHECK:-0}"
say "llama-cpp-python wheel: $(find_wheel "$LLAMA_CHOSEN")"
say "done in ${SECONDS} s; activate with: source $VENV/bin/activate"
