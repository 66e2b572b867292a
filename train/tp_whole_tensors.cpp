// Whole-tensor stand-ins for GaLore and Fira under TP; see tp_whole_tensors.h.
#include "train/tp_whole_tensors.h"

#include "core/memory.h"

namespace lathe::train {

WholeTensorUpdates::WholeTensorUpdates(const std::vector<std::pair<std::string, Tensor>>& trainable,
                                       const parallel::TensorParallelShards& shards, const models::ModelSpec& spec,
                                       std::shared_ptr<parallel::Communicator> tp, int64_t vocab_pad_multiple)
    : spec_(spec), tp_(std::move(tp)), vocab_pad_multiple_(vocab_pad_multiple) {
  for (const auto& [name, p] : trainable) {
    if (!shards.sharded.count(name) || tp_->size() == 1) {
      params_.emplace_back(name, p);
      continue;
    }
    Tensor whole;
    {
      MemCategoryGuard guard(MemCategory::parameters);
      whole = gather_full(name, p.detach());
    }
    whole.set_requires_grad(true);
    split_.push_back(Split{params_.size(), p});
    params_.emplace_back(name, whole);
  }
}

Tensor WholeTensorUpdates::gather_full(const std::string& name, const Tensor& shard) const {
  return parallel::all_gather_shards(name, shard, *tp_, spec_).contiguous();
}

void WholeTensorUpdates::gather() {
  for (const Split& s : split_) {
    const auto& [name, whole] = params_[s.index];
    whole.detach().copy_(gather_full(name, s.shard.detach()));
    // Under TP a tensor's slices get their gradients together; zeros keep the collective
    // matched where a rank has none.
    const Tensor g = s.shard.grad();
    Tensor full;
    {
      MemCategoryGuard guard(MemCategory::gradients);
      full = gather_full(name, g.defined() ? g : Tensor::zeros(s.shard.shape(), s.shard.dtype(), s.shard.device()));
    }
    if (g.defined()) whole.set_grad(full);
    s.shard.set_grad(Tensor());
  }
}

void WholeTensorUpdates::scatter() {
  for (const Split& s : split_) {
    const auto& [name, whole] = params_[s.index];
    s.shard.detach().copy_(
        parallel::slice_shard(name, whole.detach(), spec_, tp_->size(), tp_->rank(), vocab_pad_multiple_));
    whole.set_grad(Tensor());
  }
}

}  // namespace lathe::train
