// The training loop: a RunConfig in, a trained model, checkpoints and metrics out.
//
//   lathe::train::TrainResult r = lathe::train::train(lathe::configs::load_config("run.pbtxt"));
//
// train() is a thin wrapper over Trainer (below), which layers that need the loop (adapter
// fine-tuning, federated local rounds, parallel layouts) use piece by piece: setup() resolves
// the config once into a RunPlan (train/run_plan.h) and builds model, optimizer and data;
// train_step(), evaluate(), save() and restore() are the loop's parts; run() is the loop.
//
// Data: data.source SYNTHETIC/TEXT/HDF5/JSONL, plain text as packed windows or instruction
// data with the loss on response tokens only (train/run_setup.h, train/batches.h). Weights:
// random init, or model.init_from (a Hugging Face directory or a lathe checkpoint, loaded on
// a fresh start; train/init_from.h).
//
// Adapter fine-tuning (a peft section, peft/): LoRA adapters are injected after the weights are
// loaded and everything else is frozen; the optimizer then holds state for the adapters only,
// checkpoints hold only the trainable tensors (a resume reloads the base from model.init_from),
// and a finished run writes the adapter in the Hugging Face peft layout (train/peft_setup.h).
//
// Each optimizer step: the scheduled learning rate, train.grad_accum micro-batches (loss
// scaled by 1/grad_accum), backward, gradient averaging across data-parallel ranks
// (train/grad_sync.h), clip_grad_norm (train.grad_clip), one step of the optimizer.type
// optimizer, zero_grad. With optimizer.layerwise each parameter is instead stepped during the
// last micro-batch's backward, as soon as its (averaged) gradient is final, and its gradient
// freed (train/layerwise.h); the results are the same bit for bit. Then, on rank 0:
// metrics (JSONL / TensorBoard / console), periodic evaluation (mean loss and perplexity of
// the validation split) with an optional sample, and checkpoints (train/checkpoint.h).
//
// Ranks: every rank runs this function with its communicator; rank r reads shard r of each
// global batch (data::LMLoader), writes its own checkpoint file, and only rank 0 prints or
// writes shared files.
//
// Device (train.device): the model moves there before the optimizer is built (so its state
// is created beside the parameters), each batch's ids and targets are copied there, and a
// resumed checkpoint's tensors load onto it. train.precision BF16 runs the forward under
// models::Autocast (bf16 compute, f32 master weights, gradients and optimizer state).
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
#include "optim/optimizer.h"
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
  std::string adapter_dir;      // where a finished peft run wrote its adapter (rank 0), or ""
  std::vector<StepRecord> steps;  // this call's steps, in order
  std::vector<EvalRecord> evals;
  std::vector<std::string> samples;  // text generated at evaluations (rank 0)
  double tokens_per_s = 0;  // training tokens (all ranks) per second of step time, this call
  int64_t num_parameters = 0;
};

}  // namespace lathe::train
namespace lathe::parallel {
class ZeroSharder;
}  // namespace lathe::parallel
namespace lathe::peft {
struct PeftOptions;
struct InjectResult;
}  // namespace lathe::peft
namespace lathe::train {

class CheckpointPart;
class GradSync;
class LayerwiseUpdater;
class MetricsLogger;
class SpielSelector;
class TrainBatches;
class WholeTensorUpdates;
struct RunPlan;

// One training run, in parts. Typical use is run(); a layer that reuses the loop calls
// setup() (or overrides configure_model), then train_step()/evaluate()/save() as it needs.
// Collective over the plan's communicator: every rank makes the same calls.
class Trainer {
 public:
  // cfg may be unresolved; nothing happens until setup().
  explicit Trainer(const RunConfig& cfg, TrainOptions opts = {});
  virtual ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Resolves the config into the plan (ConfigError for any problem with it), builds the
  // model (pretrained weights on a fresh start), moves it to the plan's device, builds the
  // optimizer and the loader, prepares the run directory, restores the checkpoint that
  // TrainOptions::resume / checkpoint.resume names, makes data-parallel replicas identical,
  // prints the banner and opens the metrics. Idempotent.
  void setup();

  // One optimizer step: grad_accum micro-batches forward and backward, gradient sync,
  // clipping, the scheduled lr, the update. Logs the step's metrics (rank 0) and returns its
  // record (also appended to result().steps).
  StepRecord train_step();
  // Loss on the validation split (train.eval_batches batches); records and logs it, and
  // samples when sample.at_eval. An empty result (batches 0) when there is no split.
  EvalResult evaluate();
  // Writes a checkpoint of every part at the current step; returns its step directory.
  std::string save();
  // Loads every part from a complete step directory (CheckpointError when it does not fit).
  void restore(const std::string& step_dir);
  // The loop: train_step until the run's length, train.eval_interval evaluations,
  // checkpoint.interval saves, TrainOptions' stop step and stop flag. Calls setup() first.
  TrainResult run();

  // Adds a stateful part to every checkpoint this trainer saves and restores (an adapter's
  // weights, federation state). Parts added before setup() are restored by it.
  void add_checkpoint_part(std::shared_ptr<CheckpointPart> part);

  const RunPlan& plan() const;
  models::CausalLM& model();
  optim::Optimizer& optimizer();
  // The layer-wise updater (optimizer.layerwise), or null.
  const LayerwiseUpdater* layerwise() const { return layerwise_.get(); }
  // SpIEL's selector (peft.method SPIEL), or null.
  const SpielSelector* spiel() const { return spiel_.get(); }
  int64_t step() const { return step_; }
  const TrainResult& result() const { return result_; }

 protected:
  // Called by setup() after the model is built and any pretrained weights are loaded, and
  // before it moves to the device and the optimizer is built: where a subclass injects
  // adapters or freezes parameters. The checkpoint is restored after it.
  virtual void configure_model(models::CausalLM& /*model*/) {}

 private:
  void prepare_run_dir();
  void print_banner(const std::string& from, const std::vector<std::string>& config_changes);
  void open_metrics(const std::string& from);
  void message(const std::string& line);
  void log_step(const StepRecord& rec, double seconds);
  // The built-in parts (model, optimizer, progress, data position, rng), then the added ones.
  std::vector<CheckpointPart*> checkpoint_parts();

  RunConfig input_;
  TrainOptions opts_;
  bool set_up_ = false;
  std::unique_ptr<RunPlan> plan_;
  std::unique_ptr<models::CausalLM> model_;
  std::unique_ptr<optim::Optimizer> opt_;
  // The peft section's options and what inject_lora did (null without one).
  std::unique_ptr<peft::PeftOptions> peft_options_;
  std::unique_ptr<peft::InjectResult> peft_;
  std::shared_ptr<SpielSelector> spiel_;  // peft.method SPIEL: reselection between steps (train/peft_spiel.h)
  std::vector<Tensor> params_;  // the optimizer's, for clipping
  std::unique_ptr<TrainBatches> loader_;
  std::unique_ptr<GradSync> grad_sync_;
  std::unique_ptr<WholeTensorUpdates> whole_;  // GaLore/Fira under TP (train/tp_whole_tensors.h)
  std::unique_ptr<parallel::ZeroSharder> zero_;  // parallel.zero_stage 1 (train/zero_setup.h)
  std::shared_ptr<parallel::Communicator> sp_comm_;  // parallel.sequence_parallel > 1 (Ulysses)
  std::unique_ptr<LayerwiseUpdater> layerwise_;  // optimizer.layerwise; uses opt_ and grad_sync_
  std::unique_ptr<MetricsLogger> metrics_;
  std::vector<std::shared_ptr<CheckpointPart>> builtin_parts_, parts_;
  std::string restored_config_;  // the config text of the checkpoint restored, if any
  std::FILE* out_ = nullptr;  // rank 0's console, else null
  int64_t step_ = 0, tokens_seen_ = 0;
  double last_lr_ = 0;
  double train_time_ = 0;
  int64_t session_tokens_ = 0;
  TrainResult result_;
};

// Trains as the config says: Trainer(cfg, opts).run(). cfg may be unresolved (it is
// resolved, validated and checked for features this build supports: errors are
// configs::ConfigError; checkpoint problems are CheckpointError, train/checkpoint.h).
// Collective over opts.comm.
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
