#include "optim/sgd_sai.h"

#include <algorithm>

#include "kernels/ops.h"

namespace lathe::optim {

using kernels::BinaryOp;
using kernels::ReduceOp;

Tensor gsnr_of(const Tensor& grad, double eps) {
  const Tensor g = grad.to(DType::f32).contiguous();
  const Tensor norm = kernels::reduce(ReduceOp::norm, g, {}).to(DType::f32);
  const Tensor e = Tensor::scalar(eps, DType::f32, g.device());
  // One element: torch.std gives NaN, which the released code turns into 0 (nan_to_num), so
  // gsnr = |g| / eps.
  if (g.numel() <= 1) return kernels::binary(BinaryOp::div, norm, e);
  const Tensor sd =
      kernels::unary(kernels::UnaryOp::sqrt, kernels::reduce(ReduceOp::var, g, {}, false, 1).to(DType::f32));
  return kernels::binary(BinaryOp::div, norm, kernels::binary(BinaryOp::add, sd, e));
}

SGDSaI::SGDSaI(std::vector<ParamGroup> groups, SGDSaIOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  LATHE_CHECK(opts.lr >= 0) << "SGD_SAI: lr must be >= 0, got " << opts.lr;
  LATHE_CHECK(opts.momentum >= 0 && opts.momentum < 1) << "SGD_SAI: momentum must be in [0, 1), got " << opts.momentum;
  LATHE_CHECK(opts.eps > 0) << "SGD_SAI: eps must be > 0, got " << opts.eps;
  for (auto& g : groups_)
    for (auto& [n, p] : g.params)
      LATHE_CHECK(p.dtype() == DType::f32) << "SGD_SAI: parameter '" << n << "' is " << dtype_name(p.dtype())
                                           << "; keep f32 master weights for the optimizer";
  set_lr(opts.lr);
}

StateMap SGDSaI::init_state(const std::string&, const Tensor& param, const ParamGroup&) const {
  StateMap s{{"gsnr", Tensor::zeros({}, DType::f32, param.device())}};
  if (opts_.momentum > 0) s["momentum_buffer"] = Tensor::zeros(param.shape(), DType::f32, param.device());
  return s;
}

Tensor SGDSaI::max_gsnr(Device dev) const {
  std::vector<Tensor> all;
  for (const auto& g : groups_)
    for (const auto& [n, p] : g.params) {
      const StateMap& s = param_state(n);
      auto it = s.find("gsnr");
      if (it != s.end()) all.push_back(it->second.device() == dev ? it->second.reshape({1}) : it->second.to(dev).reshape({1}));
    }
  LATHE_CHECK(!all.empty()) << "SGD_SAI: no g-SNR known yet";
  return kernels::reduce(ReduceOp::max, kernels::concat(all, 0), {});
}

Tensor SGDSaI::scale_of(const Tensor& gsnr, const Tensor& max) const {
  if (!opts_.normalize) return gsnr;
  return kernels::binary(BinaryOp::div, gsnr, max);
}

void SGDSaI::apply(const Tensor& param, const Tensor& grad, StateMap& state, const ParamGroup& group, int64_t step,
                   const Tensor& scale) {
  auto buf = state.find("momentum_buffer");
  kernels::sgd_sai_step(param, grad.to(DType::f32), buf == state.end() ? Tensor() : buf->second, scale, group.lr,
                        opts_.momentum, group.weight_decay, step == 1);
}

void SGDSaI::update(const std::string&, const Tensor& param, const Tensor& grad, StateMap& state,
                    const ParamGroup& group, int64_t step) {
  Tensor& gsnr = state.at("gsnr");
  if (step == 1) gsnr.copy_(gsnr_of(grad, opts_.eps));
  apply(param, grad, state, group, step,
        scale_of(gsnr, opts_.normalize ? max_gsnr(param.device()) : Tensor()));
}

void SGDSaI::step() {
  begin_step();
  std::vector<std::vector<PendingUpdate>> pending(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    pending[gi] = pending_updates(gi);
    // Every first update's g-SNR before any update, so normalize sees all of them.
    for (const auto& u : pending[gi])
      if (u.step == 1) u.state->at("gsnr").copy_(gsnr_of(u.grad, opts_.eps));
  }
  std::vector<std::pair<Device, Tensor>> max_by_dev;  // computed once per device and step
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (const auto& u : pending[gi]) {
      Tensor mx;
      if (opts_.normalize) {
        const Device d = u.param.device();
        auto it = std::find_if(max_by_dev.begin(), max_by_dev.end(), [&](const auto& e) { return e.first == d; });
        if (it == max_by_dev.end()) it = max_by_dev.insert(max_by_dev.end(), {d, max_gsnr(d)});
        mx = it->second;
      }
      apply(u.param, u.grad, *u.state, groups_[gi], u.step, scale_of(u.state->at("gsnr"), mx));
    }
    commit_updates(pending[gi]);
  }
}

}  // namespace lathe::optim
