#!/usr/bin/env bash
# lathe vs PyTorch on the CPU, side by side on the same shapes (issue 9). A benchmark: it
# measures and reports, it asserts nothing about speed.
#
#   bench/vs_pytorch.sh [BUILD_DIR]        # BUILD_DIR holds the built `lathe` (default: build)
#
# What it runs, each configuration once per round, in a random order per round (so load
# from other processes spreads over all of them), ROUNDS rounds:
#   prepare   `lathe prepare` of Tiny Shakespeare x10 (~11 MB) with the GPT-2 tokenizer vs
#             HF tokenizers' encode_batch (bench/vs_pytorch/hf_tokenize.py), MB/s end to end
#             (process start to written ids; RAYON_NUM_THREADS / OMP_NUM_THREADS = T)
#   train     tokens/s of training steps (f32, dropout 0, AdamW wd 0.1 on 2-D weights,
#             clip 1.0) of: GPT-2 L4 d256 h4 vocab 256 (batch 8x256); Llama L4 d256 h4/kv2
#             SwiGLU d_ff 768 RoPE RMSNorm vocab 256 (8x256); GPT-2 L6 d384 h6 vocab 50257
#             (4x256, lathe on the prepared GPT-2 shards). lathe: `lathe train` with the
#             configs written below; PyTorch: bench/vs_pytorch/torch_bench.py (transformers
#             models, eager; torch.compile too with COMPILE=1). The first WARMUP steps of
#             every run are dropped; a run's figure is the median of the other steps.
#   generate  greedy decoding of 200 tokens with the small GPT-2 (byte vocabulary): `lathe
#             generate` (KV cache) timed as wall(200 tokens) - wall(1 token), vs
#             transformers' generate(use_cache=True) timed inside the process.
#   peak RSS of every process (/usr/bin/time %M).
#   profile   (PROFILE=1, needs perf) the top functions of lathe training the small GPT-2
#             at 1 thread.
# Output: $OUT/results.jsonl (one line per run, with the load average at its start) and
# $OUT/summary.md (median and range over the rounds), printed at the end.
#
# PyTorch, transformers and tokenizers are installed into a virtual environment
# ($BUILD/bench-venv) by this script on its first run: the CPU wheel index first, PyPI's
# torch if that index cannot be reached. Never by the tests or CI.
#
# Environment: ROUNDS (3), THREADS ("1 2"), STEPS (8), WARMUP (2), SECTIONS
# ("prepare train generate"), MODELS ("gpt2_small llama_small gpt2_50k"), COMPILE (0),
# COMPILE_MODELS (the models torch.compile runs for; default MODELS), PROFILE (0), OUT ($BUILD/vs_pytorch), TORCH_ENV
# (extra VAR=VALUE words for the PyTorch processes, e.g. "OMP_WAIT_POLICY=passive"; lathe's
# CLI sets that policy itself unless the variable is set).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 2"}
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-2}
SECTIONS=${SECTIONS:-"prepare train generate"}
COMPILE=${COMPILE:-0}
MODELS=${MODELS:-"gpt2_small llama_small gpt2_50k"}
COMPILE_MODELS=${COMPILE_MODELS:-$MODELS}
PROFILE=${PROFILE:-0}
OUT=${OUT:-$BUILD/vs_pytorch}
VENV=${VENV:-$BUILD/bench-venv}
SHARED=${SHARED:-$ROOT/../shared/data}
HERE=$ROOT/bench/vs_pytorch
TORCH_ENV=${TORCH_ENV:-}

LATHE=""
for c in "$BUILD/lathe" "$BUILD/cli/lathe"; do [[ -x $c ]] && LATHE=$c && break; done
[[ -n $LATHE ]] || { echo "vs_pytorch.sh: no lathe binary in $BUILD (build the 'lathe' target)" >&2; exit 2; }
for f in "$SHARED/tinyshakespeare.txt" "$SHARED/gpt2/vocab.json" "$SHARED/gpt2/merges.txt"; do
  [[ -f $f ]] || { echo "vs_pytorch.sh: missing $f (set SHARED to the folder holding it)" >&2; exit 2; }
done
[[ -x /usr/bin/time ]] || { echo "vs_pytorch.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

# ---- the Python side, in its own environment ----
PY=$VENV/bin/python
if ! "$PY" -c "import torch, transformers, tokenizers, numpy" 2>/dev/null; then
  echo "== installing PyTorch (CPU), transformers, tokenizers into $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu ||
    "$PY" -m pip install -q torch  # that index unreachable: PyPI's build (runs on the CPU all the same)
  "$PY" -m pip install -q transformers tokenizers numpy
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # the lathe configs name paths under it
# A private copy: a rebuild of the build tree during the rounds must not change (or break)
# the binary being measured.
cp "$LATHE" "$OUT/lathe.bin"
LATHE=$OUT/lathe.bin
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
VERSIONS=$("$PY" -c "import torch, transformers, tokenizers; print(f'torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}')")
echo "== $VERSIONS; lathe: $LATHE; $(nproc) cores; results in $OUT"

load1() { cut -d' ' -f1 /proc/loadavg; }
# record KEY=VALUE... : one JSON line in results.jsonl (values are JSON already).
record() {
  local line="{" sep=""
  for kv in "$@"; do line+="$sep\"${kv%%=*}\": ${kv#*=}"; sep=", "; done
  echo "$line}" >> "$RESULTS"
}
# timed FILE CMD...: runs CMD under /usr/bin/time; sets WALL and RSS_KB.
timed() {
  local tf=$1; shift
  local rc=0
  /usr/bin/time -f "%e %M" -o "$tf" "$@" || rc=$?
  read -r WALL RSS_KB < <(tail -1 "$tf")
  return $rc
}

# ---- inputs ----
TEXT=$OUT/shakespeare10.txt
[[ -f $TEXT ]] || for _ in $(seq 10); do cat "$SHARED/tinyshakespeare.txt"; done > "$TEXT"
TEXT_BYTES=$(stat -c %s "$TEXT")
PREP=$OUT/prepared_gpt2  # the 50k-vocabulary model's training data
OMP_NUM_THREADS=2 "$LATHE" prepare "$TEXT" --out "$PREP" --tokenizer "$SHARED/gpt2" > /dev/null

# lathe configs: the shapes above, no evaluation or checkpoint in the timed run.
write_config() {  # NAME MODEL_BLOCK DATA_BLOCK MICRO_BATCH STEPS THREADS SAVE
  cat > "$OUT/$1.pbtxt" <<EOF
name: "$1"
run_dir: "$OUT/runs/$1"
model { $2 }
data { $3 }
optimizer { type: ADAMW lr: 3e-4 beta1: 0.9 beta2: 0.999 eps: 1e-8 weight_decay: 0.1 }
schedule { kind: CONSTANT }
train { steps: $5 micro_batch: $4 seq_len: 256 grad_clip: 1.0 log_interval: 1 eval_interval: 0 eval_batches: 1 device: "cpu" }
checkpoint { interval: 0 save_final: $7 resume: "never" }
logging { jsonl: true progress: NONE }
parallel { threads_per_rank: $6 }
EOF
}
GPT2_SMALL='arch: GPT2 n_layer: 4 n_head: 4 d_model: 256 max_seq_len: 256 dropout: 0.0'
LLAMA_SMALL='arch: LLAMA n_layer: 4 n_head: 4 n_kv_head: 2 d_model: 256 ffn_multiple_of: 256 max_seq_len: 256 norm_eps: 1e-5 rope_theta: 10000 tie_embeddings: true dropout: 0.0'
GPT2_50K='arch: GPT2 n_layer: 6 n_head: 6 d_model: 384 max_seq_len: 256 dropout: 0.0'
BYTE_DATA='source: SYNTHETIC tokenizer: "byte" val_fraction: 0.1'
GPT2_DATA="source: HDF5 path: \"$PREP\" tokenizer: \"$SHARED/gpt2\" val_fraction: 0.1"
for t in $THREADS; do
  write_config "gpt2_small_t$t" "$GPT2_SMALL" "$BYTE_DATA" 8 "$STEPS" "$t" false
  write_config "llama_small_t$t" "$LLAMA_SMALL" "$BYTE_DATA" 8 "$STEPS" "$t" false
  write_config "gpt2_50k_t$t" "$GPT2_50K" "$GPT2_DATA" 4 "$STEPS" "$t" false
done
# The generation checkpoint: the small GPT-2 after one step (speed does not depend on the weights).
write_config gen_ckpt "$GPT2_SMALL" "$BYTE_DATA" 8 1 2 true
OMP_NUM_THREADS=2 "$LATHE" train "$OUT/gen_ckpt.pbtxt" > "$OUT/gen_ckpt.log" 2>&1

# median of a run's per-step tokens/s after the warm-up steps (lathe: from metrics.jsonl)
lathe_rate() {
  "$PY" - "$1" "$WARMUP" <<'EOF'
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1])]
r = [x["tokens_per_s"] for x in r if "tokens_per_s" in x and x["step"] > int(sys.argv[2])]
print(json.dumps({"median": statistics.median(r), "steps": r}))
EOF
}
torch_rate() {
  "$PY" - "$1" "$WARMUP" <<'EOF'
import json, statistics, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["tokens_per_s"][int(sys.argv[2]):]
print(json.dumps({"median": statistics.median(r), "steps": r}))
EOF
}

# ---- one configuration = one function call "KIND ARGS" ----
run_job() {
  local kind=$1 a=$2 b=${3:-} la log=$OUT/job.log tf=$OUT/time.txt
  la=$(load1)
  case $kind in
    prep_lathe)  # threads
      rm -rf "$OUT/prep_t$a"
      timed "$tf" env OMP_NUM_THREADS="$a" "$LATHE" prepare "$TEXT" --out "$OUT/prep_t$a" --tokenizer "$SHARED/gpt2" > "$log" || return 1
      record section='"prepare"' side='"lathe"' threads="$a" load="$la" wall_s="$WALL" rss_kb="$RSS_KB" \
        mb_per_s="$(awk -v b="$TEXT_BYTES" -v w="$WALL" 'BEGIN{print b/1e6/w}')" ;;
    prep_hf)
      timed "$tf" env RAYON_NUM_THREADS="$a" OMP_NUM_THREADS="$a" "$PY" "$HERE/hf_tokenize.py" "$TEXT" \
        --gpt2 "$SHARED/gpt2" --out "$OUT/hf_ids.npy" > "$log" || return 1
      record section='"prepare"' side='"hf_tokenizers"' threads="$a" load="$la" wall_s="$WALL" rss_kb="$RSS_KB" \
        mb_per_s="$(awk -v b="$TEXT_BYTES" -v w="$WALL" 'BEGIN{print b/1e6/w}')" detail="$(tail -1 "$log")" ;;
    train_lathe)  # model threads
      rm -rf "$OUT/runs/${a}_t$b"
      timed "$tf" env OMP_NUM_THREADS="$b" "$LATHE" train "$OUT/${a}_t$b.pbtxt" > "$log" 2>&1 || return 1
      record section='"train"' side='"lathe"' model="\"$a\"" threads="$b" load="$la" wall_s="$WALL" rss_kb="$RSS_KB" \
        rate="$(lathe_rate "$OUT/runs/${a}_t$b/metrics.jsonl")" ;;
    train_torch|train_torch_compile)
      local flag=""; [[ $kind == train_torch_compile ]] && flag=--compile
      timed "$tf" env $TORCH_ENV OMP_NUM_THREADS="$b" "$PY" "$HERE/torch_bench.py" train "$a" --threads "$b" --steps "$STEPS" $flag > "$log" 2>&1 || return 1
      record section='"train"' side="\"${kind#train_}\"" model="\"$a\"" threads="$b" load="$la" wall_s="$WALL" \
        rss_kb="$RSS_KB" rate="$(torch_rate "$log")" ;;
    gen_lathe)  # 3 pairs of (1 token, 200 tokens); the median of the pairs' differences
      local diffs=() t0 t1 t2 k
      for k in 1 2 3; do
        t0=$(date +%s%N)
        OMP_NUM_THREADS="$a" "$LATHE" generate --checkpoint "$OUT/runs/gen_ckpt" --prompt "The " \
          --max-new-tokens 1 --temperature 0 > "$log" 2>&1 || return 1
        t1=$(date +%s%N)
        timed "$tf" env OMP_NUM_THREADS="$a" "$LATHE" generate --checkpoint "$OUT/runs/gen_ckpt" --prompt "The " \
          --max-new-tokens 200 --temperature 0 > "$log" 2>&1 || return 1
        t2=$(date +%s%N)
        diffs+=("$(( (t2 - t1) - (t1 - t0) ))")
      done
      [[ $(wc -c < "$log") -ge 204 ]] || { echo "lathe generate printed less than 204 bytes" >&2; return 1; }
      record section='"generate"' side='"lathe"' threads="$a" load="$la" wall_s="$WALL" rss_kb="$RSS_KB" \
        tokens_per_s="$(printf '%s\n' "${diffs[@]}" | sort -n | awk '{d[NR]=$1} END{m=d[2]/1e9; if (m<=0) m=1e-3; print 199/m}')" ;;
    gen_torch)
      timed "$tf" env $TORCH_ENV OMP_NUM_THREADS="$a" "$PY" "$HERE/torch_bench.py" generate --threads "$a" --repeat 2 > "$log" 2>&1 || return 1
      record section='"generate"' side='"torch"' threads="$a" load="$la" wall_s="$WALL" rss_kb="$RSS_KB" \
        tokens_per_s="$(tail -1 "$log" | "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_s_median"])')" ;;
  esac
}

jobs=()
for t in $THREADS; do
  [[ " $SECTIONS " == *" prepare "* ]] && jobs+=("prep_lathe $t" "prep_hf $t")
  if [[ " $SECTIONS " == *" train "* ]]; then
    for m in $MODELS; do
      jobs+=("train_lathe $m $t" "train_torch $m $t")
      [[ $COMPILE == 1 && " $COMPILE_MODELS " == *" $m "* ]] && jobs+=("train_torch_compile $m $t")
    done
  fi
  [[ " $SECTIONS " == *" generate "* ]] && jobs+=("gen_lathe $t" "gen_torch $t")
done

for r in $(seq "$ROUNDS"); do
  mapfile -t order < <(printf '%s\n' "${jobs[@]}" | shuf)
  for j in "${order[@]}"; do
    echo "round $r/$ROUNDS: $j (load $(load1))"
    # shellcheck disable=SC2086
    run_job $j || echo "  failed: $j (see $OUT/job.log)"
  done
done

if [[ $PROFILE == 1 ]] && command -v perf > /dev/null; then
  echo "== profile: lathe, small GPT-2, 1 thread"
  rm -rf "$OUT/runs/gpt2_small_t1"
  write_config gpt2_small_prof "$GPT2_SMALL" "$BYTE_DATA" 8 "$STEPS" 1 false
  if OMP_NUM_THREADS=1 perf record -o "$OUT/perf.data" -g -- "$LATHE" train "$OUT/gpt2_small_prof.pbtxt" > /dev/null 2>&1; then
    perf report -i "$OUT/perf.data" --no-children --stdio --percent-limit 1.5 2> /dev/null |
      grep -E '^ +[0-9.]+%' | sed -E 's/ +/ /g' | cut -c1-160 | head -25 > "$OUT/profile_top.txt"
    cat "$OUT/profile_top.txt"
  else
    echo "perf record failed (perf_event_paranoid?); no profile"
  fi
fi

"$PY" "$HERE/summarize.py" "$RESULTS" --versions "$VERSIONS" > "$OUT/summary.md"
cat "$OUT/summary.md"
