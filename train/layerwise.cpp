// Layer-wise optimizer updates; see layerwise.h.
#include "train/layerwise.h"

#include <cmath>

#include "autograd/hooks.h"
#include "kernels/ops.h"
#include "train/grad_sync.h"

namespace lathe::train {

LayerwiseUpdater::LayerwiseUpdater(optim::Optimizer& opt, GradSync& sync) : opt_(opt), sync_(sync) {
  for (const auto& g : opt_.groups())
    for (const auto& np : g.params) {
      index_[np.first] = params_.size();
      params_.push_back(np);
    }
  norm_sq_.resize(params_.size());
  deferred_.assign(params_.size(), 0);
  if (sync_.active()) {
    sync_.set_on_reduced([this](const std::string& name, const Tensor& param, const Tensor& mean) {
      auto it = index_.find(name);
      if (it == index_.end()) return;  // reduced but not optimized (none today)
      param.set_grad(mean);            // a view of the bucket: no copy
      if (!deferred_[it->second]) update(it->second);  // else kept (alive) for finish()
    });
    return;
  }
  for (size_t i = 0; i < params_.size(); ++i)
    hook_ids_.push_back(autograd::add_grad_ready_hook(params_[i].second, [this, i](const Tensor&) {
      if (armed_ && !deferred_[i]) update(i);
    }));
}

LayerwiseUpdater::~LayerwiseUpdater() {
  if (sync_.active()) sync_.set_on_reduced({});
  for (size_t i = 0; i < hook_ids_.size(); ++i) autograd::remove_grad_ready_hook(params_[i].second, hook_ids_[i]);
}

void LayerwiseUpdater::set_tensor_parallel(const std::set<std::string>& deferred, std::set<std::string> sharded,
                                           std::shared_ptr<parallel::Communicator> tp) {
  for (size_t i = 0; i < params_.size(); ++i) deferred_[i] = deferred.count(params_[i].first) ? 1 : 0;
  sharded_ = std::move(sharded);
  tp_ = std::move(tp);
}

void LayerwiseUpdater::before_backward(bool last_micro_batch) { armed_ = last_micro_batch; }

void LayerwiseUpdater::update(size_t i) {
  const auto& [name, p] = params_[i];
  // The global norm's part, before the update and while the gradient exists: the same
  // per-tensor value optim::grad_norm_squared computes.
  norm_sq_[i] = optim::grad_norm_squared({p});
  opt_.step_param(name);
  p.set_grad(Tensor());
  ++updated_;
}

double LayerwiseUpdater::finish() {
  // Gradients the last backward did not reach (used only by earlier micro-batches). With
  // several ranks the reducer has handed every gradient over already and released the rest.
  last_before_ = updated_;
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].second.grad().defined()) update(i);
  last_in_finish_ = updated_ - last_before_;
  armed_ = false;
  opt_.count_step();
  // Summed in the optimizer's parameter order, as optim::grad_norm_squared sums, so the norm
  // matches the ordinary step's bit for bit.
  std::vector<Tensor> parts, sharded;
  for (size_t i = 0; i < norm_sq_.size(); ++i) {
    Tensor& t = norm_sq_[i];
    if (t.defined()) (sharded_.count(params_[i].first) ? sharded : parts).push_back(std::move(t));
    t = Tensor();
  }
  updated_ = 0;
  auto sum = [](const std::vector<Tensor>& v) -> double {
    if (v.empty()) return 0.0;
    return (v.size() == 1 ? v[0] : kernels::reduce(kernels::ReduceOp::sum, kernels::stack(v, 0), {})).item();
  };
  double sq = sum(parts);
  if (tp_ && tp_->size() > 1) {  // every TP rank calls this once per step, whatever it holds
    Tensor s = Tensor::scalar(sum(sharded), DType::f64);
    tp_->all_reduce(s);
    sq += s.item();
  } else {
    sq += sum(sharded);
  }
  return std::sqrt(sq);
}

}  // namespace lathe::train
