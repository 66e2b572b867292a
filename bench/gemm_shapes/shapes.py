# (transA, transB, M, N, K) of the GEMMs a 1-thread train step of the small GPT-2 (L4 d256,
# batch 8x256) issues (sgemm_log.c), with the per-batch-entry 256-row call it issued before
# the batch fold; openblas_shapes.c reads this file too.
SHAPES = [
    (0, 1, 2048, 256, 256), (0, 1, 2048, 1024, 256), (0, 1, 2048, 256, 1024), (1, 0, 256, 256, 2048),
    (0, 0, 2048, 256, 256), (0, 0, 2048, 256, 1024), (0, 0, 2048, 1024, 256), (1, 0, 1024, 256, 2048),
    (1, 0, 256, 1024, 2048), (0, 1, 256, 256, 256), (0, 1, 64, 64, 64), (0, 0, 64, 64, 64), (1, 0, 64, 64, 64),
]
