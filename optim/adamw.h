// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"). Two forms
// (kernels::AdamVariant): torch semantics by default (decay uses the un-updated weight, eps
// outside the bias correction), or the HF form GaLore and Fira use (eps inside, step
// lr sqrt(bc2)/bc1, decay after the update). The update is the fused kernels::adamw_step, so it
// runs on any device the parameters live on.
//
// With state_bits 8 the moments are bitsandbytes-style 8-bit blockwise states (Dettmers et al.,
// "8-bit Optimizers via Block-wise Quantization", ICLR 2022; optim/blockwise8.h): about 2.03
// bytes per parameter instead of 8. Tensors with fewer than min_8bit_size elements and those
// whose name matches f32_params (the embeddings, by default in the config: Dettmers'
// guidance that 8-bit embedding states are unstable) keep f32 moments.
#pragma once

#include <regex>
#include <string>

#include "kernels/ops.h"
#include "optim/optimizer.h"

namespace lathe::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  kernels::AdamVariant variant = kernels::AdamVariant::torch;
  int state_bits = 32;           // 32 or 8
  int64_t block_size = 256;      // 8-bit: elements per quantisation block
  int64_t min_8bit_size = 4096;  // 8-bit: smaller tensors keep f32 moments
  std::string f32_params;        // 8-bit: regex over names that keep f32 moments ("" = none)
};

class AdamW final : public Optimizer {
 public:
  // groups: each with its own weight_decay and lr_scale (its lr becomes opts.lr * lr_scale).
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opts);
  const char* name() const override { return "AdamW"; }
  // exp_avg and exp_avg_sq: f32 zeros shaped like the parameter; with 8-bit states (and the
  // parameter large enough, not matched by f32_params) the four entries of optim/blockwise8.h.
  StateMap init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const override;
  void update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
              const ParamGroup& group, int64_t step) override;
  // Every parameter with a gradient, a group at a time: those of a group on one device at one
  // step count go through one kernels::adamw_step_multi call (a few launches on CUDA instead
  // of one per parameter). Bit-identical to update() on each; step_param still uses update().
  void step() override;
  const AdamWOptions& options() const { return opts_; }
  // Whether a parameter of this name and size gets 8-bit moments.
  bool uses_8bit(const std::string& name, const Tensor& param) const;

 private:
  AdamWOptions opts_;
  std::regex f32_re_;
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
