#include "optim/sgd.h"

#include "kernels/ops.h"

namespace lathe::optim {

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  LATHE_CHECK(opts.lr >= 0) << "SGD: lr must be >= 0, got " << opts.lr;
  LATHE_CHECK(opts.momentum >= 0) << "SGD: momentum must be >= 0, got " << opts.momentum;
  LATHE_CHECK(!opts.nesterov || opts.momentum > 0) << "SGD: nesterov needs momentum > 0";
  for (auto& g : groups_)
    for (auto& [n, p] : g.params)
      LATHE_CHECK(p.dtype() == DType::f32) << "SGD: parameter '" << n << "' is " << dtype_name(p.dtype())
                                           << "; keep f32 master weights for the optimizer";
  set_lr(opts.lr);
}

StateMap SGD::init_state(const std::string&, const Tensor& param, const ParamGroup&) const {
  if (opts_.momentum == 0) return {};
  return {{"momentum_buffer", Tensor::zeros(param.shape(), DType::f32, param.device())}};
}

void SGD::update(const std::string&, const Tensor& param, const Tensor& grad, StateMap& state,
                 const ParamGroup& group, int64_t) {
  // d starts as the gradient; a copy only when it is modified (decay or nesterov), since the
  // caller's gradient must stay as it was.
  Tensor d = grad.to(DType::f32);
  const bool modifies = group.weight_decay != 0 || opts_.nesterov;
  if (modifies && d.storage() == grad.storage()) d = d.clone();
  if (group.weight_decay != 0) kernels::add_(d, param, group.weight_decay);
  if (opts_.momentum != 0) {
    const Tensor& buf = state.at("momentum_buffer");
    kernels::scale_(buf, opts_.momentum);
    kernels::add_(buf, d);
    if (opts_.nesterov)
      kernels::add_(d, buf, opts_.momentum);
    else
      d = buf;
  }
  kernels::add_(param, d, -group.lr);
}

}  // namespace lathe::optim
