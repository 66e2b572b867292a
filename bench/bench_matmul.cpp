// lathe::kernels::matmul against cblas_sgemm called directly on the same buffers.
//
// The question this answers: how much does lathe's matmul (shape checks, output allocation,
// backend dispatch, stride analysis) cost on top of the BLAS call it ends in? The target
// (issue "Foundation") is lathe within 10% of direct OpenBLAS. Three variants per shape:
//   lathe/...          kernels::matmul, which allocates its output on every call;
//   sgemm/...          cblas_sgemm into a preallocated output (the best case);
//   sgemm_alloc/...    cblas_sgemm into a freshly allocated 64-byte aligned output each call,
//                      i.e. the same work lathe must do (first touch of new pages included).
// The FLOP/s counter is 2*M*N*K*batch per call. `extra_bytes` is what lathe allocated
// beyond its output during one call (0 = no copy of an input was made).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"

extern "C" int openblas_get_num_threads(void);

namespace {

using lathe::Tensor;
namespace k = lathe::kernels;

struct Case {
  std::string name;
  int64_t batch, M, N, K;
  bool ta, tb;          // BLAS op flags
  bool strided_a;       // pass a as a transposed view (ta=false for lathe) instead of a flag
};

// Inputs stored row-major as BLAS sees them: a is [M,K] (or [K,M] when transposed), b is
// [K,N] (or [N,K]); a batch dimension in front when batch > 1.
struct Inputs {
  Tensor a, b;
  int64_t lda, ldb;
};

Inputs make_inputs(const Case& c) {
  lathe::Generator gen(42);
  const bool a_t = c.ta || c.strided_a;
  lathe::Shape sa = a_t ? lathe::Shape{c.K, c.M} : lathe::Shape{c.M, c.K};
  lathe::Shape sb = c.tb ? lathe::Shape{c.N, c.K} : lathe::Shape{c.K, c.N};
  if (c.batch > 1) {
    sa.insert(sa.begin(), c.batch);
    sb.insert(sb.begin(), c.batch);
  }
  Inputs in;
  in.a = Tensor::randn(sa, gen);
  in.b = Tensor::randn(sb, gen);
  in.lda = sa.back();
  in.ldb = sb.back();
  return in;
}

// Best repetition: on a shared machine interference only ever adds time.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

double flops(const Case& c) { return 2.0 * static_cast<double>(c.batch * c.M * c.N * c.K); }

void set_counters(benchmark::State& st, const Case& c) {
  st.counters["FLOP/s"] = benchmark::Counter(flops(c), benchmark::Counter::kIsIterationInvariantRate);
  st.SetItemsProcessed(static_cast<int64_t>(flops(c)) * st.iterations());  // items = FLOPs
  // Minimum traffic: read a and b, write c once.
  st.SetBytesProcessed(st.iterations() * 4 * c.batch * (c.M * c.K + c.K * c.N + c.M * c.N));
}

void run_lathe(benchmark::State& st, const Case& c) {
  Inputs in = make_inputs(c);
  Tensor a = in.a;
  if (c.strided_a) a = in.a.transpose(-2, -1);  // [M, K] view with strides (1, M): no copy expected
  const bool ta = c.strided_a ? false : c.ta;
  // One call outside the timing loop: bytes allocated beyond the output.
  int64_t extra = 0;
  {
    lathe::reset_peak_memory();
    const int64_t before = lathe::memory_stats().total_current;
    Tensor out = k::matmul(a, in.b, ta, c.tb);
    extra = lathe::memory_stats().total_peak - before - static_cast<int64_t>(out.nbytes());
  }
  for (auto _ : st) {
    Tensor out = k::matmul(a, in.b, ta, c.tb);
    benchmark::DoNotOptimize(out.raw_data());
    benchmark::ClobberMemory();
  }
  set_counters(st, c);
  st.counters["extra_bytes"] = static_cast<double>(extra);
}

void sgemm_all(const Case& c, const Inputs& in, float* out) {
  const float* ap = in.a.data<float>();
  const float* bp = in.b.data<float>();
  const bool ta = c.ta || c.strided_a;
  const int64_t a_sz = c.M * c.K, b_sz = c.K * c.N, c_sz = c.M * c.N;
  for (int64_t i = 0; i < c.batch; ++i)
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, c.M, c.N, c.K,
                1.0f, ap + i * a_sz, in.lda, bp + i * b_sz, in.ldb, 0.0f, out + i * c_sz, c.N);
}

void run_sgemm(benchmark::State& st, const Case& c, bool fresh_output) {
  Inputs in = make_inputs(c);
  const size_t out_bytes = static_cast<size_t>(c.batch * c.M * c.N) * sizeof(float);
  const size_t rounded = (out_bytes + 63) / 64 * 64;
  float* keep = fresh_output ? nullptr : static_cast<float*>(std::aligned_alloc(64, rounded));
  for (auto _ : st) {
    float* out = fresh_output ? static_cast<float*>(std::aligned_alloc(64, rounded)) : keep;
    sgemm_all(c, in, out);
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
    if (fresh_output) std::free(out);
  }
  std::free(keep);
  set_counters(st, c);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Case> cases = {
      {"square_512", 1, 512, 512, 512, false, false, false},
      {"square_1024", 1, 1024, 1024, 1024, false, false, false},
      {"square_2048", 1, 2048, 2048, 2048, false, false, false},
      // GPT-2 small with B*T = 4096 tokens: MLP up, MLP down, and a [768,768] projection
      // applied as x @ W^T (the Linear layout, weight [out, in]).
      {"mlp_up_4096x768x3072", 1, 4096, 3072, 768, false, false, false},
      {"mlp_down_4096x3072x768", 1, 4096, 768, 3072, false, false, false},
      {"proj_4096x768x768T", 1, 4096, 768, 768, false, true, false},
      // attention scores per head: [12, 256, 64] @ [12, 64, 256]
      {"attn_12x256x64x256", 12, 256, 256, 64, false, false, false},
      // a given as a transposed view of a [K, M] buffer: lathe must flip the BLAS flag, not copy
      {"strided_aT_1024", 1, 1024, 1024, 1024, false, false, true},
  };
  for (const Case& c : cases) {
    benchmark::RegisterBenchmark(("lathe/" + c.name).c_str(), [c](benchmark::State& st) { run_lathe(st, c); })
        ->UseRealTime()
        ->ComputeStatistics("min", min_of)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("sgemm/" + c.name).c_str(), [c](benchmark::State& st) { run_sgemm(st, c, false); })
        ->UseRealTime()
        ->ComputeStatistics("min", min_of)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("sgemm_alloc/" + c.name).c_str(),
                                 [c](benchmark::State& st) { run_sgemm(st, c, true); })
        ->UseRealTime()
        ->ComputeStatistics("min", min_of)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::AddCustomContext("openblas_threads", std::to_string(openblas_get_num_threads()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
