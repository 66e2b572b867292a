#!/bin/sh
# PEFT benchmark (bench/README.md, "PEFT methods at matched budgets"). From the repo root:
#   sh bench/peft_methods/run.sh [build/lathe]            # quality table (6 methods)
#   PART=speed sh bench/peft_methods/run.sh [build/lathe] # LoRA vs full fine-tuning, bigger model
# 1. a small GPT-2 (4 layers, d 128, byte tokenizer) pretrained on Tiny Shakespeare, exported;
# 2. a synthetic instruction set (make_instructions.py, 4000 records, 10% validation);
# 3. the same fine-tuning run (150 steps of 16 x 96 tokens, cosine schedule) with full
#    fine-tuning and each method at a matched budget of about 37k trainable parameters
#    (LoRA r 4 on all linears = 36,864): LoRA r 4, LoRA-SB r 39 (24 x 39^2 = 36,504), SoRA r 4
#    (+ gates), NOLA r 8 with 768 + 768 coefficients per layer, SpIEL with 36,864 entries.
set -e
LATHE=${1:-build/lathe}
OUT=runs/peft_bench
T=${THREADS:-2}
mkdir -p $OUT
[ -f $OUT/instructions.jsonl ] || python3 bench/peft_methods/make_instructions.py $OUT/instructions.jsonl 4000 0
if [ ! -f $OUT/base-hf/config.json ]; then
  $LATHE train bench/peft_methods/base.pbtxt --set parallel.threads_per_rank=$T > $OUT/base.log 2>&1
  $LATHE export --checkpoint $OUT/base --out $OUT/base-hf > /dev/null
fi
ft() {
  name=$1; shift
  rm -rf $OUT/$name
  $LATHE finetune bench/peft_methods/finetune.pbtxt --set run_dir=$OUT/$name \
      --set parallel.threads_per_rank=$T "$@" > $OUT/$name.log 2>&1
  echo "$name done"
}
if [ "${PART:-quality}" = quality ]; then
  for m in ${RUNS:-full lora lora_sb sora nola spiel}; do
    case $m in
      full) ft full --set optimizer.lr=5e-4 ;;
      lora) ft lora --set optimizer.lr=3e-3 --set peft.method=LORA --set peft.r=4 --set peft.lora_alpha=8 \
                --set peft.target_modules=all-linear ;;
      lora_sb) ft lora_sb --set optimizer.lr=3e-3 --set peft.method=LORA_SB --set peft.r=39 \
                --set peft.target_modules=all-linear --set peft.sb_init_batches=8 ;;
      sora) ft sora --set optimizer.lr=3e-3 --set peft.method=SORA --set peft.r=4 --set peft.lora_alpha=8 \
                --set peft.target_modules=all-linear --set peft.sora_lambda=0.01 ;;
      nola) ft nola --set optimizer.lr=5e-3 --set peft.method=NOLA --set peft.r=8 --set peft.lora_alpha=8 \
                --set peft.target_modules=all-linear --set peft.nola_num_basis_a=768 \
                --set peft.nola_num_basis_b=768 --set peft.nola_chunk=64 ;;
      spiel) ft spiel --set optimizer.lr=3e-3 --set peft.method=SPIEL --set peft.spiel_budget=36864 ;;
    esac
  done
  python3 bench/peft_methods/summarize.py $(for m in ${RUNS:-full lora lora_sb sora nola spiel}; do echo $OUT/$m; done)
else
  # Step time and peak memory on a bigger GPT-2 (8 layers, d 512, 25.4M parameters; random
  # weights: speed does not depend on them): full fine-tuning vs LoRA r 16 on all linears.
  if [ ! -f $OUT/big-hf/config.json ]; then
    $LATHE train bench/peft_methods/base.pbtxt --set run_dir=$OUT/big --set model.n_layer=8 --set model.d_model=512 \
        --set model.n_head=8 --set train.steps=1 --set schedule.warmup_steps=0 --set train.eval_interval=0 \
        --set train.eval_batches=1 > $OUT/big.log 2>&1
    $LATHE export --checkpoint $OUT/big --out $OUT/big-hf > /dev/null
  fi
  S="--set model.init_from=$OUT/big-hf --set train.steps=${STEPS:-12} --set train.micro_batch=8 --set train.seq_len=128 --set train.eval_batches=1 --set train.log_interval=1 --set schedule.warmup_steps=2"
  ft big_full $S --set optimizer.lr=1e-4
  ft big_lora $S --set optimizer.lr=1e-3 --set peft.method=LORA --set peft.r=16 --set peft.lora_alpha=16 \
      --set peft.target_modules=all-linear
  python3 bench/peft_methods/summarize.py $OUT/big_full $OUT/big_lora
fi
