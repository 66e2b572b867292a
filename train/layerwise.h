// Layer-wise optimizer updates (optimizer.layerwise): every parameter is stepped as soon as its
// gradient for the optimizer step is final, and that gradient is freed at once, so the whole
// model's gradient never exists at one time (the per-layer weight update of GaLore, Zhao et al.
// 2024, section 4.3; the fused update of LOMO, Lv et al. 2023). It goes through the optimizer's
// own per-parameter path (Optimizer::step_param), so every optimizer supports it.
//
// When a parameter is stepped:
// - One rank: from its gradient-ready hook (autograd/hooks.h) during the backward of the step's
//   last micro-batch. The earlier micro-batches only accumulate into .grad, so with
//   train.grad_accum > 1 the accumulated gradient does live between micro-batches (the saving
//   is then only during the last backward); with grad_accum 1 at most one parameter's
//   gradient is held at a time.
// - Several ranks: once the data-parallel bucket holding it has been all-reduced (the same
//   token-weighted mean the ordinary step uses), handed over by parallel::BucketReducer in its
//   layer-wise mode, mostly while backward still runs. The bucket buffers are then the only
//   gradient memory: allocated as a bucket fills, freed after its members are stepped, at most
//   two buckets in flight.
// - finish(), after backward: whatever still has a gradient (a parameter used only by an
//   earlier micro-batch, whose hook did not fire in the last backward) is stepped there, as
//   Optimizer::step() would.
//
// Same numbers as the ordinary step: each update reads exactly the gradient step() would read
// (the hook fires when the gradient is final; an in-place update in the middle of backward is
// never read again, since every node that uses the parameter has already run), optimizer state
// is per parameter, and AdamW's batched step() is bit-identical to its per-parameter update.
// So parameters, optimizer state and step counts equal the ordinary step's bit for bit on the
// CPU (tests/train/test_layerwise.cpp). Only the order in which parameters are updated differs.
//
// Learning rate: the trainer sets the scheduled rate once per optimizer step, before the first
// backward of the step (the schedule is a function of the step number; nothing is advanced per
// parameter, unlike a per-parameter scheduler stepped from each hook).
//
// Tensor parallelism (set_tensor_parallel): a shard's gradient is final in its hook as in one
// process, but a replicated parameter whose gradient is a partial sum over the TP ranks (the
// Megatron-SP norm weights, the Ladder row-parallel biases: TensorParallelShards::partial_grad)
// is only final after ParallelLayout::finish_gradients sums it, after backward: those few are
// kept and stepped in finish(). The reported norm sums the shards' squares over the TP group.
// GaLore/Fira (whole matrices gathered over TP after backward) and SGD-SaI (a collective per
// split tensor in its update) are refused under TP (configs/validate.cpp).
//
// Needs every gradient at once, so it cannot be combined: global gradient clipping
// (train.grad_clip must be 0, a config error otherwise) and SGD-SaI's normalised (paper) form.
// The reported grad_norm is still the global norm before the update: each parameter's squared
// norm is taken (on its device, no sync) just before its update and summed in finish(). The
// trainer has no skip-on-NaN/inf logic and no dynamic loss scaling (bf16 needs none); a
// non-finite loss stops the run after the step in both modes. A loss scaler that skips steps
// would be incompatible too: the skip decision needs every gradient before the first update.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace lathe::train {

class GradSync;

class LayerwiseUpdater {
 public:
  // Updates the parameters of opt's groups. With several ranks (sync.active()) the updates come
  // from sync's reducer; with one, from hooks registered here. Both are removed by the
  // destructor. opt and sync must outlive this object.
  LayerwiseUpdater(optim::Optimizer& opt, GradSync& sync);
  ~LayerwiseUpdater();
  LayerwiseUpdater(const LayerwiseUpdater&) = delete;
  LayerwiseUpdater& operator=(const LayerwiseUpdater&) = delete;

  // Tensor parallelism (see above): `deferred` are stepped in finish() only; `sharded` are
  // this rank's slices, whose squared norms finish() sums over tp. Before the first step.
  void set_tensor_parallel(const std::set<std::string>& deferred, std::set<std::string> sharded,
                           std::shared_ptr<parallel::Communicator> tp);

  // Before each micro-batch's backward; true for the step's last one (the one that updates).
  void before_backward(bool last_micro_batch);
  // After the last micro-batch's backward (and GradSync::after_backward): steps what still has
  // a gradient, counts the optimizer step (Optimizer::count_step) and returns the global L2
  // norm of the gradients the step used (one host sync).
  double finish();

  // Of the last finished step: parameters updated before finish() (from hooks or the
  // reducer, during backward or the data-parallel wait) and in finish() itself.
  int64_t updated_before_finish() const { return last_before_; }
  int64_t updated_in_finish() const { return last_in_finish_; }

 private:
  void update(size_t i);

  optim::Optimizer& opt_;
  GradSync& sync_;
  std::vector<std::pair<std::string, Tensor>> params_;  // the optimizer's, in group order
  std::map<std::string, size_t> index_;
  std::vector<int64_t> hook_ids_;  // one rank: one per parameter
  std::vector<Tensor> norm_sq_;    // per parameter: its squared gradient norm this step
  std::vector<char> deferred_;     // per parameter: stepped in finish() only (TP partial sums)
  std::set<std::string> sharded_;  // TP slices: their squares summed over tp_
  std::shared_ptr<parallel::Communicator> tp_;
  bool armed_ = false;
  int64_t updated_ = 0;  // in the current step
  int64_t last_before_ = 0, last_in_finish_ = 0;
};

}  // namespace lathe::train
