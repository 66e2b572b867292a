#!/usr/bin/env python3
"""Summarize an sgemm_log.c log: per (transA, transB, M, N, K) the call count, CPU ms and
GFLOP/s, largest time first; then the totals.  usage: summarize.py LOG [TOP]"""
import collections, sys
calls = collections.defaultdict(lambda: [0, 0.0])
for line in open(sys.argv[1]):
    ta, tb, M, N, K, _beta, us = line.split()
    c = calls[(int(ta), int(tb), int(M), int(N), int(K))]
    c[0] += 1
    c[1] += float(us)
top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
print('| transA | transB | M | N | K | calls | CPU ms | GFLOP/s |\n|---|---|---|---|---|---|---|---|')
for (ta, tb, M, N, K), (n, us) in sorted(calls.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f'| {ta} | {tb} | {M} | {N} | {K} | {n} | {us / 1e3:.1f} | {2 * M * N * K * n / us / 1e3:.1f} |')
flops = sum(2 * M * N * K * n for (_, _, M, N, K), (n, _) in calls.items())
us = sum(v[1] for v in calls.values())
print(f'\n{sum(v[0] for v in calls.values())} calls, {flops / 1e9:.1f} GFLOP, {us / 1e6:.2f} s CPU, {flops / us / 1e3:.1f} GFLOP/s')
