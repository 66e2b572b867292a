// CUDA benchmarks of lathe on one GPU (a plain program: no Google Benchmark needed).
//
//   bench_cuda [--json PATH] [--sections gemm,attention,bandwidth,train,profile] [--quick]
//
// (a) GEMM TFLOP/s through kernels::matmul against cublasGemmEx called directly on the same
//     device buffers (efficiency = lathe / cuBLAS), bf16 and f32, at 4096^3 and the GPT-2
//     124M shapes (B*T = 32768 rows; linear layers multiply by W^T as the model does).
// (b) attention forward and forward+backward TFLOP/s, bf16, causal, D = 64 and 128,
//     T = 1024..8192 with B*H*T constant so that every size fills the GPU.
//     FLOPs: forward 4*B*H*T*S*D / 2 (causal half), backward 2.5 x forward.
// (c) device bandwidth: copy (cudaMemcpy path, a converting copy and a transposing copy)
//     and elementwise add, GB/s of bytes read + written.
// (d) GPT-2 124M (T = 1024) training steps: forward + backward + fused AdamW per parameter
//     (kernels::adamw_step), at micro-batch 4, 8, 16, 32, in f32, in bf16 autocast
//     (models::Autocast: f32 parameters cast to bf16 on use, as the trainer's precision BF16)
//     and with bf16 weights (Module::to(bf16), f32 master copies and AdamW state):
//     tokens/s, MFU (6N + 6LCT FLOPs per token against 989 TFLOP/s) and peak memory.
//
// Timing: warm-up, then the median of several repetitions, each bracketed by
// cudaDeviceSynchronize (which waits for lathe's compute stream and cuBLAS's alike) and
// timed with steady_clock. Each section (and each case) catches its own errors, prints them
// and continues, so one failing kernel does not hide the other figures.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/profiling_backend.h"
#include "autograd/autograd.h"
#include "core/memory.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "models/model.h"
#if __has_include("models/autocast.h")
#include "models/autocast.h"
#define LATHE_BENCH_HAS_AUTOCAST 1
#endif

using namespace lathe;
using json = nlohmann::json;

namespace {

const Device kGpu = Device::cuda(0);
constexpr double kPeakTflops = 989.0;  // H100/H200 dense bf16, the MFU reference of the issue

#define CUDA_OK(expr)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (expr);                                                                       \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)
#define CUBLAS_OK(expr)                                                                        \
  do {                                                                                         \
    cublasStatus_t s_ = (expr);                                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
      throw std::runtime_error(std::string(#expr) + ": cuBLAS status " + std::to_string(int(s_))); \
  } while (0)

void sync() { CUDA_OK(cudaDeviceSynchronize()); }

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median milliseconds of one call of f: one warm-up call (also the estimate), then as many
// repetitions as fit in budget_ms (between min_reps and max_reps).
double time_ms(const std::function<void()>& f, double budget_ms = 300.0, int min_reps = 3, int max_reps = 20) {
  sync();
  double t0 = now_ms();
  f();
  sync();
  const double first = now_ms() - t0;
  f();  // second warm-up: caches and cuBLAS heuristics settled
  sync();
  int reps = first > 0 ? static_cast<int>(budget_ms / first) : max_reps;
  reps = std::max(min_reps, std::min(max_reps, reps));
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    t0 = now_ms();
    f();
    sync();
    ts.push_back(now_ms() - t0);
  }
  return median(ts);
}

Tensor randn_gpu(const Shape& s, DType dt, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  Tensor x = Tensor::randn(s, g, DType::f32);
  if (scale != 1.0) x = kernels::affine(x, scale, 0.0);
  return x.to(dt).to(kGpu);
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// ---- (a) GEMM --------------------------------------------------------------------------------

struct GemmShape {
  const char* name;
  int64_t M, K, N;
  bool trans_b;  // b stored [N, K] (a linear layer's weight)
};

json bench_gemm(bool quick) {
  json out = json::array();
  cublasHandle_t h;
  CUBLAS_OK(cublasCreate(&h));
  std::unique_ptr<cublasContext, void (*)(cublasHandle_t)> guard(h, [](cublasHandle_t p) { cublasDestroy(p); });
  const int64_t BT = quick ? 8192 : 32768;
  const std::vector<GemmShape> shapes = {
      {"square 4096", 4096, 4096, 4096, false},
      {"qkv  BT x 768 x 2304", BT, 768, 2304, true},
      {"fc   BT x 768 x 3072", BT, 768, 3072, true},
      {"proj BT x 3072 x 768", BT, 3072, 768, true},
      {"lm_head BT x 768 x 50304", BT, 768, 50304, true},
  };
  std::printf("\n(a) GEMM: kernels::matmul vs cublasGemmEx (TFLOP/s; f32 = full-precision FP32 compute)\n");
  std::printf("%-28s %-5s %10s %10s %8s\n", "shape (M x K x N)", "dtype", "lathe", "cuBLAS", "lathe/cuBLAS");
  for (DType dt : {DType::bf16, DType::f32}) {
    for (const GemmShape& s : shapes) {
      json row = {{"shape", s.name}, {"M", s.M}, {"K", s.K}, {"N", s.N}, {"dtype", dtype_name(dt)}};
      try {
        Tensor a = randn_gpu({s.M, s.K}, dt, 1);
        Tensor b = s.trans_b ? randn_gpu({s.N, s.K}, dt, 2) : randn_gpu({s.K, s.N}, dt, 2);
        Tensor c = Tensor::empty({s.M, s.N}, dt, kGpu);
        const double flops = 2.0 * s.M * s.N * s.K;
        const double t_lathe = time_ms([&] { Tensor y = kernels::matmul(a, b, false, s.trans_b); });
        // Row-major C = A op(B) is column-major C^T = op(B)^T A^T: cuBLAS gets (B, A) swapped.
        const cudaDataType ty = dt == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
        const float one = 1.0f, zero = 0.0f;
        auto cublas = [&] {
          CUBLAS_OK(cublasGemmEx(h, s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(s.N),
                                 static_cast<int>(s.M), static_cast<int>(s.K), &one, b.raw_data(), ty,
                                 static_cast<int>(s.trans_b ? s.K : s.N), a.raw_data(), ty, static_cast<int>(s.K),
                                 &zero, c.raw_data(), ty, static_cast<int>(s.N), CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
        };
        const double t_cublas = time_ms(cublas);
        // Same numbers: the comparison is only fair if lathe computes the same product
        // (checked on the first rows, which keeps the check small for the lm head).
        const int64_t rows = std::min<int64_t>(s.M, 256);
        Tensor y = kernels::matmul(a, b, false, s.trans_b).narrow(0, 0, rows).to(DType::f32);
        Tensor ref = c.narrow(0, 0, rows).to(DType::f32);
        Tensor diff = kernels::binary(kernels::BinaryOp::sub, y, ref);
        const double rel = kernels::reduce(kernels::ReduceOp::norm, diff, {}).item() /
                           std::max(1e-30, kernels::reduce(kernels::ReduceOp::norm, ref, {}).item());
        const double tl = flops / t_lathe / 1e9, tc = flops / t_cublas / 1e9;
        std::printf("%-28s %-5s %10.1f %10.1f %8.2f   (rel diff %.1e)\n", s.name, dtype_name(dt), tl, tc, tl / tc, rel);
        row.update({{"lathe_ms", t_lathe}, {"cublas_ms", t_cublas}, {"lathe_tflops", tl}, {"cublas_tflops", tc},
                    {"efficiency", tl / tc}, {"rel_diff", rel}});
      } catch (const std::exception& e) {
        std::printf("%-28s %-5s ERROR: %s\n", s.name, dtype_name(dt), e.what());
        row["error"] = e.what();
      }
      out.push_back(row);
      kernels::cuda_empty_cache();
    }
  }
  return out;
}

// ---- (b) attention ------------------------------------------------------------------------------

json bench_attention(bool quick) {
  json out = json::array();
  std::printf("\n(b) attention, bf16, causal (TFLOP/s; fwd = 2*B*H*T*T*D, fwd+bwd = 3.5 x fwd)\n");
  std::printf("%-4s %-6s %-4s %-4s %10s %10s %12s %12s\n", "D", "T", "B", "H", "fwd ms", "fwd TF/s", "fwd+bwd ms",
              "fwd+bwd TF/s");
  const int64_t tokens_per_head = quick ? 4096 : 16384;  // B * T, so B*H*T is the same at every T
  for (int64_t D : {64, 128}) {
    const int64_t H = D == 64 ? 12 : 16;
    for (int64_t T : {1024, 2048, 4096, 8192}) {
      const int64_t B = std::max<int64_t>(1, tokens_per_head / T);
      json row = {{"D", D}, {"T", T}, {"B", B}, {"H", H}, {"causal", true}, {"dtype", "bf16"}};
      try {
        Tensor q = randn_gpu({B, H, T, D}, DType::bf16, 11), k = randn_gpu({B, H, T, D}, DType::bf16, 12),
               v = randn_gpu({B, H, T, D}, DType::bf16, 13), go = randn_gpu({B, H, T, D}, DType::bf16, 14);
        const double scale = 1.0 / std::sqrt(static_cast<double>(D));
        const double fwd_flops = 4.0 * B * H * static_cast<double>(T) * T * D / 2.0;
        const double t_fwd = time_ms([&] { kernels::attention(q, k, v, true, scale); });
        const double t_all = time_ms([&] {
          kernels::AttentionOut o = kernels::attention(q, k, v, true, scale);
          kernels::attention_backward(go, q, k, v, o.out, o.lse, true, scale);
        });
        const double tf = fwd_flops / t_fwd / 1e9, ta = 3.5 * fwd_flops / t_all / 1e9;
        std::printf("%-4lld %-6lld %-4lld %-4lld %10.3f %10.1f %12.3f %12.1f\n", (long long)D, (long long)T,
                    (long long)B, (long long)H, t_fwd, tf, t_all, ta);
        row.update({{"fwd_ms", t_fwd}, {"fwd_tflops", tf}, {"fwd_bwd_ms", t_all}, {"fwd_bwd_tflops", ta}});
      } catch (const std::exception& e) {
        std::printf("D %lld T %lld ERROR: %s\n", (long long)D, (long long)T, e.what());
        row["error"] = e.what();
      }
      out.push_back(row);
    }
  }
  kernels::cuda_empty_cache();
  return out;
}

// ---- (c) bandwidth ------------------------------------------------------------------------------

json bench_bandwidth(bool quick) {
  json out = json::array();
  const int64_t n = quick ? (int64_t(1) << 26) : (int64_t(1) << 28);  // f32 elements (1 GiB full size)
  std::printf("\n(c) device bandwidth, %lld f32 elements (GB/s of bytes read + written)\n", (long long)n);
  auto run = [&](const char* name, double bytes, const std::function<void()>& f) {
    json row = {{"op", name}, {"bytes", bytes}};
    try {
      const double t = time_ms(f);
      std::printf("%-34s %8.3f ms %9.1f GB/s\n", name, t, bytes / t / 1e6);
      row.update({{"ms", t}, {"gbps", bytes / t / 1e6}});
    } catch (const std::exception& e) {
      std::printf("%-34s ERROR: %s\n", name, e.what());
      row["error"] = e.what();
    }
    out.push_back(row);
  };
  try {
    Tensor a = Tensor::empty({n}, DType::f32, kGpu), b = Tensor::empty({n}, DType::f32, kGpu);
    a.fill_(1.0);
    b.fill_(2.0);
    Tensor d = Tensor::empty({n}, DType::f32, kGpu);
    Tensor h = Tensor::empty({n}, DType::bf16, kGpu);
    const int64_t side = int64_t(1) << (quick ? 13 : 14);  // side^2 == n
    const double fb = static_cast<double>(n) * 4;
    run("copy f32 (contiguous)", 2 * fb, [&] { d.copy_(a); });
    run("copy f32 -> bf16 (converting)", fb + fb / 2, [&] { h.copy_(a); });
    run("copy f32 transposed", 2 * fb, [&] { d.view({side, side}).copy_(a.view({side, side}).transpose(0, 1)); });
    run("fill_ f32", fb, [&] { d.fill_(3.0); });
    run("add f32 (binary, new output)", 3 * fb, [&] { kernels::binary(kernels::BinaryOp::add, a, b); });
    run("add_ f32 (in place)", 3 * fb, [&] { kernels::add_(d, a, 1.0); });
    Tensor ha = a.to(DType::bf16), hb = b.to(DType::bf16);
    run("add bf16 (binary, new output)", 3 * fb / 2, [&] { kernels::binary(kernels::BinaryOp::add, ha, hb); });
  } catch (const std::exception& e) {
    std::printf("bandwidth ERROR: %s\n", e.what());
    out.push_back({{"error", e.what()}});
  }
  kernels::cuda_empty_cache();
  return out;
}

// ---- (d) GPT-2 124M training steps ------------------------------------------------------------------

// AdamW on every parameter, state on the device. With bf16 parameters the update runs on f32
// master copies and is cast back (the mixed-precision recipe of the issue).
struct DeviceAdamW {
  std::vector<Tensor> params, master, m, v;
  std::vector<double> wd;
  int64_t step = 0;
  explicit DeviceAdamW(models::CausalLM& model) {
    MemCategoryGuard g(MemCategory::optimizer_state);
    for (const Tensor& p : model.parameters()) {
      params.push_back(p);
      master.push_back(p.dtype() == DType::f32 ? Tensor() : p.to(DType::f32));
      m.push_back(Tensor::zeros(p.shape(), DType::f32, p.device()));
      v.push_back(Tensor::zeros(p.shape(), DType::f32, p.device()));
      wd.push_back(p.dim() >= 2 ? 0.1 : 0.0);
    }
  }
  void apply(models::CausalLM& model, double lr) {
    ++step;
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = params[i].grad();
      if (!g.defined()) continue;
      const Tensor& p32 = master[i].defined() ? master[i] : params[i];
      kernels::adamw_step(p32, g.to(DType::f32), m[i], v[i], lr, 0.9, 0.95, 1e-8, wd[i], step);
      if (master[i].defined()) params[i].copy_(master[i]);
    }
    model.zero_grad();
  }
};

json bench_train(bool quick) {
  json out = json::array();
  const models::ModelSpec spec = models::ModelSpec::gpt2_124m();
  const int64_t T = spec.max_seq_len, N = models::count_parameters(spec);
  const double flops_per_token = 6.0 * N + 6.0 * spec.n_layer * spec.d_model * T;
  std::printf("\n(d) GPT-2 124M training step (fwd + bwd + AdamW), T = %lld, N = %lld, %.3g FLOPs/token\n",
              (long long)T, (long long)N, flops_per_token);
  std::printf("%-22s %-4s %10s %12s %7s %14s %14s\n", "precision", "B", "step ms", "tokens/s", "MFU", "peak tensors",
              "reserved");
  std::vector<int64_t> batches = quick ? std::vector<int64_t>{4} : std::vector<int64_t>{4, 8, 16, 32};
  std::vector<const char*> precisions = {"bf16 weights", "f32"};
#ifdef LATHE_BENCH_HAS_AUTOCAST
  precisions.insert(precisions.begin(), "bf16 autocast");
#endif
  for (const char* precision : precisions) {
    const bool bf16 = std::strcmp(precision, "bf16 weights") == 0;
    const bool autocast = std::strcmp(precision, "bf16 autocast") == 0;
    (void)autocast;  // unused in a tree without models/autocast.h
    std::unique_ptr<models::CausalLM> model;
    std::unique_ptr<DeviceAdamW> opt;
    try {
      model = models::build_model(spec, 1337);
      model->to(kGpu);
      if (bf16) model->to(DType::bf16);
      opt = std::make_unique<DeviceAdamW>(*model);
    } catch (const std::exception& e) {
      std::printf("%-22s model setup ERROR: %s\n", precision, e.what());
      out.push_back({{"precision", precision}, {"error", e.what()}});
      continue;
    }
    bool oom = false;
    for (int64_t B : batches) {
      json row = {{"precision", precision}, {"B", B}, {"T", T}};
      if (oom) {
        row["skipped"] = "a smaller micro-batch already failed";
        out.push_back(row);
        continue;
      }
      try {
        Generator g(B);
        std::vector<int64_t> idv(static_cast<size_t>(B * (T + 1)));
        for (auto& x : idv) x = g.next_u32() % static_cast<uint32_t>(spec.vocab_size);
        Tensor all = Tensor::from_vector<int64_t>(idv, {B, T + 1}).to(kGpu);
        Tensor ids = all.narrow(1, 0, T).contiguous(), tg = all.narrow(1, 1, T).contiguous();
        kernels::cuda_empty_cache();
        reset_peak_memory(DeviceType::cuda);
        double loss = 0;
        auto step = [&] {
          Tensor l;
          {
#ifdef LATHE_BENCH_HAS_AUTOCAST
            std::optional<models::Autocast> ac;
            if (autocast) ac.emplace(DType::bf16);
#endif
            l = model->loss(ids, tg);
          }
          l.backward();
          opt->apply(*model, 1e-4);
          loss = l.item();  // the host reads the loss every step, as the trainer does
        };
        const double ms = time_ms(step, quick ? 500.0 : 2500.0, 3, 10);
        const double tps = B * T / (ms / 1e3);
        const double mfu = tps * flops_per_token / (kPeakTflops * 1e12);
        const MemoryStats st = memory_stats(DeviceType::cuda);
        const double peak_gib = st.total_peak / double(1 << 30), res_gib = kernels::cuda_reserved_bytes() / double(1 << 30);
        std::printf("%-22s %-4lld %10.1f %12.0f %6.1f%% %10.2f GiB %10.2f GiB  (loss %.3f)\n", precision, (long long)B,
                    ms, tps, 100 * mfu, peak_gib, res_gib, loss);
        row.update({{"step_ms", ms}, {"tokens_per_s", tps}, {"mfu", mfu}, {"peak_tensor_bytes", st.total_peak},
                    {"reserved_bytes", kernels::cuda_reserved_bytes()},
                    {"peak_reserved_bytes_process", kernels::cuda_peak_reserved_bytes()}, {"loss", loss},
                    {"memory_stats", st.str()}});
      } catch (const std::exception& e) {
        std::printf("%-22s %-4lld ERROR: %s\n", precision, (long long)B, e.what());
        row["error"] = e.what();
        oom = true;
        model->zero_grad();
      }
      out.push_back(row);
    }
    opt.reset();
    model.reset();
    kernels::cuda_empty_cache();
  }
  return out;
}


// (e) Where a GPT-2 124M step spends its time: one bf16-autocast step at B = 8 run through a
// ProfilingBackend that synchronises around every kernel call and times it. The sum over
// ops against the step's wall time (unprofiled) shows how much is kernel time and how much
// host and launch overhead.
json bench_profile(bool quick) {
  json out = json::object();
  const models::ModelSpec spec = models::ModelSpec::gpt2_124m();
  const int64_t T = spec.max_seq_len, B = quick ? 4 : 8;
  auto model = models::build_model(spec, 1337);
  model->to(kGpu);
  DeviceAdamW opt(*model);
  Generator g(7);
  std::vector<int64_t> idv(static_cast<size_t>(B * (T + 1)));
  for (auto& x : idv) x = g.next_u32() % static_cast<uint32_t>(spec.vocab_size);
  Tensor all = Tensor::from_vector<int64_t>(idv, {B, T + 1}).to(kGpu);
  Tensor ids = all.narrow(1, 0, T).contiguous(), tg = all.narrow(1, 1, T).contiguous();
  auto step = [&] {
    Tensor l;
    {
#ifdef LATHE_BENCH_HAS_AUTOCAST
      models::Autocast ac(DType::bf16);
#endif
      l = model->loss(ids, tg);
    }
    l.backward();
    opt.apply(*model, 1e-4);
    (void)l.item();
  };
  const double ms = time_ms(step, 1500.0, 3, 10);
  kernels::Backend& inner = kernels::backend(kGpu);
  DeviceOps& inner_ops = device_ops(DeviceType::cuda);
  bench::ProfilingBackend prof(inner, kGpu);
  kernels::register_backend(DeviceType::cuda, &prof);
  register_device_ops(DeviceType::cuda, &prof);
  double prof_ms = 0;
  try {
    const double t0 = now_ms();
    step();
    sync();
    prof_ms = now_ms() - t0;
  } catch (...) {
    kernels::register_backend(DeviceType::cuda, &inner);
    register_device_ops(DeviceType::cuda, &inner_ops);
    throw;
  }
  kernels::register_backend(DeviceType::cuda, &inner);
  register_device_ops(DeviceType::cuda, &inner_ops);
  std::vector<std::pair<std::string, bench::ProfilingBackend::Stat>> rows(prof.stats().begin(), prof.stats().end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (const auto& r : rows) total += r.second.seconds * 1e3;
  std::printf("\n(e) GPT-2 124M bf16-autocast step at B = %lld: %.1f ms unprofiled; profiled run %.1f ms, of which "
              "%.1f ms inside kernels (synchronised per call)\n",
              (long long)B, ms, prof_ms, total);
  std::printf("%-28s %8s %10s %7s\n", "op", "calls", "ms", "share");
  json ops = json::array();
  for (const auto& [name, st] : rows) {
    const double op_ms = st.seconds * 1e3;
    if (ops.size() < 25) std::printf("%-28s %8lld %10.2f %6.1f%%\n", name.c_str(), (long long)st.calls, op_ms, 100 * op_ms / total);
    ops.push_back({{"op", name}, {"calls", st.calls}, {"ms", op_ms}});
  }
  out = {{"B", B}, {"T", T}, {"step_ms", ms}, {"profiled_step_ms", prof_ms}, {"kernel_ms", total}, {"ops", ops}};
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  std::set<std::string> sections = {"gemm", "attention", "bandwidth", "train", "profile"};
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--sections" && i + 1 < argc) {
      sections.clear();
      std::stringstream ss(argv[++i]);
      for (std::string s; std::getline(ss, s, ',');) sections.insert(s);
    } else if (a == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json PATH] [--sections gemm,attention,bandwidth,train,profile] [--quick]\n"
                   "unknown argument: %s\n",
                   argv[0], a.c_str());
      return 2;
    }
  }
  if (kernels::cuda_device_count() == 0) {
    std::printf("bench_cuda: no CUDA device; nothing measured\n");
    return 0;
  }
  json report;
  try {
    cudaDeviceProp p{};
    CUDA_OK(cudaGetDeviceProperties(&p, 0));
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    std::printf("bench_cuda on %s (sm_%d%d, %d SMs, %.0f GiB), runtime %d, driver %d%s\n", p.name, p.major, p.minor,
                p.multiProcessorCount, p.totalGlobalMem / double(1 << 30), rt, drv, quick ? ", --quick" : "");
    report["device"] = {{"name", p.name}, {"sm", p.major * 10 + p.minor}, {"sms", p.multiProcessorCount},
                        {"memory_bytes", p.totalGlobalMem}, {"runtime", rt}, {"driver", drv}};
  } catch (const std::exception& e) {
    std::printf("bench_cuda: device query failed: %s\n", e.what());
  }
  report["quick"] = quick;
  const std::pair<const char*, json (*)(bool)> all[] = {
      {"gemm", bench_gemm}, {"attention", bench_attention}, {"bandwidth", bench_bandwidth}, {"train", bench_train}, {"profile", bench_profile}};
  for (const auto& [name, fn] : all) {
    if (!sections.count(name)) continue;
    const double t0 = now_ms();
    try {
      report[name] = fn(quick);
    } catch (const std::exception& e) {
      std::printf("section %s ERROR: %s\n", name, e.what());
      report[name] = {{"error", e.what()}};
    }
    std::printf("[section %s: %.1f s]\n", name, (now_ms() - t0) / 1e3);
    std::fflush(stdout);
    if (!json_path.empty()) {  // written after every section, so a later crash keeps the earlier figures
      std::ofstream f(json_path);
      f << report.dump(2) << "\n";
    }
  }
  return 0;
}
