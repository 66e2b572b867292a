#!/usr/bin/env bash
# GEMMs of one lathe training run at 1 thread (shapes, counts, achieved GFLOP/s), and the
# same shapes through OpenBLAS alone and through torch.mm (bench/README.md section 15).
#   bench/gemm_shapes/run.sh BUILD_DIR CONFIG.pbtxt [PYTHON_WITH_TORCH]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "$1" && pwd)
CONFIG=$2
PY=${3:-$BUILD/bench-venv/bin/python}
OUT=$BUILD/gemm_shapes
mkdir -p "$OUT"
INC=$(pkg-config --cflags openblas 2> /dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
gcc -O2 -shared -fPIC "$HERE/sgemm_log.c" -o "$OUT/sgemm_log.so" -ldl
gcc -O2 $INC "$HERE/openblas_shapes.c" -o "$OUT/openblas_shapes" -lopenblas
LATHE=$BUILD/lathe
[[ -x $LATHE ]] || LATHE=$BUILD/cli/lathe
OMP_NUM_THREADS=1 SGEMM_LOG="$OUT/sgemm_log.txt" LD_PRELOAD="$OUT/sgemm_log.so" "$LATHE" train "$CONFIG" > /dev/null
python3 "$HERE/summarize.py" "$OUT/sgemm_log.txt" 15
(cd "$HERE" && python3 -c "from shapes import SHAPES; print('\n'.join(' '.join(map(str, s)) for s in SHAPES))") |
  "$OUT/openblas_shapes"
if [[ -x $PY ]]; then (cd "$HERE" && OMP_NUM_THREADS=1 "$PY" torch_shapes.py); else echo "no $PY: torch side skipped"; fi
