#!/bin/sh
# FedAvg, FFA-LoRA, FLoRA and Fed-SB on the same model and non-IID data, with 4 and 20
# clients: validation loss after the last round, bytes up/down per round, seconds per round.
#   sh bench/federated/run.sh [NP]      (from the repository root, after building build/lathe)
# NP processes (default 3: the server and two client ranks). Prints a markdown table.
set -e
NP=${1:-3}
OUT=${OUT:-runs/bench_fed}
mkdir -p "$OUT"
[ -d runs/bench_fed_base/checkpoints ] || build/lathe train bench/federated/base.pbtxt > "$OUT/base.log" 2>&1
MPIRUN="mpirun --allow-run-as-root --oversubscribe -np $NP"
for clients in 4 20; do
  for strategy in FEDAVG FFA_LORA FLORA FED_SB; do
    extra=""
    case $strategy in
      FLORA) extra="--set federated.client_ranks=8 --set federated.client_ranks=4 --set federated.client_ranks=2" ;;
      FED_SB) extra="--set peft.method=LORA_SB --set peft.lora_alpha=8 --set peft.sb_init_batches=8" ;;
    esac
    $MPIRUN build/lathe federate bench/federated/bench.pbtxt --set run_dir=$OUT/${strategy}_$clients \
      --set federated.strategy=$strategy --set federated.clients=$clients $extra > $OUT/${strategy}_$clients.log 2>&1 ||
      { cat $OUT/${strategy}_$clients.log; exit 1; }
  done
done
python3 bench/federated/table.py $OUT
