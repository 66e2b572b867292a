#include "optim/adamw.h"

#include "kernels/ops.h"

namespace lathe::optim {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opts) : opts_(opts) {
  LATHE_CHECK(opts.lr >= 0) << "AdamW: lr must be >= 0, got " << opts.lr;
  LATHE_CHECK(opts.beta1 >= 0 && opts.beta1 < 1) << "AdamW: beta1 must be in [0, 1), got " << opts.beta1;
  LATHE_CHECK(opts.beta2 >= 0 && opts.beta2 < 1) << "AdamW: beta2 must be in [0, 1), got " << opts.beta2;
  LATHE_CHECK(opts.eps > 0) << "AdamW: eps must be > 0, got " << opts.eps;
  groups_ = std::move(groups);
  for (auto& g : groups_) {
    g.lr = opts.lr;
    for (auto& [n, p] : g.params)
      LATHE_CHECK(p.dtype() == DType::f32) << "AdamW: parameter '" << n << "' is " << dtype_name(p.dtype())
                                           << "; keep f32 master weights for the optimizer";
  }
  lr_factor_.assign(groups_.size(), 1.0);
}

void AdamW::step() {
  ++step_;
  for (auto& g : groups_) {
    for (auto& [n, p] : g.params) {
      Tensor grad = p.grad();
      if (!grad.defined()) continue;
      Tensor& m = state(n, "exp_avg", p.shape(), DType::f32);
      Tensor& v = state(n, "exp_avg_sq", p.shape(), DType::f32);
      kernels::adamw_step(p, grad.to(DType::f32), m, v, g.lr, opts_.beta1, opts_.beta2, opts_.eps, g.weight_decay,
                          step_);
    }
  }
}

std::vector<ParamGroup> decay_groups(const std::vector<std::pair<std::string, Tensor>>& named, double weight_decay) {
  ParamGroup decay, no_decay;
  decay.weight_decay = weight_decay;
  no_decay.weight_decay = 0.0;
  for (const auto& [n, p] : named) {
    if (!p.requires_grad()) continue;
    (p.dim() >= 2 ? decay : no_decay).params.emplace_back(n, p);
  }
  std::vector<ParamGroup> out;
  if (!decay.params.empty()) out.push_back(std::move(decay));
  if (!no_decay.params.empty()) out.push_back(std::move(no_decay));
  return out;
}

}  // namespace lathe::optim
