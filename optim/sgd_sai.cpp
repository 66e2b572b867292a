#include "optim/sgd_sai.h"

#include <algorithm>
#include <cmath>

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

double gsnr_from_moments(double n, double sum, double sumsq, double eps) {
  const double norm = std::sqrt(std::max(sumsq, 0.0));
  if (n <= 1) return norm / eps;
  const double var = std::max((sumsq - sum * sum / n) / (n - 1), 0.0);
  return norm / (std::sqrt(var) + eps);
}

void SGDSaI::set_shard_statistics(std::map<std::string, int64_t> sharded, std::function<void(Tensor&)> sum_over_shards) {
  sharded_ = std::move(sharded);
  sum_over_shards_ = std::move(sum_over_shards);
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

void SGDSaI::update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
                    const ParamGroup& group, int64_t step) {
  Tensor& gsnr = state.at("gsnr");
  LATHE_CHECK(!(sum_over_shards_ && sharded_.count(name)))
      << "SGD_SAI: parameter '" << name << "' is a tensor-parallel slice, whose g-SNR needs step() (not layer-wise updates)";
  if (step == 1) gsnr.copy_(gsnr_of(grad, opts_.eps));
  apply(param, grad, state, group, step,
        scale_of(gsnr, opts_.normalize ? max_gsnr(param.device()) : Tensor()));
}

void SGDSaI::step() {
  begin_step();
  std::vector<std::vector<PendingUpdate>> pending(groups_.size());
  std::vector<const PendingUpdate*> split;  // first updates of tensor-parallel slices
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    pending[gi] = pending_updates(gi);
    // Every first update's g-SNR before any update, so normalize sees all of them.
    for (const auto& u : pending[gi]) {
      if (u.step != 1) continue;
      if (sum_over_shards_ && sharded_.count(u.name))
        split.push_back(&u);
      else
        u.state->at("gsnr").copy_(gsnr_of(u.grad, opts_.eps));
    }
  }
  if (!split.empty()) {
    // n, sum, sum of squares of each slice, summed over the slices' ranks at once.
    const int64_t k = static_cast<int64_t>(split.size());
    Tensor m = Tensor::zeros({k, 3}, DType::f64);
    double* mv = m.data<double>();
    for (int64_t i = 0; i < k; ++i) {
      const Tensor g = split[static_cast<size_t>(i)]->grad.to(DType::f64).contiguous();
      mv[3 * i] = static_cast<double>(sharded_.at(split[static_cast<size_t>(i)]->name));  // padding rows are zero
      mv[3 * i + 1] = kernels::reduce(ReduceOp::sum, g, {}).item();
      const double nrm = kernels::reduce(ReduceOp::norm, g, {}).item();
      mv[3 * i + 2] = nrm * nrm;
    }
    sum_over_shards_(m);
    mv = m.data<double>();
    for (int64_t i = 0; i < k; ++i) {
      Tensor& gsnr = split[static_cast<size_t>(i)]->state->at("gsnr");
      gsnr.copy_(Tensor::scalar(gsnr_from_moments(mv[3 * i], mv[3 * i + 1], mv[3 * i + 2], opts_.eps), DType::f32)
                     .to(gsnr.device()));
    }
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
