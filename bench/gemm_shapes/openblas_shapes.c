// cblas_sgemm at 1 thread on shapes given as "ta tb M N K" lines on stdin (run.sh feeds
// shapes.py's list), process CPU time, best and median of 5 repetitions.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(void) {
  openblas_set_num_threads(1);
  int ta, tb, M, N, K;
  while (scanf("%d %d %d %d %d", &ta, &tb, &M, &N, &K) == 5) {
    float* A = malloc(sizeof(float) * M * K);
    float* B = malloc(sizeof(float) * K * N);
    float* C = malloc(sizeof(float) * M * N);
    for (long i = 0; i < (long)M * K; ++i) A[i] = rand() / (float)RAND_MAX - 0.5f;
    for (long i = 0; i < (long)K * N; ++i) B[i] = rand() / (float)RAND_MAX - 0.5f;
    int reps = (int)(2e9 / (2.0 * M * N * K));
    if (reps < 3) reps = 3;
    double t[5];
    for (int r = 0; r < 5; ++r) {
      double t0 = cpu_s();
      for (int i = 0; i < reps; ++i)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A,
                    ta ? M : K, B, tb ? K : N, 0.0f, C, N);
      t[r] = (cpu_s() - t0) / reps;
    }
    qsort(t, 5, sizeof t[0], cmp);
    const double f = 2.0 * M * N * K / 1e9;
    printf("openblas ta=%d tb=%d M=%d N=%d K=%d GFLOP/s best %.1f median %.1f\n", ta, tb, M, N, K, f / t[0], f / t[2]);
    free(A);
    free(B);
    free(C);
  }
  return 0;
}
