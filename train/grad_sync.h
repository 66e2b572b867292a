// The data-parallel seams of the trainer: identical replicas at the start, and gradients
// averaged over ranks by parallel::BucketReducer (bucketed all-reduces launched from
// gradient-ready hooks while backward runs; parallel/data_parallel.h).
//
// Per optimizer step the trainer draws its grad_accum micro-batches, w = token_weights(their
// counted targets), and for each micro-batch m:
//   loss_m = model.loss(...);  sync.before_backward(m == grad_accum - 1);  backward(loss_m * w.loss_scale[m]);
// and then sync.after_backward() before clipping and the optimizer step.
//
// Loss normalisation (token-weighted): the step minimises the mean over every counted
// (non-ignored) target token of the global batch, all ranks and micro-batches together. Each
// rank's micro-batch loss is the mean over its own n_m counted tokens, so before its backward
// it is scaled by n_m * N / G (token_weights(): N ranks, G counted tokens of the whole global
// batch, found with one small all-reduce per optimizer step); the bucketed mean over ranks then
// gives the gradient of the global token mean, and the reported loss is that mean too. For
// packed LM data every row has exactly T targets, the factor is 1 / grad_accum, and N ranks x
// micro-batch b equal one process with micro-batch N*b bit for bit in the scaling (tested). With
// prompt-masked instruction data the ranks and micro-batches hold different token counts; a
// rank-equal average (PyTorch DDP's) would weigh a rank's few response tokens as much as
// another's many, which is not the one-process result.
//
// Dropout: every rank draws its masks from its own Philox stream, keyed by (seed, rank)
// (rank_dropout_seed), so replicas do not drop the same units; the stream is saved in the
// rank's own checkpoint file, so resume is exact.
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

  // Layer-wise updates (train/layerwise.h): each parameter's mean gradient goes to fn as soon
  // as its bucket has been reduced, instead of into .grad after backward
  // (parallel::BucketReducer::set_on_reduced); an empty fn restores the default. Does nothing
  // with one rank.
  void set_on_reduced(parallel::BucketReducer::ReducedFn fn);

  bool active() const { return reducer_ != nullptr; }
  // Null with one rank.
  const parallel::BucketReducer* reducer() const { return reducer_.get(); }
  // "rank 0: 12 syncs of 5 buckets (60 early, 0 late), 1.2 MB/sync; backward 10.1 ms, exposed
  // communication 0.8 ms (wait 0.6 ms) per sync", and with layer-wise updates "; layer-wise:
  // 130 parameter updates from reduced buckets (104 during backward), ..."
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

// Counted targets of a host batch (entries != ignore_index). The loader's batches are host
// tensors, so the count needs no device sync and is known before the forward runs.
int64_t count_targets(const Tensor& targets, int64_t ignore_index = -100);

// The per-micro-batch loss factors of one optimizer step (see "Loss normalisation" above).
struct TokenWeights {
  std::vector<double> loss_scale;  // multiply micro-batch m's mean-token loss by loss_scale[m]
  std::vector<int64_t> local_tokens;  // this rank's counted tokens per micro-batch
  int64_t global_tokens = 0;          // counted tokens of the global batch (every rank)
  int world = 1;
  // The global token mean from this rank's micro-batch mean losses: collective when
  // world > 1 (one all-reduce of one f64); 0 when the global batch counts no token (the
  // cross-entropy convention for an empty mean).
  double global_mean_loss(const std::vector<double>& micro_losses, parallel::Communicator& comm) const;
};
// local_tokens: this rank's count per micro-batch. Collective when comm.size() > 1 (one
// all-reduce of one i64). loss_scale[m] = local_tokens[m] * world / global_tokens (0 when
// global_tokens is 0); with equal counts it is exactly 1 / micro-batches.
TokenWeights token_weights(std::vector<int64_t> local_tokens, parallel::Communicator& comm);

// The dropout seed of data-parallel rank `rank` for a run whose model's dropout generator
// was seeded with `seed`: rank 0 keeps it (one-rank runs are unchanged), rank r > 0 gets
// seed ^ (r * an odd constant), a different Philox key for every rank.
uint64_t rank_dropout_seed(uint64_t seed, int rank);

// TEST-ONLY fault injection for the lost-rank tests of the real binary; never set these in
// a real run. At the start of optimizer step `step` (1-based), on rank
// LATHE_TEST_DIE_RANK (default 1):
//   LATHE_TEST_DIE_AT_STEP=N   the process exits at once with code 3 (no MPI_Finalize)
//   LATHE_TEST_HANG_AT_STEP=N  the process sleeps for an hour (its peers must time out)
void test_fault_injection(int64_t step, int rank);

}  // namespace lathe::train
