#!/usr/bin/env bash
# t2 quickstart for Debian 12. Installs what is missing from the distribution's packages
# (as root, or through sudo), then:
#
#   ./quickstart.sh demo [ARGS...]  build the demo (release preset) and run it with ARGS
#   ./quickstart.sh test            run the whole test suite: the dev workflow (GCC,
#                                   -march=native), the asan workflow (Clang, ASan+UBSan,
#                                   -march=x86-64-v3: AVX2), the Meson build and tests (GCC,
#                                   -march=x86-64-v2: SSE4.2), and each reader's fuzz target
#                                   for a short while
#   ./quickstart.sh packages        print the Debian packages t2 needs
#   ./quickstart.sh --help          print this text
#
# Builds go to build/<preset> and build/meson. CMAKE_BUILD_PARALLEL_LEVEL sets the number
# of compile jobs (default: the number of cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PACKAGES=(
    build-essential g++ clang cmake ninja-build meson pkg-config ccache
    libxsimd-dev doctest-dev libcli11-dev libbenchmark-dev libopenblas-dev liblapacke-dev
    python3-numpy python3-torch
)

say() { printf '[t2] %s\n' "$*" >&2; }

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        say "not root and no sudo: cannot run '$*'"
        return 1
    fi
}

ensure_packages() {
    if ! command -v dpkg-query >/dev/null; then
        say "dependencies: not a Debian system, install these yourself: ${PACKAGES[*]}"
        return 0
    fi
    local missing=() package
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        say "dependencies: all installed"
        return 0
    fi
    say "dependencies: installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

demo() {
    ensure_packages
    if [[ ! -f examples/demo.cpp ]]; then
        say "examples/demo.cpp does not exist yet"
        return 1
    fi
    say "configure: cmake --preset release"
    cmake --preset release
    say "build: t2_demo"
    cmake --build --preset release --target t2_demo
    say "run: build/release/examples/t2_demo${*:+ $*}"
    build/release/examples/t2_demo "$@"
}

# Meson's build doubles as the narrowest instruction set the unit tests run on (SSE4.2,
# 4-lane SIMD), next to the native (dev) and AVX2 (asan) builds of the CMake workflows: every
# SIMD width is exercised wherever the suite runs.
meson_tests() {
    local setup=(meson setup build/meson -Dcpp_args=-march=x86-64-v2)
    [[ -f build/meson/build.ninja ]] && setup+=(--reconfigure)
    "${setup[@]}" &&
        meson compile -C build/meson -j "$CMAKE_BUILD_PARALLEL_LEVEL" &&
        meson test -C build/meson --print-errorlogs --num-processes 2
}

run_tests() {
    ensure_packages
    local phases=("cmake --workflow --preset dev" "cmake --workflow --preset asan" "meson_tests"
                  "cmake --workflow --preset fuzz")
    local results=() failed=0 phase start
    for phase in "${phases[@]}"; do
        say "test: $phase"
        start=$SECONDS
        if $phase; then
            results+=("$(printf 'ok      %4ds  %s' $((SECONDS - start)) "$phase")")
        else
            results+=("$(printf 'FAILED  %4ds  %s' $((SECONDS - start)) "$phase")")
            failed=1
        fi
    done
    say "summary (${SECONDS}s in all):"
    printf '[t2]   %s\n' "${results[@]}" >&2
    if ((failed)); then
        say "some tests FAILED"
        return 1
    fi
    say "all tests passed"
}

export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# Compiles go through ccache when it is installed (Meson picks it up by itself). The base
# directory makes its keys independent of where the checkout lies, so a fresh clone in
# another folder reuses what an earlier build of the same sources compiled.
if command -v ccache >/dev/null && [[ -z ${CMAKE_CXX_COMPILER_LAUNCHER:-} ]]; then
    export CMAKE_CXX_COMPILER_LAUNCHER=ccache
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi

case ${1:-} in
demo) shift; demo "$@" ;;
test) run_tests ;;
packages) printf '%s\n' "${PACKAGES[@]}" ;;
-h | --help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
