#!/bin/sh
# Label partitions and local epochs through `lathe federate` end to end (instruction JSONL with
# a category field, data.val_path). usage: partition_e2e.sh LATHE BUILD_DIR dirichlet|by_field
#   dirichlet: Dirichlet(0.5) over `category`, local_epochs 0.05: the logged per-client label
#              counts add up to the JSONL's categories, every client has >= min_client_size,
#              each client's steps are ceil(0.05 n_k / 4), validation ran on the val file.
#   by_field:  BY_FIELD over `category` with 4 clients: each client holds exactly one category,
#              all of it, and trains local_steps steps.
set -u
LATHE=$1; B=$2; MODE=$3
D=$B/fed_part_$MODE; rm -rf "$D"
fail() { echo "FAIL: $*"; exit 1; }
if [ "$MODE" = dirichlet ]; then
  EXTRA="--set federated.partition=DIRICHLET --set federated.local_epochs=0.05 --set federated.min_client_size=40"
else
  EXTRA="--set federated.partition=BY_FIELD"
fi
timeout 100 mpirun --allow-run-as-root --oversubscribe -np 3 "$LATHE" federate tests/federated/data/tiny_fed.pbtxt \
  --set run_dir=$D --set checkpoint.dir=$D/ckpt --set federated.rounds=1 --set federated.client_fraction=1 $EXTRA \
  > $D.log 2>&1 || { cat $D.log; fail "lathe federate"; }
cat $D.log
python3 - "$D/federated.jsonl" tests/federated/data/ops_train.jsonl "$MODE" <<'PY' || fail "log"
import collections, json, math, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
want = collections.Counter(json.loads(l)["category"] for l in open(sys.argv[2]))
mode = sys.argv[3]
part = [e for e in ev if e["event"] == "partition"][0]
assert part["label_field"] == "category", part
names, counts, sizes = part["labels"], part["client_label_counts"], part["client_sizes"]
assert len(counts) == len(sizes) == 4
assert [sum(c) for c in counts] == sizes, (counts, sizes)
per_label = [sum(c[j] for c in counts) for j in range(len(names))]
assert dict(zip(names, per_label)) == dict(want), (names, per_label, want)
clients = {e["client"]: e for e in ev if e["event"] == "client"}
assert sorted(clients) == [0, 1, 2, 3], clients.keys()
for k, e in clients.items():
    assert e["examples"] == sizes[k], (k, e["examples"], sizes[k])
    if mode == "dirichlet":
        assert sizes[k] >= 40, sizes
        assert e["steps"] == math.ceil(0.05 * sizes[k] / 4), (k, e["steps"], sizes[k])
    else:
        assert sum(1 for x in counts[k] if x) == 1, counts[k]
        assert e["steps"] == 3, e
if mode == "by_field":
    owner = [next(j for j, x in enumerate(c) if x) for c in counts]
    assert sorted(owner) == [0, 1, 2, 3], owner
else:
    assert len(set(clients[k]["steps"] for k in clients)) > 1, "local_epochs gave every client the same steps"
rounds = [e for e in ev if e["event"] == "round"]
assert rounds[0]["round"] == 0 and "val_loss" in rounds[0] and "val_loss" in rounds[-1], rounds
print(mode, "ok: sizes", sizes, "steps", [clients[k]["steps"] for k in sorted(clients)])
PY
