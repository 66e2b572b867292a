#!/bin/sh
# Data-parallel scaling of `lathe train` on the CPU: training tokens/s of 1 process vs 2
# processes (mpirun -np 2, one thread each, the same micro-batch per rank, so 2x the
# global batch), and how much of the gradient all-reduce the bucketed reducer hides behind
# backward (the same 2-rank run with LATHE_DP_NO_OVERLAP=1 gives the fully exposed cost).
#
# usage: scripts/bench_dp.sh [LATHE_BIN] [STEPS]
#   env: LAYERS (4) D_MODEL (256) SEQ (128) MICRO (8) BUCKET_MB (2) THREADS (1) OUT (a tmp dir)
# Prints one line per run and a summary. Needs 2 free cores for meaningful figures.
set -eu
BIN=${1:-build/lathe}
STEPS=${2:-20}
LAYERS=${LAYERS:-4}
D_MODEL=${D_MODEL:-256}
SEQ=${SEQ:-128}
MICRO=${MICRO:-8}
BUCKET_MB=${BUCKET_MB:-2}
THREADS=${THREADS:-1}
OUT=${OUT:-$(mktemp -d /tmp/lathe_bench_dp.XXXXXX)}
MPIRUN="mpirun --allow-run-as-root --oversubscribe"

cfg=$OUT/bench.pbtxt
cat > "$cfg" <<EOF
name: "bench_dp"
model { arch: GPT2 n_layer: $LAYERS n_head: 4 d_model: $D_MODEL max_seq_len: $SEQ dropout: 0.0 }
data { source: SYNTHETIC synthetic { seed: 1 bytes: 4194304 } val_fraction: 0.0 }
optimizer { lr: 1e-3 }
schedule { kind: CONSTANT }
train { steps: $STEPS micro_batch: $MICRO grad_accum: 1 seq_len: $SEQ log_interval: 1000 }
checkpoint { interval: 0 save_final: false }
logging { progress: NONE jsonl: true tensorboard: false }
parallel { threads_per_rank: $THREADS bucket_mb: $BUCKET_MB }
EOF

# Tokens/s over the steps after the first (warm-up): sum of tokens / sum of step times.
steady_tps() {
  awk '{ match($0, /"step":[0-9]+/); s = substr($0, RSTART + 7, RLENGTH - 7) + 0
         match($0, /"step_ms":[0-9.e+-]+/); ms = substr($0, RSTART + 10, RLENGTH - 10) + 0
         match($0, /"tokens_per_s":[0-9.e+-]+/); t = substr($0, RSTART + 15, RLENGTH - 15) + 0
         if (s > 1 && ms > 0) { tok += t * ms / 1000; sec += ms / 1000 } }
       END { if (sec > 0) printf "%.0f", tok / sec; else printf "0" }' "$1"
}

# run NAME NP [ENV...]: trains, prints tokens/s (rank 0) and the reducer's per-rank totals.
run() {
  name=$1
  np=$2
  shift 2
  dir=$OUT/$name
  rm -rf "$dir"
  envs=""
  for e in "$@"; do envs="$envs -x $e"; done
  # shellcheck disable=SC2086
  $MPIRUN -np "$np" -x OMP_NUM_THREADS="$THREADS" -x OPENBLAS_NUM_THREADS="$THREADS" -x LATHE_DP_STATS=1 $envs \
    "$BIN" train "$cfg" --set run_dir="$dir" --set checkpoint.resume=never > "$dir.log" 2>&1
  tps=$(steady_tps "$dir/metrics.jsonl")
  params=$(sed -n 's/.*: \([0-9]*\) parameters$/\1/p' "$dir.log" | head -1)
  echo "$name: np=$np tokens/s=$tps (params $params)"
  grep '^lathe dp:' "$dir.log" | sort || true
}

echo "model: GPT-2 L=$LAYERS d=$D_MODEL seq=$SEQ, micro-batch $MICRO per rank, $THREADS thread(s) per rank," \
     "bucket_mb $BUCKET_MB, $STEPS steps, $(nproc) cores; logs in $OUT"
run one 1
run two 2
run two_no_overlap 2 LATHE_DP_NO_OVERLAP=1

# Summary: speed-up, and per rank the exposed communication with and without overlap.
awk -v a="$(steady_tps "$OUT/one/metrics.jsonl")" -v b="$(steady_tps "$OUT/two/metrics.jsonl")" \
    -v c="$(steady_tps "$OUT/two_no_overlap/metrics.jsonl")" -v two="$OUT/two.log" -v non="$OUT/two_no_overlap.log" '
  function exposed(f, r,   l, m) { while ((getline l < f) > 0) if (l ~ ("^lathe dp: rank " r ":")) { match(l, /exposed communication [0-9.]+/); m = substr(l, RSTART + 22, RLENGTH - 22) } close(f); return m + 0 }
  function bwd(f, r,   l, m) { while ((getline l < f) > 0) if (l ~ ("^lathe dp: rank " r ":")) { match(l, /backward [0-9.]+/); m = substr(l, RSTART + 9, RLENGTH - 9) } close(f); return m + 0 }
  function early(f, r,   l, m, n) { while ((getline l < f) > 0) if (l ~ ("^lathe dp: rank " r ":")) { match(l, /[0-9]+ complete before/); m = substr(l, RSTART, RLENGTH - 16); match(l, /[0-9]+ syncs of [0-9]+ buckets/); n = substr(l, RSTART, RLENGTH); split(n, p, " "); m = (m + 0) / (p[1] * p[4]) } close(f); return m }
  BEGIN {
    printf "tokens/s: 1 process %.0f, 2 processes %.0f (x%.2f), 2 processes without overlap %.0f (x%.2f)\n", a, b, b / a, c, c / a
    for (r = 0; r < 2; ++r) {
      e1 = exposed(two, r); e0 = exposed(non, r)
      printf "rank %d: %.0f%% of the buckets were complete when backward ended\n", r, 100 * early(two, r)
      printf "rank %d: backward %.1f ms/step; communication left after backward %.2f ms with overlap vs %.2f ms without: %.0f%% hidden\n", r, bwd(two, r), e1, e0, (e0 > 0 ? 100 * (1 - e1 / e0) : 0)
    }
  }'
