// Megatron tensor parallelism (Shoeybi et al., "Megatron-LM", 2019) on top of the models'
// replaceable slots: shard_for_tensor_parallel turns a full model into this rank's shard of
// it by swapping its layers for the parallel ones below, so the model code stays unaware.
//
// Operators (autograd ops over the TP communicator):
//   f = copy_to_tp      forward identity,        backward all-reduce(sum)
//   g = reduce_from_tp  forward all-reduce(sum), backward identity
// Layers:
//   ColumnParallelLinear  Y_i = f(X) A_i (+ b_i): the output features split over ranks
//   RowParallelLinear     Y = g(sum_i X_i B_i) + b: the input features split, the bias added
//                         once after the sum. With reduce = false (Ladder residual) the sum
//                         is left to the model's BranchReducer and rank 0 adds the bias
//                         (its gradient is then a partial sum: see TensorParallelShards).
//   VocabParallelEmbedding  rows [start, start + rows) of the padded vocabulary; ids outside
//                         give zeros, then g. Its logits() is the tied head f(X) E_i^T.
//   VocabParallelOutput   cross-entropy over vocabulary shards without gathering the logits
//                         (max, target logit and sum of exponentials all-reduced per token);
//                         padding columns are masked out, so they never win.
// Attention: q/k/v column-parallel by heads (rank r owns query heads [r nh/t, (r+1) nh/t) and
// KV heads [r nkv/t, (r+1) nkv/t): the GQA rule needs n_kv_head % t == 0, so each rank's
// query heads find their KV heads locally), o_proj row-parallel. MLP: fc / gate / up column,
// proj / down row. Norms, positions and dropout are replicated.
//
// Initialization: the shards are slices of the full model built from the same seed, so a
// TP=t model computes what the TP=1 model computes (up to f32 summation order). Every rank
// builds the full model on the host first (simple, exact; a memory cost for large models).
// Dropout sits only in replicated regions here (embedding output, residual branches), so all
// TP ranks draw the same masks from the same stream (the spec's default RNG); there is no
// dropout inside sharded regions (attention probabilities), so no per-TP-rank stream is needed.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "autograd/module.h"
#include "models/layers.h"
#include "models/linear.h"
#include "models/model.h"
#include "parallel/communicator.h"

namespace lathe::parallel {

using CommPtr = std::shared_ptr<Communicator>;

// f and g (see the top of this file).
Tensor copy_to_tp(const Tensor& x, const CommPtr& comm);
Tensor reduce_from_tp(const Tensor& x, const CommPtr& comm);

// Megatron sequence parallelism's conjugate pair, along dim 1 (the sequence of [B, T, ...]):
//   gather_seq          forward all-gather of the slices,  backward reduce-scatter
//   reduce_scatter_seq  forward reduce-scatter (sum),       backward all-gather
Tensor gather_seq(const Tensor& x, const CommPtr& comm);
Tensor reduce_scatter_seq(const Tensor& x, const CommPtr& comm);

// The models::SequenceShard of a TP group: rank r keeps slice r (backward: all-gather).
class SequenceParallelShard : public models::SequenceShard {
 public:
  explicit SequenceParallelShard(CommPtr comm) : comm_(std::move(comm)) {}
  int64_t rank() const override { return comm_->rank(); }
  int64_t size() const override { return comm_->size(); }
  Tensor scatter(const Tensor& x, int64_t dim) const override;

 private:
  CommPtr comm_;
};

// Rows of the padded vocabulary: V rounded up to a multiple of pad_multiple * tp.
int64_t padded_vocab(int64_t vocab, int tp, int64_t pad_multiple);

class ColumnParallelLinear : public models::LinearLayer {
 public:
  // weight [out/t, in] and bias [out/t] (undefined: none): this rank's rows, copied.
  // seq_parallel: the input is a sequence slice, gathered first (Megatron-SP) instead of f.
  ColumnParallelLinear(const Tensor& weight, const Tensor& bias, CommPtr comm, bool seq_parallel = false);
  Tensor forward(const Tensor& x) const override;
  Tensor forward_act(const Tensor& x, kernels::Activation act) const override;
  std::string type_name() const override { return "ColumnParallelLinear"; }
  int64_t in_features() const override { return weight_->size(1); }
  int64_t out_features() const override { return weight_->size(0); }  // this rank's share
  Tensor base_weight() const override { return weight_.get(); }
  Tensor base_bias() const override { return bias_.get(); }

 private:
  autograd::ParamRef weight_, bias_;
  CommPtr comm_;
  bool seq_parallel_;
};

class RowParallelLinear : public models::LinearLayer {
 public:
  // weight [out, in/t] (this rank's columns), bias [out] (replicated).
  // seq_parallel: the sum is reduce-scattered to sequence slices (Megatron-SP) instead of g.
  RowParallelLinear(const Tensor& weight, const Tensor& bias, CommPtr comm, bool reduce, bool seq_parallel = false);
  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "RowParallelLinear"; }
  int64_t in_features() const override { return weight_->size(1); }  // this rank's share
  int64_t out_features() const override { return weight_->size(0); }
  Tensor base_weight() const override { return weight_.get(); }
  Tensor base_bias() const override { return bias_.get(); }
  bool reduces() const { return reduce_; }

 private:
  autograd::ParamRef weight_, bias_;
  CommPtr comm_;
  bool reduce_;
  bool seq_parallel_;
};

class VocabParallelEmbedding : public models::Embedding {
 public:
  // weight: rows [start, start + rows) of the padded table.
  // seq_parallel: forward returns this rank's sequence slice (reduce-scatter instead of g)
  // and logits() gathers the slices first.
  VocabParallelEmbedding(const Tensor& weight, int64_t start, CommPtr comm, bool seq_parallel = false);
  Tensor forward(const Tensor& ids) const override;
  Tensor logits(const Tensor& x) const override;
  std::string type_name() const override { return "VocabParallelEmbedding"; }
  int64_t start() const { return start_; }

 private:
  int64_t start_;
  CommPtr comm_;
  bool seq_parallel_;
};

class VocabParallelOutput : public models::VocabOutput {
 public:
  // This rank's logits are columns [start, start + rows) of the padded vocabulary; columns
  // >= vocab are padding.
  VocabParallelOutput(int64_t vocab, int64_t start, int64_t rows, CommPtr comm);
  Tensor full_logits(const Tensor& local) const override;
  Tensor cross_entropy(const Tensor& local, const Tensor& targets, int64_t ignore_index) const override;

 private:
  int64_t vocab_, start_, rows_;
  CommPtr comm_;
  Tensor mask_;  // [rows]: 0 for real columns, a large negative number for padding
};

// Ladder residual: each branch output's all-reduce starts now (async) and is waited for when
// the model adds it, one sub-module later. Backward is the identity (g).
class TensorParallelReducer : public models::BranchReducer {
 public:
  explicit TensorParallelReducer(CommPtr comm) : comm_(std::move(comm)) {}
  std::unique_ptr<models::PendingSum> start(const Tensor& partial) override;

 private:
  CommPtr comm_;
};

struct TensorParallelShards {
  int tp = 1, rank = 0;
  int64_t padded_vocab = 0;
  // Parameters that are this rank's slice of a larger tensor (the rest are replicated).
  std::set<std::string> sharded;
  // Replicated parameters whose gradient is a partial sum over the TP ranks (the Ladder
  // row-parallel biases): all_reduce_partial_grads sums them before the optimizer step.
  std::vector<std::string> partial_grad;
};

// Replaces the layers of `model` (a full model: every weight present) by this rank's shards.
// Throws lathe::Error naming the numbers when heads, KV heads or the MLP width are not
// divisible by comm->size(), or a slot holds something other than a plain Linear or a
// supported adapter (LoRA and LoRA-XS, sharded with their layer: parallel/tp_lora.h; frozen
// parameters stay frozen). With one rank nothing changes.
// sequence_parallel: Megatron-SP inside the TP group as well (the norm weights' and the
// row-parallel biases' gradients are then partial sums: listed in partial_grad). Not with
// the Ladder residual.
TensorParallelShards shard_for_tensor_parallel(models::CausalLM& model, const CommPtr& comm, int64_t vocab_pad_multiple,
                                               bool sequence_parallel = false);

// How each parameter of a TP model is split: dim 0 (rows: column-parallel weights and biases,
// vocabulary tables) or dim 1 (row-parallel weights); -1 = replicated. By name, from the spec.
int shard_dim(const std::string& name, const models::ModelSpec& spec);

// The elements of this rank's shard of `name` that belong to the model's tensor: the shard's
// size, less the vocabulary padding rows of an embedding or output table.
int64_t real_shard_numel(const std::string& name, const Tensor& shard, const models::ModelSpec& spec, int rank);

// The full tensor of `name` from every rank's shard (in TP rank order), the vocabulary
// padding dropped: what export and evaluation of a TP checkpoint need.
Tensor gather_shards(const std::string& name, const std::vector<Tensor>& shards, const models::ModelSpec& spec);
// The full tensor of `name` from this rank's shard, all-gathered over the TP group `tp`
// (collective: every rank of `tp` calls it for the same names in the same order).
Tensor all_gather_shards(const std::string& name, const Tensor& shard, Communicator& tp, const models::ModelSpec& spec);
// This rank's shard of a full tensor (the vocabulary padded first): the inverse.
Tensor slice_shard(const std::string& name, const Tensor& full, const models::ModelSpec& spec, int tp, int rank,
                   int64_t vocab_pad_multiple);

// After backward: the gradients of `names` summed over comm (a missing gradient counts as 0).
void all_reduce_partial_grads(const autograd::Module& model, const std::vector<std::string>& names, Communicator& comm);

// The L2 norm of the whole (unsharded) model's gradient: the sharded parameters' squares
// summed over the TP ranks, the replicated ones counted once.
// zero_dp (ZeRO-1 with TP): params are this rank's ZeRO pieces (named after their parameters),
// which cover each TP shard once over the data-parallel group: both sums are first summed
// over zero_dp, then the sharded one over the TP ranks.
double tp_grad_norm(const std::vector<std::pair<std::string, Tensor>>& params, const TensorParallelShards& shards,
                    Communicator& comm, Communicator* zero_dp = nullptr);

}  // namespace lathe::parallel
