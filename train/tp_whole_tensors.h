// GaLore and Fira under tensor parallelism (parallel.tensor_parallel > 1 with optimizer.type
// GALORE or FIRA): the optimizer steps whole matrices, as one process does.
//
// Their projection (an SVD of the whole 2-D gradient) and Fira's norm-based scaling are not
// functions of a row or column slice, so each TP-split parameter gets a stand-in: a leaf of
// the whole tensor's shape (the vocabulary padding dropped), which the optimizer is built
// over instead of the shard. Each step, after clipping the shards' gradients with the whole
// model's norm: gather() all-gathers every split parameter's weight and gradient over the TP
// group into its stand-in; the optimizer steps; scatter() copies this rank's slice of each
// updated stand-in back into its shard. Replicated parameters are stepped in place.
//
// Cost (the simple, exact choice): every TP rank computes the same whole-matrix update and
// holds the whole optimizer state and a whole copy of the split weights and their gradients,
// so TP saves no optimizer memory with these two optimizers; communication is one all-gather
// of weights and gradients per split tensor per step.
//
// ZeRO-1 on top (parallel.zero_stage: 1): the sharder is built over params(), per parameter,
// over the data-parallel group, so each stand-in (and each replicated tensor) is owned whole
// by one DP rank and its state lives there only. A step: gather() the local gradients (not yet
// averaged over DP; the sum is linear), reduce-scatter the stand-ins' gradients over DP, clip
// with the norm of the owned stand-ins summed over DP (they are whole: no TP sum), step the
// owned ones, all-gather them over DP, scatter() the slices into the shards. Optimizer state
// per rank falls with DP; the whole weights and gradients are still held on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/model.h"
#include "parallel/communicator.h"
#include "parallel/tensor_parallel.h"

namespace lathe::train {

class WholeTensorUpdates {
 public:
  // trainable: the model's trainable (name, shard) pairs; shards.sharded names the split ones.
  WholeTensorUpdates(const std::vector<std::pair<std::string, Tensor>>& trainable,
                     const parallel::TensorParallelShards& shards, const models::ModelSpec& spec,
                     std::shared_ptr<parallel::Communicator> tp, int64_t vocab_pad_multiple);

  // What the optimizer is built over: stand-ins for the split parameters, the rest as given.
  const std::vector<std::pair<std::string, Tensor>>& params() const { return params_; }
  // Collective over TP: weights and gradients of the shards into the stand-ins (the shards'
  // gradients are dropped).
  void gather();
  // This rank's slice of every stand-in into its shard; the stand-ins' gradients are dropped.
  void scatter();

 private:
  Tensor gather_full(const std::string& name, const Tensor& shard) const;
  struct Split {
    size_t index;  // into params_
    Tensor shard;
  };
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<Split> split_;
  models::ModelSpec spec_;
  std::shared_ptr<parallel::Communicator> tp_;
  int64_t vocab_pad_multiple_;
};

}  // namespace lathe::train
