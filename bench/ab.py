#!/usr/bin/env python3
"""Interleaved A/B comparison of Google Benchmark programs on a shared machine.

usage: bench/ab.py OUTPREFIX ROUNDS FILTER NAME=BINARY[:ENV=V,ENV=V] ...

Each round runs every configuration once, in a fresh random order, with OMP_NUM_THREADS=2
(plus the configuration's own environment), so slow phases of the machine's load hit all
configurations alike. Prints, per benchmark and configuration, the median and the best real
time (ms) over the rounds; OUTPREFIX.json keeps every time, OUTPREFIX.log the load average
at the start of each run, OUTPREFIX.<name>.<round>.json the raw benchmark output.
AB_TIME=cpu_time compares Google Benchmark's cpu_time instead of real_time (at 1 thread the
process's CPU time, which a loaded machine disturbs least); the worst round is printed too."""
import json, os, random, subprocess, sys, statistics, time
out, rounds, filt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfgs = []
for a in sys.argv[4:]:
    name, rest = a.split('=', 1)
    binary, _, envs = rest.partition(':')
    env = dict(e.split('=', 1) for e in envs.split(',') if e)
    cfgs.append((name, binary, env))
res = {}
log = open(out + '.log', 'w')
for r in range(rounds):
    order = cfgs[:]
    random.shuffle(order)
    for name, binary, env in order:
        e = {**os.environ, 'OMP_NUM_THREADS': '2', **env}  # the configuration's own values win
        j = f'{out}.{name}.{r}.json'
        load = os.getloadavg()[0]
        subprocess.run([binary, f'--benchmark_filter={filt}', f'--benchmark_out={j}', '--benchmark_out_format=json'],
                       env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        for b in json.load(open(j))['benchmarks']:
            t = b[os.environ.get('AB_TIME', 'real_time')] * {'ns': 1e-6, 'us': 1e-3, 'ms': 1, 's': 1e3}[b['time_unit']]
            res.setdefault(b['name'], {}).setdefault(name, []).append(t)
        print(f'round {r} {name} load {load:.1f}', file=log, flush=True)
json.dump(res, open(out + '.json', 'w'), indent=1)
names = [c[0] for c in cfgs]
print('benchmark | ' + ' | '.join(f'{n} med (best-worst) ms' for n in names))
for b, d in res.items():
    print(b + ' | ' + ' | '.join(f'{statistics.median(d[n]):.2f} ({min(d[n]):.2f}-{max(d[n]):.2f})' if n in d else '-'
                                 for n in names))
