#include "optim/adamw.h"

#include "kernels/ops.h"

namespace lathe::optim {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  LATHE_CHECK(opts.lr >= 0) << "AdamW: lr must be >= 0, got " << opts.lr;
  LATHE_CHECK(opts.beta1 >= 0 && opts.beta1 < 1) << "AdamW: beta1 must be in [0, 1), got " << opts.beta1;
  LATHE_CHECK(opts.beta2 >= 0 && opts.beta2 < 1) << "AdamW: beta2 must be in [0, 1), got " << opts.beta2;
  LATHE_CHECK(opts.eps > 0) << "AdamW: eps must be > 0, got " << opts.eps;
  for (auto& g : groups_)
    for (auto& [n, p] : g.params)
      LATHE_CHECK(p.dtype() == DType::f32) << "AdamW: parameter '" << n << "' is " << dtype_name(p.dtype())
                                           << "; keep f32 master weights for the optimizer";
  set_lr(opts.lr);
}

StateMap AdamW::init_state(const std::string&, const Tensor& param, const ParamGroup&) const {
  return {{"exp_avg", Tensor::zeros(param.shape(), DType::f32, param.device())},
          {"exp_avg_sq", Tensor::zeros(param.shape(), DType::f32, param.device())}};
}

void AdamW::update(const std::string&, const Tensor& param, const Tensor& grad, StateMap& state,
                   const ParamGroup& group, int64_t step) {
  kernels::adamw_step(param, grad.to(DType::f32), state.at("exp_avg"), state.at("exp_avg_sq"), group.lr, opts_.beta1,
                      opts_.beta2, opts_.eps, group.weight_decay, step);
}

GroupLayout decay_layout(double weight_decay, bool decay_1d) {
  GroupLayout l;
  l.fallback.name = "decay";
  l.fallback.weight_decay = weight_decay;
  if (!decay_1d) {
    GroupSpec nd;
    nd.name = "no_decay";
    nd.max_dim = 1;
    nd.weight_decay = 0.0;
    l.specs.push_back(nd);
  }
  return l;
}

std::vector<ParamGroup> decay_groups(const NamedParams& named, double weight_decay, bool decay_1d) {
  GroupLayout l = decay_layout(weight_decay, decay_1d);
  return assign_groups(named, l.specs, l.fallback);
}

}  // namespace lathe::optim
