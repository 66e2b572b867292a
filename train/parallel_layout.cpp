#include "train/parallel_layout.h"

#include <cmath>

#include "kernels/ops.h"
#include "train/run_setup.h"

namespace lathe::train {

ParallelLayout::ParallelLayout(const RunConfig& cfg, std::shared_ptr<parallel::Communicator> world) {
  const ParallelConfig& pc = cfg.parallel();
  parallel::LayoutSpec spec;
  spec.tensor_parallel = pc.tensor_parallel();
  spec.sequence_parallel = pc.sequence_parallel();
  spec.sp_mode = pc.sequence_parallel_mode() == ParallelConfig::ULYSSES ? parallel::SpMode::ulysses
                                                                        : parallel::SpMode::megatron;
  const std::vector<std::string> errors = parallel::layout_errors(world->size(), spec);
  if (!errors.empty()) throw configs::ConfigError("config", errors);
  groups_ = std::make_unique<parallel::ProcessGroups>(std::move(world), spec);
  vocab_pad_multiple_ = pc.vocab_pad_multiple();
}

void ParallelLayout::shard(models::CausalLM& model) {
  if (tensor_parallel() == 1) return;
  shards_ = parallel::shard_for_tensor_parallel(model, groups_->tp(), vocab_pad_multiple_);
}

void ParallelLayout::finish_gradients(models::CausalLM& model) {
  if (!shards_.partial_grad.empty()) parallel::all_reduce_partial_grads(model, shards_.partial_grad, *groups_->tp());
}

double ParallelLayout::clip_grad_norm(const std::vector<std::pair<std::string, Tensor>>& params, double max_norm) {
  const double norm = parallel::tp_grad_norm(params, shards_, *groups_->tp());
  if (max_norm > 0 && norm > max_norm) {
    const double s = max_norm / (norm + 1e-6);  // as optim::clip_grad_norm
    for (const auto& np : params) {
      Tensor g = np.second.grad();
      if (g.defined()) kernels::scale_(g, s);
    }
  }
  return norm;
}

}  // namespace lathe::train
