// The data-parallel seams of the trainer: identical replicas at the start, and gradients
// averaged over ranks by parallel::BucketReducer (bucketed all-reduces launched from
// gradient-ready hooks while backward runs; parallel/data_parallel.h).
//
// Per optimizer step the trainer calls, for each micro-batch m of grad_accum:
//   loss_m = model.loss(...);  sync.before_backward(m == grad_accum - 1);  backward(loss_m / grad_accum);
// and then sync.after_backward() before clipping and the optimizer step.
//
// Loss normalisation: each rank's loss is the mean over its own valid (non-ignored) target
// tokens, and gradients are averaged over ranks (and micro-batches), so the step follows the
// mean over ranks of per-rank token means. For packed LM data every row has exactly T
// targets, so that IS the token mean of the whole global batch and N ranks x micro-batch b
// equal one process with micro-batch N*b (tested). With prompt-masked instruction data the
// ranks may hold different numbers of valid targets; lathe then weighs every rank's rows
// equally per micro-batch (like PyTorch DDP and gradient accumulation in most trainers),
// which differs from the global token mean by the ratio of per-rank token counts. A
// token-weighted variant would scale each rank's loss by local_tokens * N / global_tokens
// (one extra scalar all-reduce per micro-batch); it is not implemented.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/module.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"

namespace lathe::train {

class GradSync {
 public:
  // params: the trainable parameters in registration order (Module::named_parameters()
  // filtered by requires_grad). With one rank nothing is registered and every call is free.
  // Environment (measurement knobs, off by default):
  //   LATHE_DP_NO_OVERLAP=1  reduce every bucket after backward (the no-overlap baseline)
  //   LATHE_DP_STATS=1       each rank prints its communication totals when the run ends
  GradSync(const std::vector<std::pair<std::string, Tensor>>& params, std::shared_ptr<parallel::Communicator> comm,
           double bucket_mb);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Before each micro-batch's backward; true for the last micro-batch of the step.
  void before_backward(bool last_micro_batch);
  // After the last micro-batch's backward: every .grad holds the mean over ranks.
  void after_backward();

  bool active() const { return reducer_ != nullptr; }
  // Null with one rank.
  const parallel::BucketReducer* reducer() const { return reducer_.get(); }
  // "rank 0: 12 syncs of 5 buckets (60 early, 0 late), 1.2 MB/sync; backward 10.1 ms, exposed
  // communication 0.8 ms (wait 0.6 ms) per sync"
  std::string stats_line() const;

 private:
  std::unique_ptr<parallel::BucketReducer> reducer_;
  bool print_stats_ = false;
};

// Makes the replicas start identical. Fresh start (resumed = false): every parameter and
// buffer of rank 0 is broadcast (whatever initialised them: the seeded init, or pretrained
// weights loaded before this call). Resume: each rank loaded its own file, which must hold
// the same weights: a checksum comparison (one small all-reduce) throws naming the first
// parameter that differs. Collective; nothing to do with one rank.
void sync_initial_state(const autograd::Module& model, parallel::Communicator& comm, bool resumed);

// Gradient averaging without buckets or hooks: each .grad all-reduced on its own, after
// backward (a parameter without a gradient contributes zeros and gets one). For callers
// that drive their own backward; the trainer uses GradSync.
void sync_gradients(const std::vector<Tensor>& params, parallel::Communicator& comm);

// TEST-ONLY fault injection for the lost-rank tests of the real binary; never set these in
// a real run. At the start of optimizer step `step` (1-based), on rank
// LATHE_TEST_DIE_RANK (default 1):
//   LATHE_TEST_DIE_AT_STEP=N   the process exits at once with code 3 (no MPI_Finalize)
//   LATHE_TEST_HANG_AT_STEP=N  the process sleeps for an hour (its peers must time out)
void test_fault_injection(int64_t step, int rank);

}  // namespace lathe::train
