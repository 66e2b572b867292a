#!/usr/bin/env bash
# Builds lathe and runs the whole test suite (the README's test command; CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
# Tests on explicitly: quickstart configures the same build directory with them off, and a
# reused cache would otherwise build no test and ctest would pass having run nothing.
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLATHE_BUILD_TESTS=ON ${LATHE_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$BUILD_DIR"
# --no-tests=error: finding no test is a failure, not a silent success.
ctest --output-on-failure -j"$(nproc)" --timeout 600 --no-tests=error
