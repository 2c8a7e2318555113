#!/usr/bin/env bash
# Idempotent build of llama.cpp's `llama-server` (parallel slots, continuous batching) from the
# llama.cpp source vendored in the llama-cpp-python sdist, the same version bootstrap.sh builds:
#   1. `pip download` the llama-cpp-python sdist (sha256-pinned) into $RSTAR_CACHE_DIR/sdists;
#   2. cmake-build ONLY the llama-server target: Release, CPU only, static (no shared libs to ship),
#      no HTTPS/OpenSSL, no tests/examples, and no web UI (no npm, no download: the server is built
#      with an empty asset table and answers the API as usual);
#   3. install the binary atomically to $RSTAR_CACHE_DIR/llama-server/$VERSION/bin/llama-server.
# Prints the binary's path on stdout (and nothing else); progress goes to stderr. A second run does
# nothing but print the path. One build at a time (flock), like bootstrap.sh.
#
#   RSTAR_CACHE_DIR=~/.cache/rstar JOBS=2 PYTHON=python3 scripts/build_llama_server.sh
#
# The binary is tuned to this machine's CPU (GGML_NATIVE, llama.cpp's default); set
# LLAMA_SERVER_CMAKE_ARGS="-DGGML_NATIVE=OFF" for a portable one. ~10 minutes on 2 cores.
set -euo pipefail

RSTAR_CACHE_DIR=${RSTAR_CACHE_DIR:-$HOME/.cache/rstar}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
LLAMA_VERSION=0.3.36
SDIST_NAME="llama_cpp_python-$LLAMA_VERSION.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  # PyPI's
PREFIX="$RSTAR_CACHE_DIR/llama-server/$LLAMA_VERSION"
BIN="$PREFIX/bin/llama-server"
SDISTS="$RSTAR_CACHE_DIR/sdists"

say() { printf 'build_llama_server: %s\n' "$*" >&2; }
die() { printf 'build_llama_server: error: %s\n' "$*" >&2; exit 1; }

usable() { [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; }

if usable; then
    printf '%s\n' "$BIN"
    exit 0
fi

mkdir -p "$RSTAR_CACHE_DIR/llama-server" "$SDISTS"
exec 9>"$RSTAR_CACHE_DIR/llama-server/.build.lock"
if ! flock -n 9; then
    say "another process is building llama-server; waiting for it"
    flock 9
fi
if usable; then
    printf '%s\n' "$BIN"
    exit 0
fi

for tool in cmake c++ tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install cmake build-essential)"
done
SECONDS=0

# -- 1. the sdist ----------------------------------------------------------------------------------
sdist="$SDISTS/$SDIST_NAME"
sdist_ok() { [[ -f "$sdist" ]] && [[ "$(sha256sum "$sdist" | cut -d' ' -f1)" == "$SDIST_SHA256" ]]; }
if ! sdist_ok; then
    say "downloading $SDIST_NAME with pip"
    req=$(mktemp)
    trap 'rm -f "$req"' EXIT
    echo "llama-cpp-python==$LLAMA_VERSION --hash=sha256:$SDIST_SHA256" >"$req"
    # --no-binary: the sdist, not a wheel; --require-hashes: exactly the file PyPI published.
    "$PYTHON" -m pip --disable-pip-version-check download --quiet --no-deps --no-binary :all: \
        --require-hashes -r "$req" -d "$SDISTS" >&2
    rm -f "$req"
    trap - EXIT
    sdist_ok || die "$sdist missing or its sha256 is not $SDIST_SHA256"
fi

# -- 2. configure and build only llama-server -----------------------------------------------------
work=$(mktemp -d "$RSTAR_CACHE_DIR/llama-server/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "unpacking $sdist"
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
[[ -f "$src/tools/server/CMakeLists.txt" ]] || die "no tools/server in $src"

# LLAMA_BUILD_UI=OFF + LLAMA_USE_PREBUILT_UI=OFF: scripts/ui-assets.cmake neither runs npm nor
# downloads the prebuilt UI from Hugging Face; it emits an empty asset table (a warning says so).
# LLAMA_OPENSSL=OFF: plain HTTP only (no libssl-dev needed). LLAMA_CURL is gone in this version.
say "configuring (cmake, Release, CPU only, static)"
# shellcheck disable=SC2086 # LLAMA_SERVER_CMAKE_ARGS is a list of words on purpose
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
    ${LLAMA_SERVER_CMAKE_ARGS:-} >&2
say "building llama-server with $JOBS jobs"
start=$SECONDS
cmake --build "$work/build" --target llama-server --config Release -j "$JOBS" >&2
say "compiled in $((SECONDS - start)) s"

built="$work/build/bin/llama-server"
[[ -x "$built" ]] || die "the build produced no $built"
"$built" --version >&2 || die "$built does not run"

# -- 3. install atomically -------------------------------------------------------------------------
mkdir -p "$PREFIX/bin"
cp "$built" "$PREFIX/bin/.llama-server.tmp.$$"
mv -f "$PREFIX/bin/.llama-server.tmp.$$" "$BIN"
say "installed $BIN in ${SECONDS} s"
flock -u 9
printf '%s\n' "$BIN"
