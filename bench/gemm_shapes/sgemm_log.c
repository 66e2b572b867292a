// LD_PRELOAD logger of every cblas_sgemm call a program makes: one line per call,
// "transA transB M N K beta thread_cpu_us", appended to $SGEMM_LOG (default sgemm_log.txt).
// Thread CPU time, not wall time, so the figures hold up on a loaded machine at 1 thread.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
static FILE* log_file;

static double thread_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                 int ldb, float beta, float* C, int ldc) {
  static sgemm_fn next;
  if (!next) next = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  if (!log_file) {
    const char* path = getenv("SGEMM_LOG");
    log_file = fopen(path ? path : "sgemm_log.txt", "w");
  }
  const double t0 = thread_us();
  next(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const double t1 = thread_us();
  // 112 = CblasTrans; the row-major flags as lathe passes them
  if (log_file) fprintf(log_file, "%d %d %d %d %d %g %.1f\n", ta == 112, tb == 112, M, N, K, beta, t1 - t0);
}
