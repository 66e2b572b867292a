// The parallel layout of a run, as the trainer sees it: the process groups of the config's
// parallel section (world = data x tensor x sequence parallel ranks, parallel/process_groups.h)
// and what each step asks of them. The Trainer owns one and asks it instead of reading ranks:
//   data_comm()           the data-parallel group: data sharding, token weights, gradient
//                         averaging, loss means, evaluation sums, replica checks
//   shard(model)          this rank's tensor-parallel shard of the full model (after the
//                         weights are loaded, before the optimizer is built)
//   finish_gradients()    after the data-parallel average: gradients that are partial sums
//                         over the TP group (Ladder row-parallel biases) are summed
//   clip_grad_norm()      the norm of the whole model's gradient, shards counted once
// With tensor_parallel = 1 every call is what plain data parallelism did before.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "configs/config.h"
#include "models/model.h"
#include "parallel/process_groups.h"
#include "parallel/tensor_parallel.h"

namespace lathe::train {

class ParallelLayout {
 public:
  // Collective over world. ConfigError (exit 2) naming the fields and numbers when the layout
  // does not fit the world.
  ParallelLayout(const RunConfig& cfg, std::shared_ptr<parallel::Communicator> world);

  const parallel::ProcessGroups& groups() const { return *groups_; }
  // The ranks holding replicas of the same weights: the data-parallel group, and with Ulysses
  // or ring attention also the sequence-parallel peers, whose token-weighted gradients and
  // loss sums complete each other's sequences (with tensor parallelism: the data x sequence
  // parallel ranks of this rank's TP shard).
  const std::shared_ptr<parallel::Communicator>& data_comm() const {
    if (groups_->sp_size() == 1) return groups_->dp();
    return groups_->tp_size() == 1 ? groups_->world() : shard_replicas_;
  }
  int data_rank() const { return groups_->dp_rank(); }
  int data_size() const { return groups_->dp_size(); }
  int tensor_parallel() const { return groups_->tp_size(); }
  // "dp2 x tp2 x sp1": recorded in checkpoints, compared on resume, printed in the banner.
  std::string name() const { return groups_->name(); }

  void shard(models::CausalLM& model);
  // Which parameters shard() split (empty before it, and with tensor_parallel 1).
  const parallel::TensorParallelShards& shards() const { return shards_; }
  void finish_gradients(models::CausalLM& model);
  // Collective over the TP group: the trainable parameters and the adapter factors (frozen
  // ones too: LoRA-SB's A and B) of this rank's shard `model`
  // gathered into `full` (the same model unsharded, with the same adapters injected; may be
  // null on ranks that do not need the result). What an adapter run's final export uses.
  void gather_trainable(models::CausalLM& model, models::CausalLM* full);
  // zero_dp: with ZeRO-1, params are this rank's pieces and zero_dp the group they shard over
  // (parallel::tp_grad_norm).
  double clip_grad_norm(const std::vector<std::pair<std::string, Tensor>>& params, double max_norm,
                        parallel::Communicator* zero_dp = nullptr);

 private:
  std::unique_ptr<parallel::ProcessGroups> groups_;
  int64_t vocab_pad_multiple_ = 128;
  parallel::TensorParallelShards shards_;
  std::shared_ptr<parallel::Communicator> shard_replicas_;  // Ulysses / ring attention with TP: dp x sp of one tp_rank
};

// The tensor-parallel degree a rank file was written with (its "parallel_layout"
// attribute; 1 when it has none).
int checkpoint_tensor_parallel(const std::string& rank_file);

// Loads the full model weights of a checkpoint into `model` (a full, unsharded model): the
// rank file itself when it was written without tensor parallelism, else the shards of the
// tensor-parallel ranks 0..tp-1 of its step directory (data-parallel group 0), gathered
// (parallel::gather_shards). What export, eval, generate and model.init_from use, so a TP
// checkpoint can be read by one process or start a run of another layout. CheckpointError
// naming the file and tensor when a shard is missing or does not fit.
// trainable_only: only the parameters of `model` that require grad (an adapter checkpoint,
// whose files hold only those; the rest was loaded from model.init_from).
void load_full_model_weights(const std::string& rank_file, models::CausalLM& model, bool trainable_only = false);
// The tensors <group>/<name> of a checkpoint (the shards of its TP ranks gathered) copied into
// `targets` (full-size tensors named like the model's parameters).
void load_full_tensors(const std::string& rank_file, const std::string& group,
                       const std::vector<std::pair<std::string, Tensor>>& targets, const models::ModelSpec& spec);

}  // namespace lathe::train
