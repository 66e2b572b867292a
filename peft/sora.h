// SoRA (Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023):
// LoRA with a gate g [r] between the factors,
//   y = base(x) + s * B (g * (A drop(x))),   s = alpha / r_max,
// A kaiming_uniform(a=sqrt(5)), B = 0, g ~ N(0, 1) (the reference's randn). The gate is made
// sparse by a proximal step after every optimizer update (sora_proximal_step), whose
// threshold rises by the sparsifying schedule (Algorithm 1: dense first, then higher
// thresholds level by level). Ranks whose gate is exactly zero contribute nothing and are
// dropped at export: A' = A[keep], B' = B[:, keep] diag(g_keep), with alpha' chosen per module
// so that the scale stays alpha / r_max (adapter_config.json rank_pattern / alpha_pattern).
//
// Threshold (sora_threshold):
//   PAPER (default): the proximal operator of the L1 penalty lambda |g|_1 at step size lr,
//     g <- sign(g) max(|g| - lr * lambda, 0)  (soft threshold T_{lr lambda}, SoRA eq. 5);
//   CODE: the reference implementation's three in-place steps with xi = lambda (not scaled by
//     lr): g[g > xi] -= xi; g[g < -xi] += xi; g[|g| < xi] = 0, i.e. |g| < 2 xi -> 0 (up to the
//     boundary) and g - xi sign(g) otherwise.
// The gates train with the run's optimizer (AdamW; 1-D, so in the no-decay group); an
// optimizer group on ".*lora_gate" gives them their own lr as the reference's SparseAdamW.
#pragma once

#include <cstdint>
#include <memory>

#include "peft/lora.h"

namespace lathe::peft {

enum class SoraThreshold { paper, code };

struct SoraOptions {
  SoraThreshold threshold = SoraThreshold::paper;
  double lambda = 0.3;        // the threshold's lambda (PAPER: lr * lambda; CODE: lambda)
  // Sparsifying schedule: lambda until schedule_start, then linspace(lambda, lambda_max,
  // schedule_levels) one level per schedule_interval steps. lambda_max 0 = no schedule.
  double lambda_max = 0;
  int64_t schedule_start = 0;
  int64_t schedule_levels = 7;
  int64_t schedule_interval = 100;
};

// The lambda in force after `step` optimizer steps (step >= 1).
double sora_lambda_at(const SoraOptions& o, int64_t step);
// The proximal step on a gate vector in place (any device): see the header comment.
void sora_proximal(const Tensor& gate, double lambda, double lr, SoraThreshold mode);

class SoraLinear : public LoraLinear {
 public:
  SoraLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, const SoraOptions& sora,
             Generator& gen, Generator* dropout_gen);
  std::string type_name() const override { return "SoraLinear"; }
  const char* method_name() const override { return "SoRA"; }
  Tensor forward(const Tensor& x) const override;
  Tensor delta_weight() const override;
  // Pruned: the non-zero gates' ranks, the gate folded into B, the scale kept (alpha').
  LoraFactors lora_factors() const override;
  int64_t adapter_parameters() const override;

  Tensor gate() const { return gate_; }
  const SoraOptions& sora_options() const { return sora_; }
  // Gates that are not exactly zero.
  int64_t active_ranks() const;

 private:
  SoraOptions sora_;
  Tensor gate_;
};

// After every optimizer update (lr = the step's learning rate, step = steps done): the
// proximal step on every SoraLinear's gate (no host sync).
void sora_after_step(autograd::Module& root, double lr, int64_t step);

}  // namespace lathe::peft
