#!/bin/sh
# Optimizer quality benchmark: same model, data, schedule and token budget, one run per
# optimizer; prints the last validation loss of each. From the repo root:
#   sh bench/galore_quality/run.sh [build/lathe]
#   RUNS="sgd_sai_lr1e-3 adamw8bit" THREADS=1 sh bench/galore_quality/run.sh build/lathe
# RUNS picks the runs (default: all of the table in bench/README.md section 9(b)); THREADS sets
# parallel.threads_per_rank (default 0: all cores).
set -e
LATHE=${1:-build/lathe}
OUT=runs/galore_quality
CFG=bench/galore_quality/base.pbtxt
mkdir -p $OUT
if [ ! -f $OUT/tokenizer.json ]; then
  $LATHE tokenizer train --input ../shared/data/tinyshakespeare.txt --vocab-size 1024 \
      --special "<|endoftext|>" --out $OUT/tokenizer.json
fi
if [ ! -f $OUT/data/index.json ]; then
  $LATHE prepare ../shared/data/tinyshakespeare.txt --out $OUT/data \
      --tokenizer $OUT/tokenizer.json --split blank_lines --val-fraction 0.05
fi
GAL="--set optimizer.lr=0.01 --set optimizer.galore.rank=32 --set optimizer.galore.update_proj_gap=50 --set optimizer.galore.scale=0.25"
run() {
  name=$1; shift
  start=$(date +%s)
  $LATHE train $CFG --set run_dir=$OUT/$name --set parallel.threads_per_rank=${THREADS:-0} "$@" \
      > $OUT/$name.log 2>&1
  end=$(date +%s)
  loss=$(grep '"val_loss"' $OUT/$name/metrics.jsonl | tail -1 | sed 's/.*"val_loss":\([0-9.eE+-]*\).*/\1/')
  echo "$name val_loss=$loss wall_s=$((end - start))"
}
ALL="adamw adamw8bit sgd_sai_lr1e-3 sgd_sai_lr3e-3 sgd_sai_lr1e-2 galore_exact galore_randomized galore8bit galore_natural fira adamw_lr2.5e-3 adamw8bit_lr2.5e-3"
for which in ${RUNS:-$ALL}; do
  case $which in
    adamw) run adamw ;;
    galore_exact) run galore_exact --set optimizer.type=GALORE $GAL ;;
    galore_randomized) run galore_randomized --set optimizer.type=GALORE $GAL --set optimizer.galore.svd=RANDOMIZED ;;
    galore_randomized_q*) run $which --set optimizer.type=GALORE $GAL --set optimizer.galore.svd=RANDOMIZED \
        --set optimizer.galore.svd_power_iters=${which#galore_randomized_q} ;;
    fira) run fira --set optimizer.type=FIRA $GAL ;;
    galore_natural) run galore_natural --set optimizer.type=GALORE $GAL --set optimizer.galore.natural=true ;;
    galore8bit) run galore8bit --set optimizer.type=GALORE $GAL --set optimizer.state_bits=8 ;;
    adamw8bit) run adamw8bit --set optimizer.state_bits=8 ;;
    adamw8bit_lr*) run $which --set optimizer.state_bits=8 --set optimizer.lr=${which#adamw8bit_lr} ;;
    adamw_lr*) run $which --set optimizer.lr=${which#adamw_lr} ;;
    # SGD-SaI's per-tensor step is lr * gsnr with gsnr ~ sqrt(numel) (128-362 on this model),
    # so its lr is far below AdamW's; momentum 0.9 and no normalisation (the released code).
    sgd_sai_lr*) run $which --set optimizer.type=SGD_SAI --set optimizer.lr=${which#sgd_sai_lr} ;;
    *) echo "unknown run '$which'" >&2; exit 2 ;;
  esac
done
