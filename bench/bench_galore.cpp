// GaLore / Fira costs on the CPU (f32), on the matrix shapes of the GaLore paper's
// LLaMA-60M (d 512, ffn 1376) and LLaMA-350M (d 1024, ffn 2736) models.
//
// refresh/<exact|randomized>/m/n/r   one basis refresh of an m x n gradient at rank r: the
//             exact form (LAPACK gesdd of the whole matrix, as galore-torch) against the
//             randomized range finder warm-started from the previous basis (oversample 8;
//             randomized_q2 / _q1 / _q0: 2, 1 (the config default) and 0 subspace iterations). The
//             gradient is a random rank-32 matrix plus Gaussian noise at 10% of its norm (a
//             gradient's spectrum decays); the warm start is the exact basis of another such
//             matrix (the worst case: the new gradient shares nothing with the old basis). The
//             counter `energy` is ||project(G)||^2 of the refreshed basis over the exact one's.
// step/<adamw|galore|fira>/d/ffn/r   one optimizer step (no refresh) over one transformer
//             layer's seven linears (q, k, v, o: d x d; gate, up: ffn x d; down: d x ffn);
//             AdamW is the torch form through the fused kernel. The refresh's cost per step is
//             refresh time / T, reported by the refresh benchmarks.
// state table: `bench_galore --state_table` prints the optimizer-state bytes of whole
//             LLaMA-60M / 350M-shaped models (vocab 32000, untied head) for AdamW, GaLore
//             r128/r256 and Fira r128/r256, measured by the allocator (optimizer_state
//             category) next to the formula, and exits.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "optim/adamw.h"
#include "optim/galore.h"
#include "optim/projector.h"

using namespace lathe;
using namespace lathe::optim;

namespace {

// A gradient-like matrix: rank-32 signal plus 10% noise.
Tensor gradient_like(int64_t m, int64_t n, uint64_t seed) {
  Generator g(seed);
  const int64_t k = 32;
  Tensor a = Tensor::randn({m, k}, g), b = Tensor::randn({k, n}, g);
  Tensor s = kernels::matmul(a, b);
  const double sn = kernels::reduce(kernels::ReduceOp::norm, s, {}).item();
  Tensor noise = Tensor::randn({m, n}, g);
  kernels::add_(s, noise, 0.1 * sn / std::sqrt(static_cast<double>(m * n)));
  return s;
}

// power_iters < 0: the exact SVD; otherwise the randomized refresh with that many iterations.
void BM_refresh(benchmark::State& state, int power_iters) {
  const bool randomized = power_iters >= 0;
  const int64_t m = state.range(0), n = state.range(1), r = state.range(2);
  const Tensor g = gradient_like(m, n, 1), g2 = gradient_like(m, n, 2);
  const ProjSides sides = proj_sides(ProjType::std_, m, n);
  Projector p;
  if (sides.left) p.left = Tensor::zeros({m, r});
  if (sides.right) p.right = Tensor::zeros({r, n});
  RandomizedSvdOptions o;  // config default oversample 8
  o.seed = 7;
  o.power_iters = std::max(power_iters, 0);
  refresh_exact(g, p);  // the previous basis the warm start begins from
  o.warm = true;
  uint64_t idx = 1;
  for (auto _ : state) {
    if (randomized) {
      o.refresh_index = idx++;
      refresh_randomized(g2, p, o);
    } else {
      refresh_exact(g2, p);
    }
    benchmark::DoNotOptimize(p);
  }
  // Quality of the last refresh: the energy of g2 its basis captures, relative to the exact
  // top-r basis's (1 = as good as the SVD; invariant to signs and rotations in the span).
  Projector ex;
  if (sides.left) ex.left = Tensor::zeros({m, r});
  if (sides.right) ex.right = Tensor::zeros({r, n});
  refresh_exact(g2, ex);
  auto energy = [&](const Projector& pp) {
    const double e = kernels::reduce(kernels::ReduceOp::norm, pp.project(g2), {}).item();
    return e * e;
  };
  state.counters["energy"] = energy(p) / energy(ex);
  state.SetLabel(std::to_string(m) + "x" + std::to_string(n) + " r" + std::to_string(r));
}

struct Layer {
  std::vector<Tensor> params;
  std::vector<ParamGroup> groups;
};
Layer make_layer(int64_t d, int64_t ffn) {
  Layer l;
  ParamGroup g;
  Generator gen(3);
  const std::vector<std::pair<std::string, Shape>> shapes = {
      {"layers.0.attn.q_proj.weight", {d, d}},      {"layers.0.attn.k_proj.weight", {d, d}},
      {"layers.0.attn.v_proj.weight", {d, d}},      {"layers.0.attn.o_proj.weight", {d, d}},
      {"layers.0.mlp.gate_proj.weight", {ffn, d}}, {"layers.0.mlp.up_proj.weight", {ffn, d}},
      {"layers.0.mlp.down_proj.weight", {d, ffn}}};
  for (const auto& [name, s] : shapes) {
    Tensor p = Tensor::randn(s, gen).set_requires_grad();
    p.set_grad(gradient_like(s[0], s[1], l.params.size() + 10));
    l.params.push_back(p);
    g.params.push_back({name, p});
  }
  l.groups = {g};
  return l;
}

// kind: 0 AdamW, 1 GaLore, 2 Fira
void BM_step(benchmark::State& state, int kind) {
  const int64_t d = state.range(0), ffn = state.range(1), r = state.range(2);
  Layer l = make_layer(d, ffn);
  std::unique_ptr<Optimizer> opt;
  if (kind == 0) {
    AdamWOptions o;
    o.lr = 1e-6;
    opt = std::make_unique<AdamW>(l.groups, o);
  } else {
    GaLoreOptions o;
    o.lr = 1e-6;
    o.rank = r;
    o.update_proj_gap = 1 << 30;  // no refresh inside the timed loop
    o.fira = kind == 2;
    opt = std::make_unique<GaLore>(l.groups, o);
  }
  opt->step();  // the first step allocates the state and (GaLore) computes the basis
  for (auto _ : state) opt->step();
  int64_t numel = 0;
  for (const auto& p : l.params) numel += p.numel();
  state.counters["params"] = static_cast<double>(numel);
}

void shapes_refresh(benchmark::internal::Benchmark* b) {
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{512, 512}, {1376, 512}, {1024, 1024}, {2736, 1024}})
    for (int64_t r : {128, 256}) b->Args({m, n, r});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
void shapes_step(benchmark::internal::Benchmark* b) {
  b->Args({512, 1376, 128})->Args({1024, 2736, 256})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(BM_refresh, exact, -1)->Apply(shapes_refresh);
BENCHMARK_CAPTURE(BM_refresh, randomized_q2, 2)->Apply(shapes_refresh);
BENCHMARK_CAPTURE(BM_refresh, randomized_q1, 1)->Apply(shapes_refresh);  // the config default
BENCHMARK_CAPTURE(BM_refresh, randomized_q0, 0)->Apply(shapes_refresh);
BENCHMARK_CAPTURE(BM_step, adamw, 0)->Apply(shapes_step);
BENCHMARK_CAPTURE(BM_step, galore, 1)->Apply(shapes_step);
BENCHMARK_CAPTURE(BM_step, fira, 2)->Apply(shapes_step);

// ---- state table --------------------------------------------------------------------------
struct ModelShape {
  const char* name;
  int64_t d, ffn, layers, vocab;
};

NamedParams llama_params(const ModelShape& s) {
  NamedParams out;
  auto add = [&](const std::string& n, Shape sh) {
    Tensor p = Tensor::zeros(sh).set_requires_grad();
    p.set_grad(Tensor::zeros(sh));
    out.push_back({n, p});
  };
  add("embed.weight", {s.vocab, s.d});
  for (int64_t i = 0; i < s.layers; ++i) {
    const std::string l = "layers." + std::to_string(i) + ".";
    add(l + "attn_norm.weight", {s.d});
    for (const char* q : {"q_proj", "k_proj", "v_proj", "o_proj"}) add(l + "attn." + q + ".weight", {s.d, s.d});
    add(l + "mlp_norm.weight", {s.d});
    add(l + "mlp.gate_proj.weight", {s.ffn, s.d});
    add(l + "mlp.up_proj.weight", {s.ffn, s.d});
    add(l + "mlp.down_proj.weight", {s.d, s.ffn});
  }
  add("final_norm.weight", {s.d});
  add("lm_head.weight", {s.vocab, s.d});
  return out;
}

// The formula (f32 everywhere): AdamW 2 numel; GaLore 2 max(m,n) r + min(m,n) r per projected
// matrix (moments + basis, spec 2.3) and 2 numel elsewhere; Fira adds one scalar per matrix.
int64_t formula_bytes(const NamedParams& ps, const GaLore* gal, int64_t r, bool fira) {
  int64_t floats = 0;
  for (const auto& [n, p] : ps) {
    if (gal && gal->projected(n)) {
      const int64_t m = p.size(0), k = p.size(1), rr = std::min(r, std::min(m, k));
      floats += 2 * std::max(m, k) * rr + std::min(m, k) * rr + (fira ? 1 : 0);
    } else {
      floats += 2 * p.numel();
    }
  }
  return 4 * floats;
}

void state_table() {
  std::printf("| model | params | optimizer | state bytes (allocator) | formula | bytes/param | vs AdamW |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const ModelShape& s : {ModelShape{"LLaMA-60M", 512, 1376, 8, 32000}, ModelShape{"LLaMA-350M", 1024, 2736, 24, 32000}}) {
    int64_t adam_bytes = 0;
    for (int kind = 0; kind < 5; ++kind) {
      NamedParams ps = llama_params(s);
      int64_t numel = 0;
      for (const auto& [n, p] : ps) numel += p.numel();
      std::vector<ParamGroup> groups(1);
      groups[0].params = ps;
      const int64_t before = memory_stats().current_of(MemCategory::optimizer_state);
      std::unique_ptr<Optimizer> opt;
      std::string label;
      int64_t r = 0;
      const GaLore* gal = nullptr;
      if (kind == 0) {
        opt = std::make_unique<AdamW>(groups, AdamWOptions{});
        label = "AdamW (f32)";
      } else {
        GaLoreOptions o;
        r = (kind == 1 || kind == 3) ? 128 : 256;
        o.rank = r;
        o.fira = kind >= 3;
        auto g = std::make_unique<GaLore>(groups, o);
        gal = g.get();
        opt = std::move(g);
        label = std::string(o.fira ? "Fira" : "GaLore") + " r" + std::to_string(r);
      }
      std::fprintf(stderr, "%s %s ...\n", s.name, label.c_str());
      opt->step();  // zero gradients: GaLore keeps a canonical basis (and says so once)
      const int64_t measured = memory_stats().current_of(MemCategory::optimizer_state) - before;
      const int64_t formula = formula_bytes(ps, gal, r, kind >= 3);
      if (kind == 0) adam_bytes = measured;
      std::printf("| %s | %.1fM | %s | %lld | %lld | %.3f | %.3f |\n", s.name, numel / 1e6, label.c_str(),
                  static_cast<long long>(measured), static_cast<long long>(formula),
                  static_cast<double>(measured) / numel, static_cast<double>(measured) / adam_bytes);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--state_table") == 0) {
      state_table();
      return 0;
    }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
