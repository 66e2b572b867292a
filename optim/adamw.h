// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization") with torch
// semantics: decay uses the un-updated weight, eps outside the bias correction. The update is
// the fused kernels::adamw_step, so it runs on any device the parameters live on.
#pragma once

#include "optim/optimizer.h"

namespace lathe::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

class AdamW final : public Optimizer {
 public:
  // groups: each with its own weight_decay and lr_scale (its lr becomes opts.lr * lr_scale).
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opts);
  const char* name() const override { return "AdamW"; }
  // exp_avg and exp_avg_sq: f32 zeros shaped like the parameter.
  StateMap init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const override;
  void update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
              const ParamGroup& group, int64_t step) override;
  // Every parameter with a gradient, a group at a time: those of a group on one device at one
  // step count go through one kernels::adamw_step_multi call (a few launches on CUDA instead
  // of one per parameter). Bit-identical to update() on each; step_param still uses update().
  void step() override;
  const AdamWOptions& options() const { return opts_; }

 private:
  AdamWOptions opts_;
};

// decay_groups without assigning them: the specs and the fallback group that assign_groups
// takes. Put your own specs in front of `specs` to override it for some names.
struct GroupLayout {
  std::vector<GroupSpec> specs;
  GroupSpec fallback;
};
// The usual split: matrices (dim >= 2) decay ("decay", the fallback); vectors (biases, norm
// gains) and scalars do not ("no_decay": max_dim 1, weight_decay 0) unless decay_1d.
GroupLayout decay_layout(double weight_decay, bool decay_1d = false);

// assign_groups over decay_layout: "no_decay" then "decay", empty ones left out; frozen
// parameters are left out.
std::vector<ParamGroup> decay_groups(const NamedParams& named, double weight_decay, bool decay_1d = false);

}  // namespace lathe::optim
