// Memory-bound kernels of lathe (elementwise, broadcast, reductions, softmax, layer norm)
// on 16M-float tensors (64 MiB each, far beyond the caches), against copy baselines
// measured in the same program, so "near memory bandwidth" is a ratio of two numbers
// taken under the same conditions.
//
// bytes_per_second counts the minimum traffic of each op: every input element read once
// and every output element written once (4 bytes each). Baselines:
//   copy/memcpy         one-thread std::memcpy into a preallocated buffer;
//   copy/omp            STREAM "copy", OpenMP loop over preallocated buffers;
//   copy/omp_fresh      the same loop into a buffer allocated (and freed) every iteration,
//                       which is what an op that returns a new tensor must do (page faults
//                       on first touch of fresh pages included);
//   triad/omp           STREAM-like c = a + s*b over preallocated buffers (3 streams).
// lathe ops return a new contiguous tensor per call, so compare them with copy/omp_fresh;
// the in-place add_ compares with triad/omp.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace {

using lathe::Tensor;
namespace k = lathe::kernels;

constexpr int64_t kRows = 4096, kCols = 4096;  // 16M floats
constexpr int64_t kN = kRows * kCols;
constexpr int64_t kF = sizeof(float);

Tensor big(uint64_t seed, lathe::Shape shape = {kRows, kCols}) {
  lathe::Generator gen(seed);
  return Tensor::randn(shape, gen);
}

float* alloc_floats(int64_t n) {
  return static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(n * kF + 63) / 64 * 64));
}

// Best repetition: on a shared machine interference only ever adds time.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

void finish(benchmark::State& st, int64_t bytes_per_iter) {
  st.SetBytesProcessed(st.iterations() * bytes_per_iter);
  st.SetItemsProcessed(st.iterations() * kN);
}

// ---- baselines -------------------------------------------------------------------------

void omp_copy(float* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

void BM_copy_memcpy(benchmark::State& st) {
  Tensor x = big(1);
  float* dst = alloc_floats(kN);
  std::memset(dst, 0, kN * kF);
  for (auto _ : st) {
    std::memcpy(dst, x.data<float>(), kN * kF);
    benchmark::ClobberMemory();
  }
  std::free(dst);
  finish(st, 2 * kN * kF);
}

void BM_copy_omp(benchmark::State& st) {
  Tensor x = big(1);
  float* dst = alloc_floats(kN);
  omp_copy(dst, x.data<float>(), kN);  // touch the pages (same thread placement as the loop)
  for (auto _ : st) {
    omp_copy(dst, x.data<float>(), kN);
    benchmark::ClobberMemory();
  }
  std::free(dst);
  finish(st, 2 * kN * kF);
}

void BM_copy_omp_fresh(benchmark::State& st) {
  Tensor x = big(1);
  for (auto _ : st) {
    float* dst = alloc_floats(kN);
    omp_copy(dst, x.data<float>(), kN);
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
    std::free(dst);
  }
  finish(st, 2 * kN * kF);
}

void BM_triad_omp(benchmark::State& st) {
  Tensor a = big(1), b = big(2);
  float* c = alloc_floats(kN);
  omp_copy(c, a.data<float>(), kN);
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  for (auto _ : st) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kN; ++i) c[i] = ap[i] + 0.5f * bp[i];
    benchmark::ClobberMemory();
  }
  std::free(c);
  finish(st, 3 * kN * kF);
}

void BM_lathe_clone(benchmark::State& st) {
  Tensor x = big(1);
  for (auto _ : st) {
    Tensor y = x.clone();
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, 2 * kN * kF);
}

// ---- lathe ops -----------------------------------------------------------------------

void BM_unary(benchmark::State& st, k::UnaryOp op) {
  Tensor x = big(1);
  for (auto _ : st) {
    Tensor y = k::unary(op, x);
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, 2 * kN * kF);
}

void BM_add_same_shape(benchmark::State& st) {
  Tensor a = big(1), b = big(2);
  for (auto _ : st) {
    Tensor y = k::binary(k::BinaryOp::add, a, b);
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, 3 * kN * kF);
}

// [4096, 4096] + [4096] (a bias over the last axis, stride 0 over rows)
void BM_add_broadcast_row(benchmark::State& st) {
  Tensor a = big(1), b = big(2, {kCols});
  for (auto _ : st) {
    Tensor y = k::binary(k::BinaryOp::add, a, b);
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, 2 * kN * kF + kCols * kF);
}

// [4096, 4096] + [4096, 1] (stride 0 along the innermost axis)
void BM_add_broadcast_col(benchmark::State& st) {
  Tensor a = big(1), b = big(2, {kRows, 1});
  for (auto _ : st) {
    Tensor y = k::binary(k::BinaryOp::add, a, b);
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, 2 * kN * kF + kRows * kF);
}

// In place y += x (gradient accumulation): reads y and x, writes y; no allocation.
void BM_add_inplace(benchmark::State& st) {
  Tensor y = big(1), x = big(2);
  for (auto _ : st) {
    k::add_(y, x, 1e-3);
    benchmark::ClobberMemory();
  }
  finish(st, 3 * kN * kF);
}

void BM_sum_last_axis(benchmark::State& st) {
  Tensor x = big(1);
  for (auto _ : st) {
    Tensor y = k::reduce(k::ReduceOp::sum, x, {-1});
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, kN * kF + kRows * kF);
}

void BM_sum_all(benchmark::State& st) {
  Tensor x = big(1);
  for (auto _ : st) {
    Tensor y = k::reduce(k::ReduceOp::sum, x, {});
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, kN * kF);
}

void BM_softmax_last_axis(benchmark::State& st) {
  Tensor x = big(1);
  for (auto _ : st) {
    Tensor y = k::softmax(x, -1);
    benchmark::DoNotOptimize(y.raw_data());
  }
  finish(st, 2 * kN * kF);
}

// [16384, 1024] rows (a transformer's B*T x d shape), affine weight and bias
void BM_layer_norm(benchmark::State& st) {
  const int64_t rows = kN / 1024, cols = 1024;
  Tensor x = big(1, {rows, cols}), w = big(2, {cols}), b = big(3, {cols});
  for (auto _ : st) {
    k::NormOut o = k::layer_norm(x, w, b, 1e-5);
    benchmark::DoNotOptimize(o.y.raw_data());
  }
  finish(st, 2 * kN * kF + 2 * rows * kF);
}

}  // namespace

#define LATHE_BW(fn, name) \
  BENCHMARK(fn)->Name(name)->UseRealTime()->ComputeStatistics("min", min_of)->Unit(benchmark::kMillisecond)
LATHE_BW(BM_copy_memcpy, "baseline/copy_memcpy");
LATHE_BW(BM_copy_omp, "baseline/copy_omp");
LATHE_BW(BM_copy_omp_fresh, "baseline/copy_omp_fresh");
LATHE_BW(BM_triad_omp, "baseline/triad_omp");
LATHE_BW(BM_lathe_clone, "lathe/clone");
BENCHMARK_CAPTURE(BM_unary, exp, k::UnaryOp::exp)
    ->Name("lathe/exp")
    ->UseRealTime()
    ->ComputeStatistics("min", min_of)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_unary, gelu_tanh, k::UnaryOp::gelu_tanh)
    ->Name("lathe/gelu_tanh")
    ->UseRealTime()
    ->ComputeStatistics("min", min_of)
    ->Unit(benchmark::kMillisecond);
LATHE_BW(BM_add_same_shape, "lathe/add_same_shape");
LATHE_BW(BM_add_broadcast_row, "lathe/add_broadcast_row");
LATHE_BW(BM_add_broadcast_col, "lathe/add_broadcast_col");
LATHE_BW(BM_add_inplace, "lathe/add_inplace");
LATHE_BW(BM_sum_last_axis, "lathe/sum_last_axis");
LATHE_BW(BM_sum_all, "lathe/sum_all");
LATHE_BW(BM_softmax_last_axis, "lathe/softmax_last_axis");
LATHE_BW(BM_layer_norm, "lathe/layer_norm");

BENCHMARK_MAIN();
