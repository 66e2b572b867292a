"""torch.mm at 1 thread on the GEMM shapes lathe's small GPT-2 step issues (bench/gemm_shapes),
process CPU time, best and median of 5 repetitions."""
import statistics, time
import torch
torch.set_num_threads(1)
from shapes import SHAPES
print(torch.__version__)
for ta, tb, M, N, K in SHAPES:
    A = torch.randn(K, M).t() if ta else torch.randn(M, K)
    B = torch.randn(N, K).t() if tb else torch.randn(K, N)
    reps = max(3, int(2e9 / (2 * M * N * K)))
    ts = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(reps):
            torch.mm(A, B)
        ts.append((time.process_time() - t) / reps)
    f = 2 * M * N * K / 1e9
    print(f'torch ta={ta} tb={tb} M={M} N={N} K={K} GFLOP/s best {f / min(ts):.1f} median {f / statistics.median(ts):.1f}')
