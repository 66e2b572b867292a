"""Table of the PEFT benchmark runs: final validation loss, trainable parameters, peak memory
(the allocator's accounting, mem_peak_mib of metrics.jsonl: the largest per-step peak) and the
median step time (steps after the first 5, or the first half of a shorter run). Usage: summarize.py RUN_DIR... (each has
metrics.jsonl and the console log RUN_DIR.log)."""
import json
import re
import statistics
import sys


def summarize(run):
    steps, val, peak = [], None, 0.0
    with open(run + "/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if "step_ms" in r:
                steps.append((r["step"], r["step_ms"]))
                peak = max(peak, r.get("mem_peak_mib", 0.0))
            if r.get("event") == "eval":
                val = r["val_loss"]
    log = open(run + ".log").read()
    m = re.search(r"trainable params: ([\d,]+)", log)
    if m:
        trainable = int(m.group(1).replace(",", ""))
    else:  # full fine-tuning: every parameter
        trainable = int(re.search(r": (\d+) parameters", log).group(1))
    skip = min(5, len(steps) // 2)  # warm-up steps (allocator, thread pools) left out
    ms = statistics.median([t for s, t in steps[skip:]])
    return val, trainable, peak, ms


def main():
    print("| method | trainable params | final val loss | peak memory (MiB) | step time (ms) |")
    print("|---|---:|---:|---:|---:|")
    for run in sys.argv[1:]:
        val, n, peak, ms = summarize(run)
        name = run.rstrip("/").split("/")[-1]
        print(f"| {name} | {n:,} | {val:.4f} | {peak:.1f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
