#!/usr/bin/env bash
# Idempotent build of llama.cpp's `llama-server` (parallel slots, continuous batching) from the
# llama.cpp source vendored in the llama-cpp-python sdist, the same version bootstrap.sh builds:
#   1. `pip download` the llama-cpp-python sdist (sha256-pinned) into $RSTAR_CACHE_DIR/sdists;
#   2. cmake-build ONLY the llama-server target: Release, CPU only, static (no shared libs to ship),
#      no HTTPS/OpenSSL, no tests/examples, and no web UI (no npm, no download: the server is built
#      with an empty asset table and answers the API as usual), with the CPU features chosen
#      explicitly (scripts/llama_build.sh: never -march=native, never AMX);
#   3. install the binary atomically to $RSTAR_CACHE_DIR/llama-server/<key>/bin/llama-server, the
#      key naming the version, the CPU features compiled in and the compilers;
#   4. check it with a real one-token decode (python -m localmodels.check llama-server), once per
#      machine; a binary that crashes is marked so, and the next build down (fewer CPU features) is
#      made and checked instead.
# Prints the binary's path on stdout (and nothing else); progress goes to stderr. A second run
# does nothing but print the path. One build at a time (flock), like bootstrap.sh.
#
#   RSTAR_CACHE_DIR=~/.cache/rstar JOBS=2 PYTHON=.venv/bin/python scripts/build_llama_server.sh
#       [--no-build]   print the path of a built and checked binary, or exit 3 when there is none
#       [--check]      run the decode check again even where it passed before
# PYTHON must have this project installed (for the check). LLAMA_SERVER_CMAKE_ARGS adds cmake
# arguments (they are part of the key). RSTAR_CHECK_MODEL: the GGUF to check with (default
# SmolLM2-135M, fetched if missing). ~5-10 minutes on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export RSTAR_CACHE_DIR=${RSTAR_CACHE_DIR:-$HOME/.cache/rstar}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
BUILDS="$RSTAR_CACHE_DIR/llama-server"
SDISTS="$RSTAR_CACHE_DIR/sdists"
build=1 recheck=0
for arg in "$@"; do
    case $arg in
        --no-build) build=0 ;;
        --check) recheck=1 ;;
        *) printf 'usage: %s [--no-build] [--check]\n' "$0" >&2; exit 2 ;;
    esac
done

say() { printf 'build_llama_server: %s\n' "$*" >&2; }
die() { printf 'build_llama_server: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/llama_build.sh
source "$ROOT/scripts/llama_build.sh"
SECONDS=0

# build_into PREFIX CMAKE_ARGS: configure and build only llama-server, install it under PREFIX.
build_into() {
    local prefix=$1 args=$2 work src sdist start built
    for tool in cmake c++ tar sha256sum; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install cmake build-essential)"
    done
    sdist=$(llama_fetch_sdist "$SDISTS" "$PYTHON") || exit 2
    work=$(mktemp -d "$BUILDS/.build.XXXXXX")
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    say "unpacking $sdist"
    tar -xzf "$sdist" -C "$work"
    src="$work/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
    [[ -f "$src/tools/server/CMakeLists.txt" ]] || die "no tools/server in $src"

    # LLAMA_BUILD_UI=OFF + LLAMA_USE_PREBUILT_UI=OFF: scripts/ui-assets.cmake neither runs npm nor
    # downloads the prebuilt UI from Hugging Face; it emits an empty asset table (a warning says so).
    # LLAMA_OPENSSL=OFF: plain HTTP only (no libssl-dev needed). LLAMA_CURL is gone in this version.
    say "configuring (cmake, Release, CPU only, static): $args"
    # shellcheck disable=SC2086 # the cmake arguments are a list of words on purpose
    cmake -S "$src" -B "$work/build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_LLGUIDANCE=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_RPC=OFF \
        $args >&2
    say "building llama-server with $JOBS jobs"
    start=$SECONDS
    llama_with_ticker llama-server cmake --build "$work/build" --target llama-server --config Release -j "$JOBS" >&2
    say "compiled in $((SECONDS - start)) s"
    built="$work/build/bin/llama-server"
    [[ -x "$built" ]] || die "the build produced no $built"
    "$built" --version >&2 || die "$built does not run"
    mkdir -p "$prefix/bin"
    cp "$built" "$prefix/bin/.llama-server.tmp.$$"
    mv -f "$prefix/bin/.llama-server.tmp.$$" "$prefix/bin/llama-server"
    llama_build_info "$args" >"$prefix/build-info.txt"
    rm -rf "$work"
    trap - EXIT
}

# server_build PREFIX ARGS: build unless built (with --no-build: stop, exit 3, when not built).
server_build() {
    [[ -x "$1/bin/llama-server" ]] && return 0
    if [[ $build == 0 ]]; then
        say "no llama-server for this machine in $BUILDS yet; run $0"
        exit 3
    fi
    if [[ $locked == 0 ]]; then
        exec 9>"$BUILDS/.build.lock"
        if ! flock -n 9; then
            say "another process is building llama-server; waiting for it"
            flock 9
        fi
        locked=1
        [[ -x "$1/bin/llama-server" ]] && return 0
    fi
    # In a subshell: a failed build returns 1 (try the next tier), no source 2 (stop).
    (build_into "$1" "$2") || return $?
    say "installed $1/bin/llama-server in ${SECONDS} s"
}
server_use() { :; }
server_check() {
    if [[ $build == 0 ]]; then
        say "llama-server in $1 is not checked on this machine yet; run $0"
        exit 3
    fi
    llama_run_check "$1" "$PYTHON" -m localmodels.check llama-server --binary "$1/bin/llama-server" \
        ${RSTAR_CHECK_MODEL:+--model "$RSTAR_CHECK_MODEL"}
}

mkdir -p "$BUILDS"
locked=0
llama_choose_build "$BUILDS" "${LLAMA_SERVER_CMAKE_ARGS:-}" "" server_build server_use server_check "$recheck"
printf '%s\n' "$LLAMA_CHOSEN/bin/llama-server"
