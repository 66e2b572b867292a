#include "optim/optimizer.h"

#include <cmath>

#include "core/memory.h"
#include "kernels/ops.h"

namespace lathe::optim {

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params) p.set_grad(Tensor());
}

void Optimizer::set_lr(double lr) {
  if (lr_factor_.size() != groups_.size()) lr_factor_.assign(groups_.size(), 1.0);
  for (size_t i = 0; i < groups_.size(); ++i) groups_[i].lr = lr * lr_factor_[i];
}

Tensor& Optimizer::state(const std::string& param, const std::string& key, const Shape& shape, DType dt) {
  auto& slot = state_[param][key];
  if (!slot.defined()) {
    MemCategoryGuard g(MemCategory::optimizer_state);
    slot = Tensor::zeros(shape, dt);
  }
  return slot;
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& [pname, entries] : state_)
    for (const auto& [key, t] : entries) out[pname + "/" + key] = t;
  out["__step__"] = Tensor::scalar(static_cast<double>(step_), DType::i64);
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& sd) {
  auto it = sd.find("__step__");
  LATHE_CHECK(it != sd.end()) << name() << ": optimizer state has no __step__ entry";
  step_ = static_cast<int64_t>(it->second.item());
  std::map<std::string, std::map<std::string, Tensor>> next;
  for (const auto& [k, t] : sd) {
    if (k == "__step__") continue;
    auto slash = k.rfind('/');
    LATHE_CHECK(slash != std::string::npos) << name() << ": bad optimizer state key '" << k << "'";
    std::string pname = k.substr(0, slash);
    bool known = false;
    for (const auto& g : groups_)
      for (const auto& [n, p] : g.params)
        if (n == pname) {
          known = true;
          LATHE_CHECK(t.shape() == p.shape() || t.dim() == 0)
              << name() << ": state '" << k << "' has shape " << t.shape_str() << " but the parameter has "
              << p.shape_str();
        }
    LATHE_CHECK(known) << name() << ": optimizer state for unknown parameter '" << pname << "'";
    MemCategoryGuard g(MemCategory::optimizer_state);
    next[pname][k.substr(slash + 1)] = t.clone();
  }
  // Every parameter with state now must have had state in the checkpoint (a missing one would
  // silently restart its moments).
  for (const auto& [pname, entries] : state_)
    LATHE_CHECK(next.count(pname)) << name() << ": checkpoint lacks optimizer state for '" << pname << "'";
  state_ = std::move(next);
}

std::vector<int64_t> Optimizer::state_bytes() const {
  std::vector<int64_t> out;
  for (const auto& g : groups_) {
    int64_t b = 0;
    for (const auto& [n, p] : g.params) {
      auto it = state_.find(n);
      if (it == state_.end()) continue;
      for (const auto& [k, t] : it->second) b += static_cast<int64_t>(t.nbytes());
    }
    out.push_back(b);
  }
  return out;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  double sq = 0.0;
  for (const auto& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    double n = kernels::reduce(kernels::ReduceOp::norm, g.to(DType::f64), {}).item();
    sq += n * n;
  }
  double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm) {
    double s = max_norm / (norm + 1e-6);
    for (const auto& p : params) {
      Tensor g = p.grad();
      if (g.defined()) kernels::scale_(g, s);
    }
  }
  return norm;
}

}  // namespace lathe::optim
