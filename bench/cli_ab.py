#!/usr/bin/env python3
"""Interleaved A/B of `lathe train` binaries on the same configs (a shared machine).

usage: bench/cli_ab.py OUTDIR ROUNDS CONFIG.pbtxt[,CONFIG.pbtxt...] NAME=LATHE_BINARY ...

Each round runs every (binary, config) pair once in a fresh random order, with
OMP_NUM_THREADS from the environment (default 1), under /usr/bin/time. Per pair it prints
the median and range over the rounds of: tokens/s (median of the run's metrics.jsonl steps
after the first two), the process's CPU time (user + sys, set-up included, s), and peak RSS
(MiB); and the first config's losses must agree between binaries (printed when they do not).
OUTDIR/log.txt keeps the load average at each run's start."""
import json, os, random, statistics, subprocess, sys, tempfile
outdir, rounds, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(',')
bins = [a.split('=', 1) for a in sys.argv[4:]]
os.makedirs(outdir, exist_ok=True)
log = open(os.path.join(outdir, 'log.txt'), 'w')
res, losses = {}, {}
for r in range(rounds):
    pairs = [(n, b, c) for n, b in bins for c in configs]
    random.shuffle(pairs)
    for name, binary, cfg in pairs:
        tag = os.path.splitext(os.path.basename(cfg))[0]
        run_dir = tempfile.mkdtemp(dir=outdir)
        tf = os.path.join(run_dir, 'time.txt')
        load = os.getloadavg()[0]
        env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
        subprocess.run(['/usr/bin/time', '-f', '%U %S %M', '-o', tf, binary, 'train', cfg, '--set',
                        f'run_dir={run_dir}/run'], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        u, s, m = open(tf).read().split()[-3:]
        rows = [json.loads(l) for l in open(os.path.join(run_dir, 'run', 'metrics.jsonl'))]
        steps = [x for x in rows if 'tokens_per_s' in x]
        tps = statistics.median(x['tokens_per_s'] for x in steps[2:])
        res.setdefault((tag, name), []).append((tps, float(u) + float(s), int(m) / 1024))
        losses.setdefault(tag, {})[name] = [x['loss'] for x in steps]
        print(f'round {r} {name} {tag} load {load:.1f}', file=log, flush=True)
def fmt(v, f):
    return f'{f(statistics.median(v))} ({f(min(v))}-{f(max(v))})'
print('config | binary | tokens/s | CPU s | peak RSS MiB')
for (tag, name), v in sorted(res.items()):
    print(f'{tag} | {name} | ' + ' | '.join(fmt([x[i] for x in v], f) for i, f in
                                           enumerate([lambda a: f'{a:.0f}', lambda a: f'{a:.2f}', lambda a: f'{a:.0f}'])))
for tag, d in losses.items():
    ref = next(iter(d.values()))
    for name, l in d.items():
        if l != ref: print(f'{tag}: losses of {name} differ from the first binary\'s')
