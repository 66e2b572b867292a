#include "optim/adamw.h"

#include <algorithm>

#include "kernels/blockwise8.h"
#include "kernels/ops.h"
#include "optim/blockwise8.h"

namespace lathe::optim {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  LATHE_CHECK(opts.lr >= 0) << "AdamW: lr must be >= 0, got " << opts.lr;
  LATHE_CHECK(opts.beta1 >= 0 && opts.beta1 < 1) << "AdamW: beta1 must be in [0, 1), got " << opts.beta1;
  LATHE_CHECK(opts.beta2 >= 0 && opts.beta2 < 1) << "AdamW: beta2 must be in [0, 1), got " << opts.beta2;
  LATHE_CHECK(opts.eps > 0) << "AdamW: eps must be > 0, got " << opts.eps;
  LATHE_CHECK(opts.state_bits == 32 || opts.state_bits == 8)
      << "AdamW: state_bits must be 8 or 32, got " << opts.state_bits;
  LATHE_CHECK(opts.state_bits == 32 || kernels::valid_quant_block(opts.block_size))
      << "AdamW: 8-bit block size must be a power of two in [64, 4096], got " << opts.block_size;
  try {
    f32_re_ = std::regex(opts.f32_params.empty() ? std::string("$^") : opts.f32_params, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    LATHE_FAIL() << "AdamW: f32_params \"" << opts.f32_params << "\" is not a valid regex (" << e.what() << ")";
  }
  for (auto& g : groups_)
    for (auto& [n, p] : g.params)
      LATHE_CHECK(p.dtype() == DType::f32) << "AdamW: parameter '" << n << "' is " << dtype_name(p.dtype())
                                           << "; keep f32 master weights for the optimizer";
  set_lr(opts.lr);
}

bool AdamW::uses_8bit(const std::string& name, const Tensor& param) const {
  return opts_.state_bits == 8 && param.numel() >= opts_.min_8bit_size && !std::regex_match(name, f32_re_);
}

StateMap AdamW::init_state(const std::string& name, const Tensor& param, const ParamGroup&) const {
  if (uses_8bit(name, param)) return init_moments8(param.shape(), param.device(), opts_.block_size);
  return {{"exp_avg", Tensor::zeros(param.shape(), DType::f32, param.device())},
          {"exp_avg_sq", Tensor::zeros(param.shape(), DType::f32, param.device())}};
}

void AdamW::update(const std::string&, const Tensor& param, const Tensor& grad, StateMap& state,
                   const ParamGroup& group, int64_t step) {
  if (!state.count("exp_avg")) {
    adam_step8(param, grad, state, "", group.lr, opts_.beta1, opts_.beta2, opts_.eps, group.weight_decay, step,
               opts_.variant, opts_.block_size);
    return;
  }
  kernels::adamw_step(param, grad.to(DType::f32), state.at("exp_avg"), state.at("exp_avg_sq"), group.lr, opts_.beta1,
                      opts_.beta2, opts_.eps, group.weight_decay, step, opts_.variant);
}

void AdamW::step() {
  begin_step();
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    const std::vector<PendingUpdate> pending = pending_updates(gi);
    // Buckets by (device, step count): a parameter updated alone through step_param may be
    // ahead of the others, and one multi-tensor call serves one device.
    struct Bucket {
      Device dev;
      int64_t step;
      std::vector<PendingUpdate> ups;
    };
    std::vector<Bucket> buckets;
    std::vector<PendingUpdate> done8;
    for (const auto& u : pending) {
      if (!u.state->count("exp_avg")) {  // 8-bit moments: one fused kernel per tensor
        update(u.name, u.param, u.grad, *u.state, g, u.step);
        done8.push_back(u);
        continue;
      }
      auto b = std::find_if(buckets.begin(), buckets.end(),
                            [&](const Bucket& k) { return k.dev == u.param.device() && k.step == u.step; });
      if (b == buckets.end()) b = buckets.insert(buckets.end(), Bucket{u.param.device(), u.step, {}});
      b->ups.push_back(u);
    }
    commit_updates(done8);
    for (const Bucket& b : buckets) {
      std::vector<Tensor> ps, gs, ms, vs;
      for (const auto& u : b.ups) {
        ps.push_back(u.param);
        // bf16 gradients are widened inside the kernel (exactly, as .to(f32) would).
        const DType gd = u.grad.dtype();
        gs.push_back(gd == DType::f32 || gd == DType::bf16 ? u.grad : u.grad.to(DType::f32));
        ms.push_back(u.state->at("exp_avg"));
        vs.push_back(u.state->at("exp_avg_sq"));
      }
      kernels::adamw_step_multi(ps, gs, ms, vs, g.lr, opts_.beta1, opts_.beta2, opts_.eps, g.weight_decay, b.step,
                                opts_.variant);
      commit_updates(b.ups);
    }
  }
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
