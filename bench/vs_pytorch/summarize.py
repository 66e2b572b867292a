"""Turns bench/vs_pytorch.sh's results.jsonl into markdown tables: per configuration the
median over the rounds, the range (min-max) and the load average seen at the runs' starts."""
import argparse
import collections
import json
import statistics


def fmt(xs, digits=0):
    if not xs:
        return "–"
    m = statistics.median(xs)
    f = f"{{:.{digits}f}}"
    return f"{f.format(m)} ({f.format(min(xs))}–{f.format(max(xs))})" if len(xs) > 1 else f.format(m)


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--versions", default="")
    a = ap.parse_args()
    rows = []
    for l in open(a.results):
        try:
            rows.append(json.loads(l))
        except ValueError:  # a failed run's half-written line
            pass
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["section"], r["side"], r.get("model", ""), r["threads"])].append(r)
    loads = [r["load"] for r in rows]
    rounds = max((len(v) for v in by.values()), default=0)
    print(f"{a.versions}; {rounds} interleaved rounds; load average (1 min) at the runs' starts "
          f"{min(loads):.1f}–{max(loads):.1f}" if loads else "no results")
    print("\nValues: median over the rounds (min–max).\n")

    models = [m for m in ("gpt2_small", "llama_small", "gpt2_50k") if any(k[2] == m for k in by)]
    if models:
        print("| model | threads | lathe tok/s | PyTorch eager tok/s | torch.compile tok/s | lathe / eager | "
              "peak RSS lathe / eager MiB | load |")
        print("|---|---|---|---|---|---|---|---|")
        for m in models:
            for t in sorted({k[3] for k in by if k[2] == m}):
                get = lambda side: [r["rate"]["median"] for r in by.get(("train", side, m, t), [])]
                rss = lambda side: [r["rss_kb"] / 1024 for r in by.get(("train", side, m, t), [])]
                la, te, tc = get("lathe"), get("torch"), get("torch_compile")
                ratio = f"{med(la) / med(te):.2f}" if la and te else "–"
                ld = [r["load"] for s in ("lathe", "torch", "torch_compile") for r in by.get(("train", s, m, t), [])]
                print(f"| {m} | {t} | {fmt(la)} | {fmt(te)} | {fmt(tc)} | {ratio} | "
                      f"{fmt(rss('lathe'))} / {fmt(rss('torch'))} | {min(ld):.1f}–{max(ld):.1f} |")
    for section, unit, key, other in (("generate", "tokens/s", "tokens_per_s", "torch"),
                                      ("prepare", "MB/s end to end", "mb_per_s", "hf_tokenizers")):
        ts = sorted({k[3] for k in by if k[0] == section})
        if not ts:
            continue
        print(f"\n| {section} | threads | lathe {unit} | {other} {unit} | lathe / {other} | "
              f"peak RSS lathe / {other} MiB | load |")
        print("|---|---|---|---|---|---|---|")
        for t in ts:
            la = [r[key] for r in by.get((section, "lathe", "", t), [])]
            ot = [r[key] for r in by.get((section, other, "", t), [])]
            rl = [r["rss_kb"] / 1024 for r in by.get((section, "lathe", "", t), [])]
            ro = [r["rss_kb"] / 1024 for r in by.get((section, other, "", t), [])]
            ld = [r["load"] for s in ("lathe", other) for r in by.get((section, s, "", t), [])]
            ratio = f"{med(la) / med(ot):.2f}" if la and ot else "–"
            d = 1 if section == "prepare" else 0
            print(f"| {section} | {t} | {fmt(la, d)} | {fmt(ot, d)} | {ratio} | {fmt(rl)} / {fmt(ro)} | "
                  f"{min(ld):.1f}–{max(ld):.1f} |")


if __name__ == "__main__":
    main()
