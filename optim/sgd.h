// SGD with momentum, torch.optim.SGD semantics (dampening 0):
//   g = grad + weight_decay * p          (coupled L2 decay, added to the gradient)
//   buf = momentum * buf + g             (buf starts at zero, so the first buf is g)
//   d = nesterov ? g + momentum * buf : buf   (d = g when momentum is 0)
//   p -= lr * d
#pragma once

#include "optim/optimizer.h"

namespace lathe::optim {

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  bool nesterov = false;  // needs momentum > 0 (as in torch)
};

class SGD final : public Optimizer {
 public:
  // groups: each with its own weight_decay and lr_scale (its lr becomes opts.lr * lr_scale).
  SGD(std::vector<ParamGroup> groups, SGDOptions opts);
  const char* name() const override { return "SGD"; }
  // momentum_buffer (f32, the parameter's shape) when momentum > 0; nothing otherwise.
  StateMap init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const override;
  void update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
              const ParamGroup& group, int64_t step) override;
  const SGDOptions& options() const { return opts_; }

 private:
  SGDOptions opts_;
};

}  // namespace lathe::optim
