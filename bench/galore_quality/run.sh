#!/bin/sh
# GaLore/Fira quality benchmark: same model, data, schedule and token budget, one run per
# optimizer; prints the last validation loss of each. From the repo root:
#   sh bench/galore_quality/run.sh [build/lathe]
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
  $LATHE train $CFG --set run_dir=$OUT/$name "$@" > $OUT/$name.log 2>&1
  end=$(date +%s)
  loss=$(grep '"val_loss"' $OUT/$name/metrics.jsonl | tail -1 | sed 's/.*"val_loss":\([0-9.eE+-]*\).*/\1/')
  echo "$name val_loss=$loss wall_s=$((end - start))"
}
for which in ${RUNS:-adamw galore_exact galore_randomized fira}; do
  case $which in
    adamw) run adamw ;;
    galore_exact) run galore_exact --set optimizer.type=GALORE $GAL ;;
    galore_randomized) run galore_randomized --set optimizer.type=GALORE $GAL --set optimizer.galore.svd=RANDOMIZED ;;
    fira) run fira --set optimizer.type=FIRA $GAL ;;
    adamw_lr*) run $which --set optimizer.lr=${which#adamw_lr} ;;
  esac
done
