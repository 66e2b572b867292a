#!/usr/bin/env bash
# The README's main job: installs what lathe needs, builds it, trains the quickstart model
# on the embedded synthetic corpus (no download) and prints a sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLATHE_BUILD_TESTS=OFF -DLATHE_BUILD_BENCH=OFF ${LATHE_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" --target lathe -j"$(nproc)"
"$BUILD_DIR/lathe" train configs/quickstart.pbtxt --set checkpoint.resume=never "$@"
echo
echo "== sample from the trained model =="
"$BUILD_DIR/lathe" generate --checkpoint runs/quickstart --prompt "the " --max-new-tokens 200 --temperature 0.8 --top-k 20 --seed 1
