"""Summarises bench/federated/run.sh's runs: one markdown row per (clients, strategy) from
each run's federated.jsonl (the last round's val_loss; bytes and seconds averaged over rounds;
upload per client = bytes_up / clients aggregated)."""
import json
import os
import sys


def rows(root):
    for clients in (4, 20):
        for strategy in ("FEDAVG", "FFA_LORA", "FLORA", "FED_SB"):
            path = os.path.join(root, f"{strategy}_{clients}", "federated.jsonl")
            rounds = [r for r in map(json.loads, open(path)) if r.get("event") == "round"]
            initial = rounds[0]["val_loss"] if rounds and rounds[0]["round"] == 0 else None
            rounds = [r for r in rounds if r["round"] > 0]
            n = len(rounds)
            up = sum(r["bytes_up"] for r in rounds) / n
            down = sum(r["bytes_down"] for r in rounds) / n
            per_client = sum(r["bytes_up"] / max(1, len(r["aggregated"])) for r in rounds) / n
            secs = sum(r["seconds"] for r in rounds) / n
            yield clients, strategy, n, initial, rounds[-1].get("val_loss"), up, per_client, down, secs


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "runs/bench_fed"
    print("| clients | strategy | rounds | val loss (start -> end) | bytes up / round | up / client | bytes down / round | s / round |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c, s, n, v0, v, up, pc, down, secs in rows(root):
        print(f"| {c} | {s} | {n} | {v0:.4f} -> {v:.4f} | {up:,.0f} | {pc:,.0f} | {down:,.0f} | {secs:.3f} |")


if __name__ == "__main__":
    main()
