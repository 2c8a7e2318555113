# shellcheck shell=bash
# What bootstrap.sh (the llama-cpp-python wheel) and build_llama_server.sh (llama.cpp's server) share:
# the pinned source, the CPU features a build is made for, and the cache key that names them.
# Sourced, not run. Callers define say() and die(). LLAMA_CPUINFO (default /proc/cpuinfo) is for tests.
#
# Why builds are not `-march=native` (llama.cpp's default): a native build on a CPU with AMX
# compiles ggml's AMX kernels, and with GCC 12 those run on an all-zero tile configuration (its
# _tile_loadconfig tells the compiler it reads 8 bytes, so the stores that fill the other 56 are
# dropped as dead; `objdump -d` of ggml-cpu/amx/mmq.cpp built with -march=sapphirerapids shows the
# 64-byte config zeroed, palette byte set, then `ldtilecfg`). The server then crashes on its first
# decode. So every feature is chosen here, explicitly, AMX never; and because a binary tuned to
# one CPU can still crash on another, each build is checked by a real one-token decode
# (localmodels/check.py) on every machine it is used on, with a build of fewer features to
# fall back to.

LLAMA_VERSION=0.3.36
LLAMA_SDIST_NAME="llama_cpp_python-$LLAMA_VERSION.tar.gz"
LLAMA_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e # PyPI's

# llama_cpu_tiers: one line per candidate build, best first: "TIER<TAB>CMAKE ARGS".
# full: every SIMD extension this CPU has (AMX excluded); v3: AVX2/FMA/F16C/BMI2 (x86-64-v3);
# v2: SSE4.2 only. Tiers that would build the same thing are left out.
llama_cpu_tiers() {
    local arch
    arch=$(uname -m)
    if [[ "$arch" != x86_64 ]]; then
        # Not x86: llama.cpp's own detection; the key still names this CPU (llama_machine_id).
        printf 'native\t-DGGML_NATIVE=ON\n'
        return
    fi
    local flags
    flags=" $(grep -m1 '^flags' "${LLAMA_CPUINFO:-/proc/cpuinfo}" 2>/dev/null | cut -d: -f2) "
    has() { [[ "$flags" == *" $1 "* ]]; }
    on() { if has "$1"; then echo ON; else echo OFF; fi; }
    local avx512=OFF
    if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then avx512=ON; fi
    local v3=OFF
    if has avx && has avx2 && has fma && has f16c && has bmi2; then v3=ON; fi
    local base="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    local full v3args v2args
    full="$base -DGGML_SSE42=$(on sse4_2) -DGGML_AVX=$(on avx) -DGGML_AVX2=$(on avx2)"
    full+=" -DGGML_FMA=$(on fma) -DGGML_F16C=$(on f16c) -DGGML_BMI2=$(on bmi2)"
    full+=" -DGGML_AVX_VNNI=$(on avx_vnni) -DGGML_AVX512=$avx512"
    if [[ $avx512 == ON ]]; then
        full+=" -DGGML_AVX512_VBMI=$(on avx512vbmi) -DGGML_AVX512_VNNI=$(on avx512_vnni)"
        full+=" -DGGML_AVX512_BF16=$(on avx512_bf16)"
    else
        full+=" -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
    fi
    local off="-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF"
    off+=" -DGGML_AVX512_BF16=OFF"
    v3args="$base -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    v3args+=" -DGGML_BMI2=ON $off"
    v2args="$base -DGGML_SSE42=$(on sse4_2) -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF"
    v2args+=" -DGGML_F16C=OFF -DGGML_BMI2=OFF $off"
    printf 'full\t%s\n' "$full"
    if [[ $v3 == ON && "$v3args" != "$full" ]]; then printf 'v3\t%s\n' "$v3args"; fi
    if [[ "$v2args" != "$full" ]]; then printf 'v2\t%s\n' "$v2args"; fi
}

# llama_build_key TIER CMAKE_ARGS [EXTRA]: the cache key of a build: version, architecture, tier
# and a hash of everything that makes a build right for one machine and wrong for another: the
# CPU features compiled in (CMAKE_ARGS), the compilers and EXTRA (e.g. the Python ABI).
llama_build_key() {
    local tier=$1 args=$2 extra=${3:-} arch hash
    arch=$(uname -m)
    hash=$(
        {
            echo "version=$LLAMA_VERSION arch=$arch tier=$tier"
            echo "cmake_args=$args"
            [[ $tier == native ]] && llama_machine_id
            echo "cc=$(cc --version 2>/dev/null | head -n 1)"
            echo "c++=$(c++ --version 2>/dev/null | head -n 1)"
            echo "extra=$extra"
        } | sha256sum | cut -c1-12
    )
    printf '%s-%s-%s-%s\n' "$LLAMA_VERSION" "$arch" "$tier" "$hash"
}

# llama_machine_id: this machine as far as a build's behaviour goes: the CPU's model and feature
# flags and the kernel (which grants or refuses extended CPU state such as AMX's).
llama_machine_id() {
    {
        grep -m1 '^model name' "${LLAMA_CPUINFO:-/proc/cpuinfo}" 2>/dev/null
        grep -m1 -E '^(flags|Features)' "${LLAMA_CPUINFO:-/proc/cpuinfo}" 2>/dev/null
        uname -srm
    } | sha256sum | cut -c1-16
}

# llama_build_info ARGS: what a build was made with, for its build-info.txt.
llama_build_info() {
    printf 'built %s on %s (%s)\ncmake args: %s\ncc: %s\n' "$(date -u +%FT%TZ)" "$(uname -n)" \
        "$(grep -m1 '^model name' "${LLAMA_CPUINFO:-/proc/cpuinfo}" | cut -d: -f2- | xargs)" "$1" \
        "$(cc --version 2>/dev/null | head -n 1)"
}

# A build's record of where it was checked: $dir/checked/<machine id> holds "ok" or "crashed: ...".
llama_check_state() { cat "$1/checked/$(llama_machine_id)" 2>/dev/null || true; }
llama_record_check() {
    mkdir -p "$1/checked"
    printf '%s\n' "$2" >"$1/checked/$(llama_machine_id)"
}

# llama_fetch_sdist DIR PYTHON: the sha256-pinned llama-cpp-python sdist in DIR (downloaded once
# with pip); prints its path.
llama_fetch_sdist() {
    local dir=$1 python=$2 sdist="$1/$LLAMA_SDIST_NAME" req
    sdist_ok() { [[ -f "$sdist" ]] && [[ "$(sha256sum "$sdist" | cut -d' ' -f1)" == "$LLAMA_SDIST_SHA256" ]]; }
    if ! sdist_ok; then
        mkdir -p "$dir"
        say "downloading $LLAMA_SDIST_NAME with pip"
        req=$(mktemp)
        echo "llama-cpp-python==$LLAMA_VERSION --hash=sha256:$LLAMA_SDIST_SHA256" >"$req"
        # --no-binary for this package only: its sdist, not a wheel, while pip's metadata step
        # still takes its build tools as wheels (with :all: a machine without cmake compiles cmake
        # from source: an hour on 2 cores). --require-hashes: exactly the file PyPI published.
        "$python" -m pip --disable-pip-version-check download --quiet --no-deps --no-binary llama-cpp-python \
            --require-hashes -r "$req" -d "$dir" >&2 || {
            rm -f "$req"
            die "pip could not download $LLAMA_SDIST_NAME"
        }
        rm -f "$req"
        sdist_ok || die "$sdist missing or its sha256 is not $LLAMA_SDIST_SHA256"
    fi
    printf '%s\n' "$sdist"
}

# llama_choose_build DIR EXTRA_ARGS KEY_EXTRA BUILD USE CHECK RECHECK: the first tier whose build
# works on this machine, best first; sets LLAMA_CHOSEN to its directory DIR/<key>.
#   BUILD <dir> <cmake args>: make the build in <dir> unless it is there; 1 = the build failed
#     (try the next tier), 2 = cannot build at all (stop);
#   USE <dir>: make it the one in use (e.g. install the wheel);
#   CHECK <dir>: the one-token decode; 0 = works, 3 = crashed or failed (recorded; next tier),
#     anything else = could not check (stop, nothing recorded);
#   RECHECK: 1 to check even where it passed on this machine before.
llama_choose_build() {
    # Bash scopes locals dynamically (the callbacks see them): prefixed, so none hides a caller's.
    local _root=$1 _extra_args=$2 _key_extra=$3 _build=$4 _use=$5 _check=$6 _recheck=$7
    local _line _tier _args _key _dir _state _status _reason
    local -a _tiers
    mapfile -t _tiers < <(llama_cpu_tiers)
    LLAMA_CHOSEN=""
    for _line in "${_tiers[@]}"; do
        _tier=${_line%%$'\t'*}
        _args="${_line#*$'\t'}${_extra_args:+ $_extra_args}"
        _key=$(llama_build_key "$_tier" "$_args" "$_key_extra")
        _dir="$_root/$_key"
        _state=$(llama_check_state "$_dir")
        if [[ "$_state" == crashed* ]]; then
            say "skipping the $_tier build ($_key): on this machine it $_state"
            continue
        fi
        _status=0
        "$_build" "$_dir" "$_args" || _status=$?
        [[ $_status != 2 ]] || die "cannot build (see above)"
        if [[ $_status != 0 ]]; then
            say "the $_tier build failed (see above); trying one with fewer CPU features"
            continue
        fi
        "$_use" "$_dir"
        if [[ "$_state" == ok && $_recheck == 0 ]]; then
            LLAMA_CHOSEN=$_dir
            return 0
        fi
        say "checking the $_tier build ($_key) with a one-token decode on this machine"
        _status=0
        "$_check" "$_dir" || _status=$?
        if [[ $_status == 0 ]]; then
            llama_record_check "$_dir" ok
            LLAMA_CHOSEN=$_dir
            return 0
        fi
        [[ $_status == 3 ]] || die "could not check the $_tier build (exit $_status): see above"
        _reason=$(grep -m1 'FAILED:' "$_dir/last-check.log" 2>/dev/null | sed 's/.*FAILED: //' || true)
        llama_record_check "$_dir" "crashed: ${_reason:-the decode check failed}"
        say "the $_tier build does not work on this machine (${_reason:-see above}); trying one with fewer CPU features"
    done
    die "no build decodes on this machine (records in $_root/*/checked/)"
}

# llama_run_check DIR COMMAND...: run a decode check, its output to stderr and DIR/last-check.log.
llama_run_check() {
    local dir=$1 status=0
    shift
    "$@" >"$dir/last-check.log" 2>&1 || status=$?
    cat "$dir/last-check.log" >&2
    return "$status"
}

# llama_with_ticker WHAT COMMAND...: run COMMAND, and while it runs say "WHAT: still building, N s"
# every LLAMA_TICK_SECONDS (default 30): a compile is silent for many minutes on two cores, and a
# new user took the silence for a hang. Returns COMMAND's status.
llama_with_ticker() {
    local what=$1 start ticker rc=0
    shift
    start=$(date +%s)
    (
        while sleep "${LLAMA_TICK_SECONDS:-30}"; do
            say "$what: still building, $(($(date +%s) - start)) s so far"
        done
    ) &
    ticker=$!
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    return "$rc"
}
