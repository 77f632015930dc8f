#!/usr/bin/env bash
# Builds and runs tests/consumer/main.cpp the way another project would use t2:
#   consume.sh install    install the build tree into $WORK/prefix (the others' fixture)
#   consume.sh cmake      find_package(t2) from that prefix
#   consume.sh pkgconfig  c++ $(pkg-config --cflags --libs t2) from that prefix
#   consume.sh meson      dependency('t2') from that prefix
#   consume.sh subdir     add_subdirectory() of the source tree
# ctest runs it with CMAKE, CXX, GENERATOR, T2_SOURCE_DIR, T2_BINARY_DIR, T2_PKGCONFIGDIR and
# WORK set. Exit status 77 means skipped.
set -euo pipefail

kind=$1
consumers=$T2_SOURCE_DIR/tests/consumer
prefix=$WORK/prefix
dir=$WORK/$kind
export PKG_CONFIG_PATH=$prefix/$T2_PKGCONFIGDIR

# Only the compiler is passed on: the consumers must build without t2's own flags
# (warnings, -march=native, sanitizers), as a user's project would.
cmake_consumer() {
    "$CMAKE" -S "$1" -B "$dir" -G "$GENERATOR" -DCMAKE_CXX_COMPILER="$CXX" "${@:2}"
    "$CMAKE" --build "$dir"
}

rm -rf "$dir"
mkdir -p "$dir"
case $kind in
install)
    rm -rf "$prefix"
    "$CMAKE" --install "$T2_BINARY_DIR" --prefix "$prefix"
    exit 0
    ;;
cmake)
    cmake_consumer "$consumers/cmake" -DCMAKE_PREFIX_PATH="$prefix"
    # A t2 installed elsewhere on the machine must not satisfy find_package by accident.
    grep -qF "t2_DIR:PATH=$prefix/" "$dir/CMakeCache.txt" ||
        { echo "find_package(t2) did not find the package in $prefix" >&2; exit 1; }
    ;;
pkgconfig)
    # shellcheck disable=SC2046 # pkg-config's output is meant to be word-split
    "$CXX" -std=c++20 -o "$dir/t2_consumer" "$consumers/main.cpp" $(pkg-config --cflags --libs t2)
    ;;
meson)
    if ! command -v meson >/dev/null; then
        echo "meson is not installed: skipped"
        exit 77
    fi
    CXX=$CXX meson setup "$dir" "$consumers/meson"
    meson compile -C "$dir"
    meson test -C "$dir" --verbose
    exit 0
    ;;
subdir)
    cmake_consumer "$consumers/subdir" -DT2_SOURCE_DIR="$T2_SOURCE_DIR"
    ;;
*)
    echo "usage: consume.sh install|cmake|pkgconfig|meson|subdir" >&2
    exit 2
    ;;
esac
"$dir/t2_consumer"
