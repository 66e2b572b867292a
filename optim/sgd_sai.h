// SGD-SaI (Xu et al., "No More Adam: Learning Rate Scaling at Initialization is All You
// Need", arXiv 2412.11768): momentum SGD whose step for each tensor is scaled by the tensor's
// gradient signal-to-noise ratio, measured once, on its first update:
//   gsnr = ||g||_2 / (std(g) + eps)      std unbiased (N - 1); one element: std = 0
//   b = g on the first update, else b = mu b + (1 - mu) g      (no buffer with mu = 0: b = g)
//   p <- p (1 - lr wd) - lr s b,   s = gsnr (the released code, sgd-sai 1.0.3: the default)
//                                  s = gsnr / max_k gsnr_k (the paper's Alg. 1: normalize)
// State per parameter: "gsnr" (0-d f32) and, with momentum, "momentum_buffer" (f32, the
// parameter's shape): 4 bytes per parameter, half of AdamW's 8. Both checkpoint.
//
// A parameter without a gradient on the first step() gets its g-SNR on its own first update.
// Under data parallelism the trainer hands the optimizer the all-reduced gradient, so every
// rank computes the same g-SNR.
//
// normalize and the maximum over all tensors: step() first computes the g-SNR of every
// parameter making its first update, then divides by the largest g-SNR known (every tensor's,
// from the first step on, as the paper intends). step_param (layer-wise updates) can only
// divide by the largest g-SNR known when it runs, which on the first step is not yet the
// maximum over all tensors; the config therefore refuses normalize with layer-wise updates.
// The maximum is not stored: it is recomputed from the stored g-SNRs, so it resumes exactly.
//
// Tensor parallelism (set_shard_statistics): the g-SNR of a tensor split over the TP ranks
// is that of the whole tensor: each rank's count, sum and sum of squares of its shard's
// gradient are summed over the TP group (one small all-reduce in the step with first
// updates) and the g-SNR computed from them in f64. Replicated tensors keep gsnr_of.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "optim/optimizer.h"

namespace lathe::optim {

struct SGDSaIOptions {
  double lr = 1e-2;
  double momentum = 0.9;
  double eps = 1e-8;
  bool normalize = false;
};

class SGDSaI final : public Optimizer {
 public:
  // groups: each with its own weight_decay (decoupled) and lr_scale.
  SGDSaI(std::vector<ParamGroup> groups, SGDSaIOptions opts);
  const char* name() const override { return "SGD_SAI"; }
  StateMap init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const override;
  void update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
              const ParamGroup& group, int64_t step) override;
  void step() override;
  const SGDSaIOptions& options() const { return opts_; }
  // Tensor parallelism: `sharded` maps the parameters that are one rank's slice of a larger
  // tensor to the slice's elements that count (vocabulary padding rows excluded);
  // sum_over_shards sums a host f64 tensor over the ranks holding the other slices.
  // Every rank of that group must call step() with first updates of the same sharded
  // parameters (true under TP: a tensor's slices get their gradients together).
  void set_shard_statistics(std::map<std::string, int64_t> sharded, std::function<void(Tensor&)> sum_over_shards);

 private:
  // The scale of `gsnr` for the step: itself, or divided by the largest known g-SNR.
  Tensor scale_of(const Tensor& gsnr, const Tensor& max_gsnr) const;
  // The largest g-SNR among the parameters with state (0-d f32 on dev), for normalize.
  Tensor max_gsnr(Device dev) const;
  void apply(const Tensor& param, const Tensor& grad, StateMap& state, const ParamGroup& group, int64_t step,
             const Tensor& scale);
  SGDSaIOptions opts_;
  std::map<std::string, int64_t> sharded_;
  std::function<void(Tensor&)> sum_over_shards_;
};

// The g-SNR of a gradient as SGD-SaI defines it, as a 0-d f32 tensor on g's device.
Tensor gsnr_of(const Tensor& grad, double eps);
// The same from a tensor's element count n, sum and sum of squares (f64; the variance as
// (sumsq - sum^2 / n) / (n - 1)): for a tensor whose slices live on several ranks.
double gsnr_from_moments(double n, double sum, double sumsq, double eps);

}  // namespace lathe::optim
