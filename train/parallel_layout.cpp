#include "train/parallel_layout.h"

#include <cmath>

#include <filesystem>
#include <regex>

#include "kernels/ops.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/run_setup.h"

namespace lathe::train {

ParallelLayout::ParallelLayout(const RunConfig& cfg, std::shared_ptr<parallel::Communicator> world) {
  const ParallelConfig& pc = cfg.parallel();
  parallel::LayoutSpec spec;
  spec.tensor_parallel = pc.tensor_parallel();
  spec.sequence_parallel = pc.sequence_parallel();
  spec.sp_mode = pc.sequence_parallel_mode() == ParallelConfig::ULYSSES ? parallel::SpMode::ulysses
                 : pc.sequence_parallel_mode() == ParallelConfig::RING  ? parallel::SpMode::ring
                                                                        : parallel::SpMode::megatron;
  const std::vector<std::string> errors = parallel::layout_errors(world->size(), spec);
  if (!errors.empty()) throw configs::ConfigError("config", errors);
  groups_ = std::make_unique<parallel::ProcessGroups>(std::move(world), spec);
  vocab_pad_multiple_ = pc.vocab_pad_multiple();
  // Ulysses or ring attention inside a TP shard's replicas: the ranks of one tp_rank, in world order (so
  // a TP group's ranks share an index in it, and read the same batches).
  if (groups_->sp_size() > 1 && groups_->tp_size() > 1)
    shard_replicas_ = groups_->world()->split(groups_->tp_rank(), groups_->world()->rank());
}

void ParallelLayout::shard(models::CausalLM& model) {
  if (tensor_parallel() == 1) return;
  shards_ = parallel::shard_for_tensor_parallel(model, groups_->tp(), vocab_pad_multiple_, groups_->megatron_sp());
}

void ParallelLayout::finish_gradients(models::CausalLM& model) {
  if (!shards_.partial_grad.empty()) parallel::all_reduce_partial_grads(model, shards_.partial_grad, *groups_->tp());
}

void ParallelLayout::gather_trainable(models::CausalLM& model, models::CausalLM* full) {
  parallel::Communicator& tp = *groups_->tp();
  for (const auto& [name, p] : model.named_parameters()) {
    // Also the frozen adapter factors (LoRA-SB's A and B): part of the exported adapter.
    if (!p.requires_grad() && name.find(".lora_") == std::string::npos) continue;
    const Tensor whole = shards_.sharded.count(name) ? parallel::all_gather_shards(name, p, tp, model.spec()) : p;
    if (!full) continue;
    Tensor dst = full->parameter(name);
    LATHE_CHECK(dst.shape() == whole.shape()) << "gather_trainable: " << name << " gathered as " << whole.shape_str()
                                              << ", the full model has " << dst.shape_str();
    dst.copy_(whole.to(dst.device()));
  }
}

double ParallelLayout::clip_grad_norm(const std::vector<std::pair<std::string, Tensor>>& params, double max_norm,
                                      parallel::Communicator* zero_dp) {
  const double norm = parallel::tp_grad_norm(params, shards_, *groups_->tp(), zero_dp);
  if (max_norm > 0 && norm > max_norm) {
    const double s = max_norm / (norm + 1e-6);  // as optim::clip_grad_norm
    for (const auto& np : params) {
      Tensor g = np.second.grad();
      if (g.defined()) kernels::scale_(g, s);
    }
  }
  return norm;
}

int checkpoint_tensor_parallel(const std::string& file) {
  H5Reader r(file);
  if (!r.has_attr("/", "parallel_layout")) return 1;
  const std::string layout = r.attr_string("/", "parallel_layout");
  std::smatch m;
  if (!std::regex_search(layout, m, std::regex(" x tp([0-9]+) x ")))
    throw CheckpointError(file + ": unreadable parallel_layout attribute \"" + layout + "\"");
  return std::stoi(m[1]);
}

void load_full_tensors(const std::string& file, const std::string& group,
                       const std::vector<std::pair<std::string, Tensor>>& targets, const models::ModelSpec& spec) {
  const int tp = checkpoint_tensor_parallel(file);
  const std::string dir = std::filesystem::path(file).parent_path().string();
  std::vector<std::unique_ptr<H5Reader>> shards;
  for (int r = 0; r < tp; ++r) {
    const std::string f = tp == 1 ? file : rank_file(dir, r);
    if (!std::filesystem::exists(f))
      throw CheckpointError(file + " is rank " + std::to_string(r) + "'s shard of a tensor_parallel " + std::to_string(tp) +
                            " checkpoint, and " + f + " (another shard) is missing: the full model needs all " +
                            std::to_string(tp) + " files of its step directory");
    shards.push_back(std::make_unique<H5Reader>(f));
  }
  for (const auto& [name, p] : targets) {
    std::vector<Tensor> parts;
    for (int r = 0; r < tp; ++r) {
      try {
        parts.push_back(shards[static_cast<size_t>(r)]->read_tensor(group + "/" + name));
      } catch (const lathe::Error& e) {
        throw CheckpointError((tp == 1 ? file : rank_file(dir, r)) + ": " + group + "/" + name + ": " + e.message());
      }
    }
    Tensor full = parallel::gather_shards(name, parts, spec);
    if (full.shape() != p.shape())
      throw CheckpointError(dir + ": " + group + "/" + name + " gathered from " + std::to_string(tp) + " shards is " +
                            full.shape_str() + ", the model expects " + p.shape_str());
    p.copy_(full);
  }
}

void load_full_model_weights(const std::string& file, models::CausalLM& model, bool trainable_only) {
  if (checkpoint_tensor_parallel(file) == 1 && !trainable_only) {
    read_rank_checkpoint(file, model, nullptr);
    return;
  }
  std::vector<std::pair<std::string, Tensor>> targets;
  for (const auto& np : model.named_parameters())
    if (!trainable_only || np.second.requires_grad()) targets.push_back(np);
  load_full_tensors(file, "model", targets, model.spec());
}

}  // namespace lathe::train
