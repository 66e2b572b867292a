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
// ZeRO-1 on top (parallel.zero_stage: 1): the sharder owns the TP shards whole (per
// parameter, costed by the stand-ins' state) over the data-parallel group; the ownership is
// the same arithmetic on every TP rank, so a matrix's slices are owned by the same DP rank,
// and the stand-ins are built for the owned matrices only (this class over the sharder's
// pieces). A step: reduce-scatter the shards' gradients over DP, gather() the owned ones over
// TP, clip with the norm of the owned stand-ins summed over DP (they are whole: no TP sum),
// step them, scatter() their slices into the shards, all-gather the shards over DP. The
// optimizer state, the stand-ins and the TP gathers all fall with DP.
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
