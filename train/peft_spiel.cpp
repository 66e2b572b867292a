#include "train/peft_spiel.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "train/hdf5_io.h"

namespace lathe::train {

namespace {

using kernels::BinaryOp;

// 1 - beta^age per element.
Tensor bias_correction(const Tensor& age, double beta) {
  return kernels::affine(kernels::unary(kernels::UnaryOp::exp, kernels::affine(age, std::log(beta), 0.0)), -1.0, 1.0);
}

const char* const kValues = ".sft_values";

}  // namespace

void spiel_adam_update(const Tensor& values, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& age,
                       double lr, double weight_decay, const SpielAdamOptions& o) {
  autograd::NoGradGuard ng;
  const Tensor g = grad.dtype() == DType::f32 ? grad : grad.to(DType::f32);
  if (weight_decay != 0) kernels::scale_(values, 1.0 - lr * weight_decay);  // decoupled, toward the base weight
  kernels::scale_(m, o.beta1);
  kernels::add_(m, g, 1.0 - o.beta1);
  kernels::scale_(v, o.beta2);
  kernels::add_(v, kernels::binary(BinaryOp::mul, g, g), 1.0 - o.beta2);
  age.copy_(kernels::affine(age, 1.0, 1.0));
  // SftAdamW: each entry's own bias correction, so a regrown entry restarts its warm-up.
  const Tensor denom = kernels::affine(
      kernels::unary(kernels::UnaryOp::sqrt, kernels::binary(BinaryOp::div, v, bias_correction(age, o.beta2))), 1.0,
      o.eps);
  const Tensor step = kernels::binary(BinaryOp::div, kernels::binary(BinaryOp::div, m, bias_correction(age, o.beta1)), denom);
  kernels::add_(values, step, -lr);
}

void spiel_sm3_update(const Tensor& grad, const Tensor& indices, const Tensor& rows, const Tensor& cols,
                      const Tensor& row, const Tensor& col) {
  autograd::NoGradGuard ng;
  const Tensor g = grad.dtype() == DType::f32 ? grad : grad.to(DType::f32);
  const Tensor nu = kernels::binary(
      BinaryOp::add,
      kernels::binary(BinaryOp::minimum, kernels::index_select(row, 0, rows), kernels::index_select(col, 0, cols)),
      kernels::binary(BinaryOp::mul, g, g));
  // The max of nu per row and per column: nu placed in a dense [out, in] scratch (the
  // indices are distinct), then two reductions; nu >= 0, so the empty places do not matter.
  const int64_t out = row.numel(), in = col.numel();
  const Tensor dense =
      kernels::index_add(Tensor::zeros({out * in}, DType::f32, g.device()), 0, indices, nu).reshape({out, in});
  row.copy_(kernels::binary(BinaryOp::maximum, row, kernels::reduce(kernels::ReduceOp::max, dense, {1})));
  col.copy_(kernels::binary(BinaryOp::maximum, col, kernels::reduce(kernels::ReduceOp::max, dense, {0})));
}

SpielOptimizer::SpielOptimizer(std::unique_ptr<optim::Optimizer> inner,
                               std::map<std::string, peft::SparseDeltaLinear*> layers, SpielAdamOptions o)
    : optim::Optimizer(inner->groups()), inner_(std::move(inner)), layers_(std::move(layers)), o_(o) {
  LATHE_CHECK(o.beta1 > 0 && o.beta1 < 1 && o.beta2 > 0 && o.beta2 < 1)
      << "SpIEL: the values' Adam needs betas in (0, 1), got " << o.beta1 << ", " << o.beta2;
  set_paging(inner_->paging());
}

optim::StateMap SpielOptimizer::init_state(const std::string& name, const Tensor& param,
                                           const optim::ParamGroup& group) const {
  auto it = layers_.find(name);
  if (it == layers_.end()) return inner_->init_state(name, param, group);
  const Device d = param.device();
  optim::StateMap s{{"exp_avg", Tensor::zeros(param.shape(), DType::f32, d)},
                    {"exp_avg_sq", Tensor::zeros(param.shape(), DType::f32, d)},
                    {"age", Tensor::zeros(param.shape(), DType::f32, d)}};
  if (o_.sm3) {
    s["sm3_row"] = Tensor::zeros({it->second->out_features()}, DType::f32, d);
    s["sm3_col"] = Tensor::zeros({it->second->in_features()}, DType::f32, d);
  }
  return s;
}

void SpielOptimizer::update(const std::string& name, const Tensor& param, const Tensor& grad, optim::StateMap& state,
                            const optim::ParamGroup& group, int64_t step) {
  auto it = layers_.find(name);
  if (it == layers_.end()) {
    inner_->update(name, param, grad, state, group, step);
    return;
  }
  if (o_.sm3)
    spiel_sm3_update(grad, it->second->indices(), it->second->rows(), it->second->cols(), state.at("sm3_row"),
                     state.at("sm3_col"));
  spiel_adam_update(param, grad, state.at("exp_avg"), state.at("exp_avg_sq"), state.at("age"), group.lr,
                    group.weight_decay, o_);
}

SpielSelector::SpielSelector(models::CausalLM& model, const peft::SpielOptions& opts, parallel::Communicator& comm)
    : model_(model), opts_(opts), comm_(comm) {
  for (auto& [n, l] : peft::spiel_layers(model)) layers_.push_back({n, l, {}, {}, {}});
  LATHE_CHECK(!layers_.empty()) << "SpIEL: the model carries no sparse delta";
}

std::unique_ptr<optim::Optimizer> SpielSelector::wrap(std::unique_ptr<optim::Optimizer> inner, double beta1,
                                                      double beta2, double eps) {
  std::map<std::string, peft::SparseDeltaLinear*> m;
  for (const Layer& l : layers_) m[l.name + kValues] = l.l;
  SpielAdamOptions o;
  o.beta1 = beta1;
  o.beta2 = beta2;
  o.eps = eps;
  o.sm3 = opts_.regrow == peft::SpielRegrow::ma;
  auto opt = std::make_unique<SpielOptimizer>(std::move(inner), std::move(m), o);
  opt_ = opt.get();
  return opt;
}

void SpielSelector::start() {
  if (opts_.regrow == peft::SpielRegrow::ag) set_phase(true);
}

void SpielSelector::set_phase(bool on) {
  in_phase_ = on;
  has_cand_ = false;
  n_ = 0;
  for (Layer& l : layers_) {
    // Dense weight gradients during a selection phase only (SpIEL-AG); W stays frozen.
    l.l->collect_dense_grad(on);
    l.cand = l.sum = l.sq = Tensor();
  }
}

void SpielSelector::accumulate() {
  autograd::NoGradGuard ng;
  for (Layer& l : layers_) {
    const Tensor w = l.l->base_weight();
    const int64_t k = l.l->budget();
    // This step's gradient (its micro-batches summed); the sink starts the next step at zero.
    Tensor g = l.l->dense_grad().clone().reshape({w.numel()});
    l.l->dense_grad().zero_();
    if (comm_.size() > 1) comm_.all_reduce(g, parallel::ReduceOp::avg);
    if (!has_cand_) {
      // The phase's candidates: the k largest |G| of its first step (ties by index).
      const std::vector<float> a = g.to(Device::cpu()).to_vector<float>();
      std::vector<int64_t> order(a.size());
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t x, int64_t y) {
        const float ax = std::abs(a[x]), ay = std::abs(a[y]);
        return ax != ay ? ax > ay : x < y;
      });
      order.resize(static_cast<size_t>(k));
      std::sort(order.begin(), order.end());
      l.cand = Tensor::from_vector<int64_t>(order, {k}).to(w.device());
      l.sum = Tensor::zeros({k}, DType::f32, w.device());
      l.sq = Tensor::zeros({k}, DType::f32, w.device());
    }
    const Tensor at = kernels::index_select(g, 0, l.cand);
    kernels::add_(l.sum, at);
    kernels::add_(l.sq, kernels::binary(BinaryOp::mul, at, at));
  }
  has_cand_ = true;
  ++n_;
}

void SpielSelector::reselect(double p) {
  const bool ag = opts_.regrow == peft::SpielRegrow::ag;
  if (ag && n_ == 0) return;
  autograd::NoGradGuard ng;
  const double b1 = opt_ ? opt_->options().beta1 : 0.9, b2 = opt_ ? opt_->options().beta2 : 0.999;
  for (Layer& l : layers_) {
    const std::string vname = l.name + kValues;
    const optim::StateMap* st = opt_ && opt_->param_step(vname) > 0 ? &opt_->param_state(vname) : nullptr;
    std::vector<int64_t> replaced;
    std::vector<float> sum, sq;
    std::unordered_map<int64_t, size_t> pos;
    if (ag) {
      const std::vector<int64_t> cand = l.cand.to(Device::cpu()).to_vector<int64_t>();
      sum = l.sum.to(Device::cpu()).to_vector<float>();
      sq = l.sq.to(Device::cpu()).to_vector<float>();
      std::vector<float> score(sum.size());
      for (size_t i = 0; i < sum.size(); ++i) {
        score[i] = std::abs(sum[i]);
        pos[cand[i]] = i;
      }
      replaced = l.l->reselect_among(cand, score, p);
    } else {
      LATHE_CHECK(st) << "SpIEL-MA: no SM3 moments for " << vname << " before its first update";
      const Tensor row = st->at("sm3_row"), col = st->at("sm3_col");
      replaced = l.l->reselect(
          kernels::binary(BinaryOp::mul, row.reshape({row.numel(), 1}), col.reshape({1, col.numel()})), p);
    }
    if (!st || replaced.empty()) continue;
    // The grown entries' Adam state (see the header).
    const std::vector<int64_t> idx = l.l->indices().to(Device::cpu()).to_vector<int64_t>();
    std::vector<float> m = st->at("exp_avg").to(Device::cpu()).to_vector<float>();
    std::vector<float> v = st->at("exp_avg_sq").to(Device::cpu()).to_vector<float>();
    std::vector<float> age = st->at("age").to(Device::cpu()).to_vector<float>();
    const double n = static_cast<double>(n_);
    for (int64_t s : replaced) {
      if (ag) {
        const size_t j = pos.at(idx[static_cast<size_t>(s)]);
        m[s] = static_cast<float>(sum[j] / n * (1 - std::pow(b1, n)));
        v[s] = static_cast<float>(sq[j] / n * (1 - std::pow(b2, n)));
        age[s] = static_cast<float>(n);
      } else {
        m[s] = v[s] = age[s] = 0.0f;
      }
    }
    const int64_t k = l.l->budget();
    const Device d = l.l->values().device();
    st->at("exp_avg").copy_(Tensor::from_vector<float>(m, {k}).to(d));
    st->at("exp_avg_sq").copy_(Tensor::from_vector<float>(v, {k}).to(d));
    st->at("age").copy_(Tensor::from_vector<float>(age, {k}).to(d));
  }
  ++reselections_;
}

void SpielSelector::after_step(int64_t c) {
  const bool ag = opts_.regrow == peft::SpielRegrow::ag;
  if (ag && in_phase_) accumulate();
  const peft::SpielStep s = peft::spiel_schedule(opts_.schedule, c);
  if (s.reselect) {
    reselect(s.p);
    if (ag) set_phase(false);
  }
  if (s.begin_phase && ag) set_phase(true);
}

std::shared_ptr<CheckpointPart> SpielSelector::checkpoint_part() {
  return std::make_shared<FunctionPart>(
      "spiel selection",
      [this](H5Writer& w) {
        write_i64(w, "spiel/in_phase", in_phase_ ? 1 : 0);
        write_i64(w, "spiel/has_candidates", has_cand_ ? 1 : 0);
        write_i64(w, "spiel/steps_accumulated", n_);
        write_i64(w, "spiel/reselections", reselections_);
        if (!has_cand_) return;
        for (const Layer& l : layers_) {
          w.write_tensor("spiel/" + l.name + ".candidates", l.cand);
          w.write_tensor("spiel/" + l.name + ".grad_sum", l.sum);
          w.write_tensor("spiel/" + l.name + ".grad_sq_sum", l.sq);
        }
      },
      [this](const H5Reader& r) {
        if (!r.exists("spiel/in_phase"))
          throw CheckpointError(r.path() + " has no spiel/ selection state: it was not written by a SPIEL run");
        set_phase(read_i64(r, "spiel/in_phase") != 0);
        has_cand_ = read_i64(r, "spiel/has_candidates") != 0;
        n_ = read_i64(r, "spiel/steps_accumulated");
        reselections_ = read_i64(r, "spiel/reselections");
        if (!has_cand_) return;
        for (Layer& l : layers_) {
          const Shape k{l.l->budget()};
          const Device d = l.l->values().device();
          l.cand = r.read_tensor("spiel/" + l.name + ".candidates", DType::i64, k).to(d);
          l.sum = r.read_tensor("spiel/" + l.name + ".grad_sum", DType::f32, k).to(d);
          l.sq = r.read_tensor("spiel/" + l.name + ".grad_sq_sum", DType::f32, k).to(d);
        }
      });
}

}  // namespace lathe::train
