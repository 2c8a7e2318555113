#!/usr/bin/env bash
# Idempotent set-up of the development / CI environment:
#   1. a virtual environment at $VENV (created with python3 if missing);
#   2. a llama-cpp-python wheel in $RSTAR_CACHE_DIR/wheels (built once: it ships as source only and
#      takes minutes to compile; the wheel is tuned to this machine's CPU);
#   3. `pip install -e '.[local,dev]'` from there, skipped when nothing it depends on has changed
#      (a stamp in the venv holds a hash of pyproject.toml, the repo path, the packages and the wheel).
#
#   VENV=.venv RSTAR_CACHE_DIR=~/.cache/rstar PYTHON=python3 scripts/bootstrap.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)

VENV=${VENV:-.venv}
RSTAR_CACHE_DIR=${RSTAR_CACHE_DIR:-$HOME/.cache/rstar}
PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
WHEELS="$RSTAR_CACHE_DIR/wheels"
STAMP="$VENV/.rstar-bootstrap"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
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

# -- 2. the llama-cpp-python wheel ---------------------------------------------------------------
mkdir -p "$WHEELS"
find_wheel() {
    compgen -G "$WHEELS/llama_cpp_python-$LLAMA_VERSION-*.whl" | head -n 1 || true
}
wheel=$(find_wheel)
if [[ -z "$wheel" ]]; then
    # One build at a time (parallel CI jobs, or a build already running): wait for the lock, then
    # look again.
    exec 9>"$WHEELS/.build.lock"
    if ! flock -n 9; then
        say "another process is building the llama-cpp-python wheel; waiting for it"
        flock 9
    fi
    wheel=$(find_wheel)
    if [[ -z "$wheel" ]]; then
        say "building llama-cpp-python==$LLAMA_VERSION into $WHEELS (a few minutes, once)"
        build_dir=$(mktemp -d "$WHEELS/.build.XXXXXX")
        trap 'rm -rf "$build_dir"' EXIT
        start=$SECONDS
        "${PIP[@]}" wheel --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$build_dir"
        mv "$build_dir"/llama_cpp_python-*.whl "$WHEELS"/
        say "built it in $((SECONDS - start)) s"
        wheel=$(find_wheel)
    fi
    flock -u 9
fi
[[ -n "$wheel" ]] || die "no llama-cpp-python wheel in $WHEELS after building it"
say "llama-cpp-python wheel: $wheel"

# -- 3. the project and its dependencies ---------------------------------------------------------
packages=$(cd "$ROOT" && for d in */__init__.py; do printf '%s ' "${d%/__init__.py}"; done)
want=$(
    {
        sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1
        echo "root=$ROOT"
        echo "packages=$packages"
        echo "wheel=$(basename "$wheel")"
        "$VENV/bin/python" -V 2>&1
    } | sha256sum | cut -d' ' -f1
)
if [[ $fresh_venv == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    say "dependencies up to date (pyproject.toml unchanged); skipping pip install"
else
    say "upgrading pip"
    "${PIP[@]}" install --quiet --upgrade pip
    say "installing rstar-batch (editable) with extras local,dev"
    rm -f "$STAMP"
    "${PIP[@]}" install --find-links "$WHEELS" -e "$ROOT[local,dev]"
    echo "$want" >"$STAMP"
fi
say "done in ${SECONDS} s; activate with: source $VENV/bin/activate"
