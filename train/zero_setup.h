// ZeRO-1 in the trainer (parallel.zero_stage: 1; parallel/zero.h): which ownership each
// optimizer gets, the shard optimizer, and the checkpoint's record of the layout.
//
// Ownership per optimizer (the reasons are in parallel/zero.h):
//   ADAMW (32-bit moments, torch or HF form), SGD      flat partition
//   ADAMW with state_bits 8, SGD_SAI, GALORE, FIRA      per-parameter ownership
//
// With tensor parallelism the sharder is built over each TP rank's own shard and its
// data-parallel group (ParallelLayout::data_comm()); the layout arithmetic is the same on every
// TP rank, so a parameter's slices are owned by the same data-parallel rank, and the clip norm
// sums the pieces over that group, then the sharded ones over TP (parallel::tp_grad_norm).
// GaLore and Fira under TP shard their whole-matrix stand-ins instead (train/tp_whole_tensors.h).
//
// In a step: the gradients accumulate locally over the micro-batches (no bucketed all-reduce
// runs: GradSync is built without parameters), then ZeroSharder::reduce_scatter_gradients,
// clipping with the global norm, the shard optimizer's step, ZeroSharder::all_gather_parameters.
// The reduce-scatter runs after backward, not overlapped with it.
//
// Checkpoints: every rank's optimizer part holds its own shard (keys are the parameter names,
// shapes those of the rank's pieces); the "parallel layout" part records
// ZeroLayout::describe() (or "plain data parallelism"), and a resume under another layout, or
// another number of ranks, is refused naming both (resharding is not implemented).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "configs/lathe.pb.h"
#include "optim/optimizer.h"
#include "parallel/zero.h"
#include "train/checkpoint.h"

namespace lathe::train {

parallel::ZeroPartition zero_partition_for(const lathe::OptimizerConfig& cfg);

// The sharder of the trainable parameters of `full` (the optimizer of the whole model, which
// holds no state yet) over comm; per-parameter ownership balances each parameter's
// optimizer-state bytes (init_state of `full`, made and dropped here).
// shard_params (GaLore/Fira under TP): the tensors to shard instead of full's, matched by name
// (the TP shards of full's whole-matrix stand-ins), still costed by full's state.
std::unique_ptr<parallel::ZeroSharder> make_zero_sharder(
    const lathe::OptimizerConfig& cfg, const optim::Optimizer& full, std::shared_ptr<parallel::Communicator> comm,
    const std::vector<std::pair<std::string, Tensor>>& shard_params = {});

// The optimizer of `cfg` over sharder's pieces, each in the group (options, lr scale, decay)
// its parameter has in `full` (the optimizer of the whole model, which holds no state yet).
std::unique_ptr<optim::Optimizer> make_shard_optimizer(const lathe::OptimizerConfig& cfg, const optim::Optimizer& full,
                                                      const parallel::ZeroSharder& sharder);
// The same over given (name, tensor) pieces (the owned matrices' whole-matrix stand-ins).
std::unique_ptr<optim::Optimizer> make_shard_optimizer(const lathe::OptimizerConfig& cfg, const optim::Optimizer& full,
                                                      const std::vector<std::pair<std::string, Tensor>>& pieces);

// What the "parallel layout" part records for a run with this sharder (null: no ZeRO) and
// this sequence-parallel degree.
std::string layout_description(const parallel::ZeroSharder* sharder, int sequence_parallel = 1);

// The checkpoint part that records the layout and refuses another on load.
std::shared_ptr<CheckpointPart> layout_part(std::string description);

// Before loading a step directory: when it was written by another number of ranks and either
// side used ZeRO, throws CheckpointError naming both layouts (rank 0's file is read). Does
// nothing when the numbers agree (layout_part checks the rest).
void check_resume_layout(const std::string& step_dir, const std::string& description, int world);

}  // namespace lathe::train
