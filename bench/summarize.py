#!/usr/bin/env python3
"""Turns Google Benchmark JSON (--benchmark_out=... --benchmark_out_format=json, run with
--benchmark_repetitions=N --benchmark_report_aggregates_only=true) into the Markdown tables
of bench/README.md. Rates are recomputed from the median and from the best (min) real time,
so both columns come from the same definition of work per iteration.

usage: bench/summarize.py matmul|elementwise|block FILE.json
"""
import json
import sys


def load(path):
    with open(path) as f:
        doc = json.load(f)
    runs = {}
    for b in doc["benchmarks"]:
        agg = b.get("aggregate_name")
        if agg not in ("median", "min"):
            continue
        name = b["run_name"].replace("/real_time", "")
        runs.setdefault(name, {})[agg] = b
    for r in runs.values():  # files from runs without the "min" statistic
        r.setdefault("min", r["median"])
    # registration order (random interleaving shuffles the file's order)
    runs = dict(sorted(runs.items(), key=lambda kv: kv[1]["median"].get("family_index", 0)))
    return doc["context"], runs


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
    return b["real_time"] * scale


def per_iter(b, rate_key):
    """Work per iteration (FLOPs, bytes, tokens) from a rate counter and the time."""
    return b[rate_key] * ms(b) / 1e3


def matmul(runs):
    cases = []
    for name in runs:
        kind, case = name.split("/", 1)
        if case not in cases:
            cases.append(case)
    print("| shape | lathe median | sgemm median | sgemm+alloc median | lathe best | sgemm best "
          "| sgemm+alloc best | lathe/sgemm (best) | lathe/sgemm+alloc (best) | lathe extra bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        row = [case]
        g = {}
        for kind in ("lathe", "sgemm", "sgemm_alloc"):
            r = runs.get(f"{kind}/{case}")
            if r is None:
                g[kind] = None
                continue
            flops = per_iter(r["median"], "FLOP/s")
            g[kind] = (flops / ms(r["median"]) / 1e6, flops / ms(r["min"]) / 1e6)
        for i in (0, 1):
            for kind in ("lathe", "sgemm", "sgemm_alloc"):
                row.append(f"{g[kind][i]:.1f}" if g[kind] else "-")
        row.append(f"{g['lathe'][1] / g['sgemm'][1]:.3f}")
        row.append(f"{g['lathe'][1] / g['sgemm_alloc'][1]:.3f}")
        row.append(f"{runs[f'lathe/{case}']['median'].get('extra_bytes', 0):.0f}")
        print("| " + " | ".join(row) + " |")
    print("\nGFLOP/s = 2*M*N*K*batch / real time; best = fastest of the repetitions.")


def elementwise(runs):
    base = runs.get("baseline/copy_omp_fresh")
    base_pre = runs.get("baseline/copy_omp")
    print("| benchmark | median ms | best ms | GB/s (median) | GB/s (best) | best vs copy_omp_fresh "
          "| best vs copy_omp |")
    print("|---|---|---|---|---|---|---|")
    bw = {}
    for name, r in runs.items():
        nbytes = per_iter(r["median"], "bytes_per_second")
        bw[name] = (nbytes / ms(r["median"]) / 1e6, nbytes / ms(r["min"]) / 1e6)
    for name, r in runs.items():
        rel = f"{bw[name][1] / bw['baseline/copy_omp_fresh'][1]:.2f}" if base else "-"
        rel2 = f"{bw[name][1] / bw['baseline/copy_omp'][1]:.2f}" if base_pre else "-"
        print(f"| {name} | {ms(r['median']):.2f} | {ms(r['min']):.2f} | {bw[name][0]:.1f} | {bw[name][1]:.1f} "
              f"| {rel} | {rel2} |")
    print("\nGB/s = minimum bytes moved (inputs read once, output written once) / real time, 1 GB = 1e9 B.")


def block(runs):
    print("| benchmark | median ms/iter | best ms/iter | tokens/s (median) | tokens/s (best) "
          "| GFLOP/s (median) | GFLOP/s (best) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        tok = per_iter(r["median"], "tokens/s")
        fl = per_iter(r["median"], "FLOP/s")
        print(f"| {name} | {ms(r['median']):.1f} | {ms(r['min']):.1f} | {tok / ms(r['median']) * 1e3:.0f} "
              f"| {tok / ms(r['min']) * 1e3:.0f} | {fl / ms(r['median']) / 1e6:.1f} | {fl / ms(r['min']) / 1e6:.1f} |")
    for name, r in runs.items():
        m = r["median"]
        if "peak_total_MiB" in m:
            print(f"\nMemory over one steady-state step of {name} (lathe::memory_stats(), peaks in MiB):\n")
            print("| parameters | gradients | optimizer state | activations | other | total peak | params (count) |")
            print("|---|---|---|---|---|---|---|")
            print(f"| {m['peak_param_MiB']:.1f} | {m['peak_grad_MiB']:.1f} | {m['peak_optim_MiB']:.1f} "
                  f"| {m['peak_act_MiB']:.1f} | {m['peak_other_MiB']:.2f} | {m['peak_total_MiB']:.1f} "
                  f"| {m['params']:.0f} |")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("matmul", "elementwise", "block"):
        sys.exit(__doc__)
    ctx, runs = load(sys.argv[2])
    print(f"<!-- {ctx.get('date')} load_avg={ctx.get('load_avg')} -->")
    {"matmul": matmul, "elementwise": elementwise, "block": block}[sys.argv[1]](runs)


if __name__ == "__main__":
    main()
