#!/bin/sh
# LoRA vs full fine-tuning step time, interleaved rounds at 1 thread (bench/README.md section 11).
# Needs runs/peft_bench/big-hf (made by `PART=speed sh bench/peft_methods/run.sh`). From the repo root:
#   ROUNDS=3 STEPS=6 sh bench/peft_methods/speed_rounds.sh [build/lathe]
# Prints, per round and run, the median step_ms of steps 2.. and the process CPU time (user+sys).
# Per-step CPU time: the difference between a STEPS=6 and a STEPS=2 run's CPU, over 4 (the
# start-up, model load and first step cancel).
# BASE_LATHE=path/to/other/lathe adds, per round, a third run: the same LoRA run with that binary
# (speed_lora_base: a before/after comparison of a change, interleaved with the others).
set -e
LATHE=${1:-build/lathe}
OUT=runs/peft_bench
[ -f $OUT/big-hf/config.json ] || { echo "speed_rounds.sh: $OUT/big-hf missing; run PART=speed run.sh first" >&2; exit 2; }
S="--set model.init_from=$OUT/big-hf --set train.steps=${STEPS:-6} --set train.micro_batch=8 --set train.seq_len=128 --set train.eval_batches=1 --set train.log_interval=1 --set schedule.warmup_steps=2 --set parallel.threads_per_rank=1"
one() {
  name=$1; shift
  bin=$LATHE
  [ "$name" = speed_lora_base ] && bin=$BASE_LATHE
  rm -rf $OUT/$name
  /usr/bin/time -f "%U %S" -o $OUT/$name.time $bin finetune bench/peft_methods/finetune.pbtxt \
      --set run_dir=$OUT/$name $S "$@" > $OUT/$name.log 2>&1
  python3 - $OUT/$name $OUT/$name.time <<'PY'
import json, statistics, sys
rs = [r for r in map(json.loads, open(sys.argv[1] + "/metrics.jsonl")) if "step_ms" in r]
ms = [r["step_ms"] for r in rs if r["step"] >= 2] or [r["step_ms"] for r in rs]
u, s = map(float, open(sys.argv[2]).read().split()[-2:])
print(f"{sys.argv[1].split('/')[-1]}: step_ms median {statistics.median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f}), cpu {u + s:.1f} s")
PY
}
r=1
while [ $r -le ${ROUNDS:-3} ]; do
  one speed_full --set optimizer.lr=1e-4
  one speed_lora --set optimizer.lr=1e-3 --set peft.method=LORA --set peft.r=16 --set peft.lora_alpha=16 \
      --set peft.target_modules=all-linear
  [ -n "$BASE_LATHE" ] && one speed_lora_base --set optimizer.lr=1e-3 --set peft.method=LORA --set peft.r=16 \
      --set peft.lora_alpha=16 --set peft.target_modules=all-linear
  r=$((r + 1))
done
