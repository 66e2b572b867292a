// The training loop: a RunConfig in, a trained model, checkpoints and metrics out.
//
//   lathe::train::TrainResult r = lathe::train::train(lathe::configs::load_config("run.pbtxt"));
//
// Data: data.source SYNTHETIC/TEXT/HDF5/JSONL, plain text as packed windows or instruction
// data with the loss on response tokens only (train/run_setup.h, train/batches.h). Weights:
// random init, or model.init_from (a Hugging Face directory or a lathe checkpoint, loaded on
// a fresh start; train/init_from.h).
//
// Each optimizer step: train.grad_accum micro-batches (loss scaled by 1/grad_accum), backward,
// gradient averaging across data-parallel ranks (train/grad_sync.h), clip_grad_norm
// (train.grad_clip), the scheduled learning rate, one AdamW step, zero_grad. Then, on rank 0:
// metrics (JSONL / TensorBoard / console), periodic evaluation (mean loss and perplexity of
// the validation split) with an optional sample, and checkpoints (train/checkpoint.h).
//
// Ranks: every rank runs this function with its communicator; rank r reads shard r of each
// global batch (data::LMLoader), writes its own checkpoint file, and only rank 0 prints or
// writes shared files.
//
// Determinism: the same config, seed and world size give bit-identical losses and weights
// on the CPU (f32), and a run resumed from a checkpoint continues exactly the loss curve of
// one that never stopped (model, AdamW moments and step, data position, dropout RNG; the
// learning rate is a function of the step).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "data/lm_dataset.h"
#include "data/tokenizer.h"
#include "models/model.h"
#include "parallel/communicator.h"

namespace lathe::train {

struct TrainOptions {
  // The ranks of this job; null = parallel::world() (a single process without MPI).
  std::shared_ptr<parallel::Communicator> comm;
  // What to resume from; "" = the config's checkpoint.resume. Values:
  //   "auto"   the newest complete checkpoint in checkpoint.dir if there is one, else fresh
  //   "never"  start fresh (existing checkpoints of the same steps are overwritten)
  //   "latest" the newest complete checkpoint, which must exist
  //   a step number, a step directory, a rank file or a checkpoint root
  std::string resume;
  // > 0: stop once this global step is done, with a checkpoint, as if interrupted (the LR
  // schedule still spans the whole run, so a later resume continues it exactly).
  int64_t stop_after = 0;
  // Checked after every step; non-zero (a signal number) finishes the step, saves a
  // checkpoint and returns with TrainResult::stop_signal set. With several ranks the ranks
  // agree (max over ranks) so they stop at the same step.
  const std::atomic<int>* stop_flag = nullptr;
  // Console output of rank 0 (resolved config, model summary, progress); null = silent.
  std::FILE* out = stdout;
  // Sets the OpenMP/BLAS thread count from parallel.threads_per_rank before training.
  bool apply_threads = true;
};

struct StepRecord {
  int64_t step = 0;  // 1-based number of the optimizer step
  double loss = 0;   // mean training loss of its micro-batches (mean over ranks)
  double lr = 0;
  double grad_norm = 0;  // before clipping
};

struct EvalResult {
  double loss = 0;        // mean next-token cross-entropy (nats)
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // tokens scored (all ranks)
  int64_t batches = 0;    // global batches evaluated
};

struct EvalRecord {
  int64_t step = 0;
  EvalResult result;
};

struct TrainResult {
  int64_t start_step = 0;   // steps already done when this call started (resume), else 0
  int64_t end_step = 0;     // steps done when it returned
  int64_t total_steps = 0;  // the run's planned length
  bool finished = false;    // end_step == total_steps
  int stop_signal = 0;      // the stop_flag value that ended the run early (0 = none)
  std::string resumed_from;     // step directory, or "" for a fresh start
  std::string init_from;        // model.init_from source (train/init_from.h) whose weights
                                // were loaded, or "" (none, or not loaded: resumed instead)
  std::string last_checkpoint;  // step directory of the last checkpoint this call saved, or ""
  std::vector<StepRecord> steps;  // this call's steps, in order
  std::vector<EvalRecord> evals;
  std::vector<std::string> samples;  // text generated at evaluations (rank 0)
  double tokens_per_s = 0;  // training tokens (all ranks) per second of step time, this call
  int64_t num_parameters = 0;
};

// Trains as the config says. cfg may be unresolved (it is resolved, validated and checked
// for features this build supports: errors are configs::ConfigError; checkpoint problems are
// CheckpointError, train/checkpoint.h). Collective over opts.comm.
TrainResult train(const RunConfig& cfg, const TrainOptions& opts = {});

// Mean next-token loss of `model` over the first max_batches global batches of ds (0 = all),
// batched micro_batch rows per rank; each rank scores its share and the sums are reduced
// over comm. Runs in eval mode without gradients and restores the training mode.
EvalResult evaluate(models::CausalLM& model, const data::PackedLMDataset& ds, int64_t micro_batch,
                    int64_t max_batches, parallel::Communicator& comm);

// Text the model continues `prompt` with, using the sample section of cfg (prompt,
// max_new_tokens, temperature, top_k, top_p, seed); an empty prompt starts from "\n".
// Generation stops at the tokenizer's EOS token (not included). Returns only the generated
// continuation, decoded.
std::string sample_text(models::CausalLM& model, const data::Tokenizer& tok, const SampleConfig& sample);

}  // namespace lathe::train
