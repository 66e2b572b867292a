// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization") with torch
// semantics: decay uses the un-updated weight, eps outside the bias correction.
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
  // groups: each with its own weight_decay (its lr is overwritten by opts.lr).
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opts);
  const char* name() const override { return "AdamW"; }
  void step() override;
  const AdamWOptions& options() const { return opts_; }

 private:
  AdamWOptions opts_;
};

// Splits named parameters into the usual two groups: matrices (dim >= 2) decay, vectors
// (biases, norm gains) and scalars do not. Frozen parameters are left out.
std::vector<ParamGroup> decay_groups(const std::vector<std::pair<std::string, Tensor>>& named, double weight_decay);

}  // namespace lathe::optim
