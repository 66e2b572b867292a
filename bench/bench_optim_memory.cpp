// Optimizer state memory on LLaMA-60M- and LLaMA-350M-shaped models (the GaLore paper's
// shapes: d 512 / ffn 1376 / 8 layers and d 1024 / ffn 2736 / 24 layers, vocab 32000, untied),
// measured by the allocator's accounting (core/memory: bytes under optimizer_state, and the
// paged part) next to the formula, and the CPU step time of each optimizer relative to AdamW.
//
//   OMP_NUM_THREADS=1 build/bench/bench_optim_memory            # both shapes, memory + step time (60M)
//   OMP_NUM_THREADS=1 build/bench/bench_optim_memory --quick    # 60M only
//
// Each optimizer's state is created the way training creates it (step_param on one parameter
// at a time, from a zero gradient), so only one gradient exists at once and the 350M model
// fits next to its weights. Each row also reports the peak of everything the allocator holds
// over one step, with all gradients at once (the ordinary step) and one at a time (layer-wise).
// Rows whose optimizer type is not built into this binary are printed as "not built".
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <regex>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>

#include "core/memory.h"
#include "models/model.h"
#include "optim/registry.h"

using namespace lathe;

namespace {

models::ModelSpec llama(int64_t d, int64_t ffn, int64_t layers, int64_t heads) {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 32000;
  s.d_model = d;
  s.d_ff = ffn;
  s.n_layer = layers;
  s.n_head = heads;
  s.max_seq_len = 256;
  s.bias = false;
  s.tie_embeddings = false;
  return s;
}

struct Row {
  std::string label;
  std::string config;  // OptimizerConfig in text format
  // Formula: state bytes for the named parameters.
  std::function<int64_t(const optim::NamedParams&)> formula;
  bool small_only = false;  // measured on the 60M shape only (the 350M state would not fit here)
};

int64_t numel_of(const Tensor& t) { return t.numel(); }
bool is_embedding(const std::string& n) { return std::regex_match(n, std::regex("(.*\\.)?(embed|pos_embed)\\.weight")); }

// AdamW f32: 8 bytes per parameter (exp_avg, exp_avg_sq).
int64_t adamw_bytes(const optim::NamedParams& ps) {
  int64_t b = 0;
  for (const auto& [n, p] : ps) b += 8 * numel_of(p);
  return b;
}
// 8-bit AdamW: 2 bytes + 2 f32 absmax per 256-element block; f32 for < 4096 elements and embeddings.
int64_t adamw8_bytes(const optim::NamedParams& ps) {
  int64_t b = 0;
  for (const auto& [n, p] : ps) {
    const int64_t k = numel_of(p);
    b += (k < 4096 || is_embedding(n)) ? 8 * k : 2 * k + 8 * ((k + 255) / 256);
  }
  return b;
}
// SGD-SaI: momentum buffer (4 bytes per parameter) + one f32 g-SNR per tensor.
int64_t sgd_sai_bytes(const optim::NamedParams& ps) {
  int64_t b = 0;
  for (const auto& [n, p] : ps) b += 4 * numel_of(p) + 4;
  return b;
}
// GaLore (rank r, "std" projection, f32 moments and basis) on the attention and MLP matrices,
// AdamW on the rest: 2 max(m,n) r (moments) + min(m,n) r (basis) floats per projected matrix.
// eight_bit: the moments in 8-bit blocks. Fira adds one f32 scalar per matrix. (optim-b checks
// these against its own state layout when its rows run.)
// natural_s > 0: Natural GaLore's history of natural_s projected gradients per matrix.
std::function<int64_t(const optim::NamedParams&)> galore_bytes(int64_t r, bool eight_bit, bool fira,
                                                             int64_t natural_s = 0) {
  return [=](const optim::NamedParams& ps) {
    int64_t b = 0;
    for (const auto& [n, p] : ps) {
      const bool proj = p.dim() == 2 && (n.find(".attn.") != std::string::npos || n.find(".mlp.") != std::string::npos);
      if (!proj) {
        b += eight_bit ? adamw8_bytes({{n, p}}) : 8 * numel_of(p);
        continue;
      }
      const int64_t m = p.size(0), k = p.size(1), big = std::max(m, k), small = std::min(m, k), rr = std::min(r, small);
      const int64_t mom = big * rr;
      b += (eight_bit && mom >= 4096 ? 2 * mom + 8 * ((mom + 255) / 256) : 8 * mom) + 4 * small * rr + (fira ? 4 : 0) +
           4 * natural_s * mom;
    }
    return b;
  };
}

std::vector<Row> rows() {
  return {
      {"AdamW (f32)", "type: ADAMW", adamw_bytes},
      {"AdamW 8-bit", "type: ADAMW state_bits: 8", adamw8_bytes},
      {"AdamW 8-bit, paged", "type: ADAMW state_bits: 8 paged: true", adamw8_bytes},
      {"SGD-SaI", "type: SGD_SAI", sgd_sai_bytes},
      {"GaLore r128", "type: GALORE galore { rank: 128 }", galore_bytes(128, false, false)},
      {"GaLore r256", "type: GALORE galore { rank: 256 }", galore_bytes(256, false, false)},
      {"GaLore r128 8-bit", "type: GALORE state_bits: 8 galore { rank: 128 }", galore_bytes(128, true, false)},
      {"GaLore r256 8-bit", "type: GALORE state_bits: 8 galore { rank: 256 }", galore_bytes(256, true, false)},
      {"Fira r128", "type: FIRA galore { rank: 128 }", galore_bytes(128, false, true)},
      {"Fira r256", "type: FIRA galore { rank: 256 }", galore_bytes(256, false, true)},
      {"Natural GaLore r128 (history 20)", "type: GALORE galore { rank: 128 natural: true }",
       galore_bytes(128, false, false, 20), true},
  };
}

lathe::OptimizerConfig parse(const std::string& text) {
  lathe::OptimizerConfig c;
  if (!google::protobuf::TextFormat::ParseFromString(text, &c)) {
    std::fprintf(stderr, "bad optimizer config: %s\n", text.c_str());
    std::exit(2);
  }
  return c;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Peak bytes the allocator saw (weights + gradients + optimizer state + the step's temporaries;
// no activations: there is no forward pass) over one step from zero gradients, the first, which
// creates the state: the ordinary step holds every gradient at once; the layer-wise one
// (step_param from each gradient's hook, gradient freed at once) holds one.
int64_t peak_of_step(const lathe::OptimizerConfig& cfg, const optim::NamedParams& named, bool layerwise) {
  auto opt = optim::make_optimizer(cfg, named);
  reset_peak_memory();
  if (layerwise) {
    for (const auto& [n, p] : named) {
      p.set_grad(Tensor::zeros(p.shape(), p.dtype(), p.device()));
      opt->step_param(n);
      p.set_grad(Tensor());
    }
  } else {
    for (const auto& [n, p] : named) p.set_grad(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    opt->step();
    for (const auto& [n, p] : named) p.set_grad(Tensor());
  }
  return memory_stats().total_peak;
}

void memory_table(const char* title, const models::ModelSpec& spec, bool small) {
  auto model = models::build_model(spec, 0);
  const optim::NamedParams named = model->named_parameters();
  int64_t params = 0;
  for (const auto& [n, p] : named) params += p.numel();
  std::printf("\n### %s: %.1fM parameters (%lld tensors, %.1f MiB of f32 weights)\n\n", title, params / 1e6,
              static_cast<long long>(named.size()), memory_stats().current_of(MemCategory::parameters) / 1048576.0);
  std::printf("| optimizer | state measured (MiB) | formula (MiB) | bytes/param | paged (MiB) | peak, ordinary step (MiB) "
              "| peak, layer-wise (MiB) |\n|---|---|---|---|---|---|---|\n");
  for (const Row& row : rows()) {
    const lathe::OptimizerConfig cfg = parse(row.config);
    if (!optim::optimizer_registered(cfg.type())) {
      std::printf("| %s | not built | %.1f | %.2f | | | |\n", row.label.c_str(), row.formula(named) / 1048576.0,
                  double(row.formula(named)) / params);
      continue;
    }
    if (row.small_only && !small) {
      std::printf("| %s | not measured | %.1f | %.2f | | | |\n", row.label.c_str(), row.formula(named) / 1048576.0,
                  double(row.formula(named)) / params);
      continue;
    }
    const int64_t before = memory_stats().current_of(MemCategory::optimizer_state);
    int64_t measured = 0, paged = 0;
    {
      auto opt = optim::make_optimizer(cfg, named);
      for (const auto& [n, p] : named) {
        p.set_grad(Tensor::zeros(p.shape(), p.dtype(), p.device()));
        opt->step_param(n);
        p.set_grad(Tensor());
      }
      const MemoryStats st = memory_stats();
      measured = st.current_of(MemCategory::optimizer_state) - before;
      paged = st.paged_of(MemCategory::optimizer_state);
    }
    const int64_t peak_off = peak_of_step(cfg, named, false), peak_on = peak_of_step(cfg, named, true);
    std::printf("| %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f |\n", row.label.c_str(), measured / 1048576.0,
                row.formula(named) / 1048576.0, double(measured) / params, paged / 1048576.0, peak_off / 1048576.0,
                peak_on / 1048576.0);
    std::fflush(stdout);
  }
}

void step_times(const models::ModelSpec& spec) {
  auto model = models::build_model(spec, 0);
  const optim::NamedParams named = model->named_parameters();
  Generator gen(7);
  for (const auto& [n, p] : named) {
    Tensor g = Tensor::randn(p.shape(), gen);
    kernels::scale_(g, 1e-3);
    p.set_grad(g);
  }
  std::printf("\n### CPU step time, LLaMA-60M shape (fastest of 5 steps after one warm-up, %d OpenMP threads)\n\n",
              omp_get_max_threads());
  std::printf("| optimizer | ms/step | vs AdamW |\n|---|---|---|\n");
  double base = 0;
  for (const Row& row : rows()) {
    const lathe::OptimizerConfig cfg = parse(row.config);
    if (!optim::optimizer_registered(cfg.type())) continue;
    // Fresh weights' values do not matter for time; the state starts on the warm-up step.
    auto opt = optim::make_optimizer(cfg, named);
    opt->step();
    // The fastest of 5: the least disturbed by whatever else the machine runs.
    double ms = 1e30;
    for (int i = 0; i < 5; ++i) {
      const double t0 = now_s();
      opt->step();
      ms = std::min(ms, (now_s() - t0) * 1e3);
    }
    if (base == 0) base = ms;
    std::printf("| %s | %.1f | %.2fx |\n", row.label.c_str(), ms, ms / base);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const models::ModelSpec m60 = llama(512, 1376, 8, 8), m350 = llama(1024, 2736, 24, 16);
  memory_table("LLaMA-60M shape (d 512, ffn 1376, 8 layers, vocab 32000)", m60, true);
  if (!quick) memory_table("LLaMA-350M shape (d 1024, ffn 2736, 24 layers, vocab 32000)", m350, false);
  step_times(m60);
  return 0;
}
