// Transformer-sized graphs through lathe's autograd, on the CPU in f32.
//
// block/...   one GPT-2 block (pre-norm LayerNorm -> causal self-attention -> residual,
//             LayerNorm -> GELU MLP -> residual) built from the public layers of
//             models/layers.h, exactly as models::build_model composes it, at GPT-2 small
//             width: d_model 768, 12 heads, d_ff 3072, B=4, T=256 (1024 tokens). Times the
//             forward alone and forward+backward (gradients of the input and of all 7.1M
//             parameters).
// train_step/gpt2_10m   "training throughput": a whole optimizer step of a ~10.8M-parameter
//             GPT-2-style model (6 layers, d_model 384, 6 heads, vocab 256 = lathe's byte
//             tokenizer, T=256, tied embeddings; the nanoGPT Shakespeare-char shape):
//             zero_grad, forward, cross-entropy loss, backward, AdamW step. Reports tokens/s
//             and the peak bytes of every memory category (lathe::memory_stats()) over one
//             steady-state step.
//
// attention/...  the attention kernel alone (kernels::attention + attention_backward), f32,
//             causal, the 10M model's shape per layer: B=8, H=6, T=S=256, D=64. FLOP/s counts
//             the causal half only (forward 2 GEMMs of 2*T*S*D/2 each per head, backward
//             2.5x that), so it compares directly with bench_matmul's GEMM throughput.
//
// FLOP counts are nominal and stated so the FLOP/s figures can be checked: per token,
// forward matmuls 2 * (matmul parameters) plus attention 4*T*C per layer (QK^T and AV,
// counted without the causal half); backward = 2 x forward.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"
#include "models/layers.h"
#include "models/model.h"
#include "optim/adamw.h"

namespace {

using lathe::Tensor;
namespace ag = lathe::autograd;
namespace models = lathe::models;

// Best repetition: on a shared machine interference only ever adds time.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

constexpr double kMiB = 1024.0 * 1024.0;

// ---- one block ------------------------------------------------------------------------

struct Block {
  int64_t C, H, F;
  models::LayerNorm ln1, ln2;
  models::Attention attn;
  models::GeluMLP mlp;
  Block(int64_t c, int64_t h)
      : C(c), H(h), F(4 * c), ln1(c, 1e-5, true), ln2(c, 1e-5, true), attn(c, h, h, true), mlp(c, 4 * c, true) {
    // GPT-2 init: N(0, 0.02) matrices (the layers start at zero), norms at 1, biases at 0.
    lathe::Generator gen(7);
    for (ag::Module* m : std::vector<ag::Module*>{&attn, &mlp})
      for (auto& [name, p] : m->named_parameters()) {
        if (p.dim() < 2) continue;
        Tensor r = Tensor::randn(p.shape(), gen);
        lathe::kernels::scale_(r, 0.02);
        p.copy_(r);
      }
  }
  Tensor forward(const Tensor& x) const {
    Tensor y = ag::add(x, attn.forward(ln1.forward(x), Tensor(), Tensor()));
    return ag::add(y, mlp.forward(ln2.forward(y)));
  }
  void zero_grad() {
    for (ag::Module* m : std::vector<ag::Module*>{&ln1, &ln2, &attn, &mlp}) m->zero_grad(true);
  }
  int64_t num_parameters() const {
    return ln1.num_parameters() + ln2.num_parameters() + attn.num_parameters() + mlp.num_parameters();
  }
};

constexpr int64_t kBlkB = 4, kBlkT = 256, kBlkC = 768, kBlkH = 12;

double block_fwd_flops_per_token(int64_t C, int64_t T) {
  return 2.0 * (4.0 * C * C + 2.0 * C * 4.0 * C) + 4.0 * T * C;
}

void block_counters(benchmark::State& st, double flops_per_token, int64_t params) {
  const double tokens = kBlkB * kBlkT;
  st.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["FLOP/s"] = benchmark::Counter(tokens * flops_per_token, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["params"] = static_cast<double>(params);
}

void BM_block_forward(benchmark::State& st) {
  Block blk(kBlkC, kBlkH);
  lathe::Generator gen(1);
  Tensor x = Tensor::randn({kBlkB, kBlkT, kBlkC}, gen);
  x.set_requires_grad(true);
  for (auto _ : st) {
    lathe::MemCategoryGuard act(lathe::MemCategory::activations);
    Tensor y = blk.forward(x);  // the graph is recorded (as in training) and dropped
    benchmark::DoNotOptimize(y.raw_data());
  }
  block_counters(st, block_fwd_flops_per_token(kBlkC, kBlkT), blk.num_parameters());
}

void BM_block_forward_backward(benchmark::State& st) {
  Block blk(kBlkC, kBlkH);
  lathe::Generator gen(1);
  Tensor x = Tensor::randn({kBlkB, kBlkT, kBlkC}, gen);
  Tensor gy = Tensor::randn({kBlkB, kBlkT, kBlkC}, gen);
  x.set_requires_grad(true);
  for (auto _ : st) {
    blk.zero_grad();
    x.set_grad(Tensor());
    lathe::MemCategoryGuard act(lathe::MemCategory::activations);
    Tensor y = blk.forward(x);
    ag::backward(y, gy);
    benchmark::DoNotOptimize(x.grad().raw_data());
  }
  block_counters(st, 3.0 * block_fwd_flops_per_token(kBlkC, kBlkT), blk.num_parameters());
}

// ---- attention kernel alone ------------------------------------------------------------

void BM_attention(benchmark::State& st) {
  const bool backward = st.range(0) != 0;
  const int64_t B = 8, H = 6, T = 256, D = 64;
  lathe::Generator gen(3);
  Tensor q = Tensor::randn({B, H, T, D}, gen), k = Tensor::randn({B, H, T, D}, gen);
  Tensor v = Tensor::randn({B, H, T, D}, gen), go = Tensor::randn({B, H, T, D}, gen);
  const double scale = 0.125;
  lathe::kernels::AttentionOut o = lathe::kernels::attention(q, k, v, true, scale);
  for (auto _ : st) {
    if (backward) {
      auto g = lathe::kernels::attention_backward(go, q, k, v, o.out, o.lse, true, scale);
      benchmark::DoNotOptimize(g.dq.raw_data());
    } else {
      auto r = lathe::kernels::attention(q, k, v, true, scale);
      benchmark::DoNotOptimize(r.out.raw_data());
    }
  }
  const double fwd = 2.0 * 2.0 * B * H * T * T * D / 2.0;  // QK^T and PV, causal half
  st.counters["FLOP/s"] =
      benchmark::Counter(backward ? 2.5 * fwd : fwd, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- whole training step of a ~10M model ---------------------------------------------

models::ModelSpec spec_10m() {
  models::ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = 256;
  s.n_layer = 6;
  s.n_head = 6;
  s.d_model = 384;
  s.max_seq_len = 256;
  s.dropout = 0.0;
  s.tie_embeddings = true;
  return s;
}

Tensor random_tokens(lathe::Generator& gen, int64_t B, int64_t T, int64_t V) {
  std::vector<int64_t> v(static_cast<size_t>(B * T));
  for (auto& t : v) t = static_cast<int64_t>(gen.next_u32() % static_cast<uint32_t>(V));
  return Tensor::from_vector(v, {B, T});
}

void BM_train_step(benchmark::State& st) {
  const int64_t B = st.range(0), T = 256;
  const models::ModelSpec spec = spec_10m();
  auto model = models::build_model(spec, 1234);
  lathe::optim::AdamWOptions o;
  o.lr = 3e-4;
  o.weight_decay = 0.1;
  lathe::optim::AdamW opt(lathe::optim::decay_groups(model->named_parameters(), o.weight_decay), o);
  lathe::Generator gen(99);
  Tensor ids = random_tokens(gen, B, T, spec.vocab_size);
  Tensor targets = random_tokens(gen, B, T, spec.vocab_size);

  double last_loss = 0;
  auto step = [&]() {
    opt.zero_grad();
    {
      lathe::MemCategoryGuard act(lathe::MemCategory::activations);
      Tensor loss = model->loss(ids, targets);
      loss.backward();
      last_loss = loss.item();
    }
    opt.step();
  };
  // One step to create the optimizer state, then one measured for memory peaks.
  step();
  lathe::reset_peak_memory();
  step();
  const lathe::MemoryStats ms = lathe::memory_stats();

  for (auto _ : st) step();

  const int64_t P = model->num_parameters();
  const double C = static_cast<double>(spec.d_model), L = static_cast<double>(spec.n_layer);
  // matmul parameters: 12 C^2 per layer (qkvo 4C^2, MLP 8C^2) plus the tied lm_head V*C
  const double matmul_params = 12.0 * L * C * C + static_cast<double>(spec.vocab_size) * C;
  const double flops_per_token = 6.0 * matmul_params + 3.0 * L * 4.0 * static_cast<double>(T) * C;
  const double tokens = static_cast<double>(B * T);
  st.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["FLOP/s"] = benchmark::Counter(tokens * flops_per_token, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["params"] = static_cast<double>(P);
  st.counters["loss"] = last_loss;
  using lathe::MemCategory;
  st.counters["peak_param_MiB"] = ms.peak_of(MemCategory::parameters) / kMiB;
  st.counters["peak_grad_MiB"] = ms.peak_of(MemCategory::gradients) / kMiB;
  st.counters["peak_optim_MiB"] = ms.peak_of(MemCategory::optimizer_state) / kMiB;
  st.counters["peak_act_MiB"] = ms.peak_of(MemCategory::activations) / kMiB;
  st.counters["peak_other_MiB"] = ms.peak_of(MemCategory::other) / kMiB;
  st.counters["peak_total_MiB"] = ms.total_peak / kMiB;
}

}  // namespace

BENCHMARK(BM_block_forward)
    ->Name("block/forward_d768_h12_B4_T256")
    ->UseRealTime()
    ->ComputeStatistics("min", min_of)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_block_forward_backward)
    ->Name("block/fwd_bwd_d768_h12_B4_T256")
    ->UseRealTime()
    ->ComputeStatistics("min", min_of)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_attention)
    ->Name("attention/causal_B8_H6_T256_D64")
    ->ArgName("backward")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_train_step)
    ->Name("train_step/gpt2_10m_L6_d384_h6_V256_T256")
    ->ArgName("B")
    ->Arg(8)
    ->MinTime(3.0)
    ->UseRealTime()
    ->ComputeStatistics("min", min_of)
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
