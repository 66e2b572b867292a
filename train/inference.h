// Using a trained run outside the training loop: load a checkpoint's model and tokenizer,
// evaluate it on the validation split, generate text. The logic behind `lathe eval` and
// `lathe generate` (the CLI only parses flags and prints).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "data/tokenizer.h"
#include "models/model.h"
#include "peft/inject.h"
#include "parallel/communicator.h"
#include "train/checkpoint.h"
#include "train/parallel_layout.h"
#include "train/trainer.h"

namespace lathe::train {

struct LoadedRun {
  RunConfig cfg;  // the resolved config stored in the checkpoint (plus any overrides)
  std::unique_ptr<models::CausalLM> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  TrainState state;  // step, tokens seen, ... of the checkpoint
  std::string file;  // the rank file the weights came from
  // A peft run (cfg.peft set): the adapters injected into `model` (unmerged; the frozen base
  // was loaded from model.init_from). Null otherwise.
  std::shared_ptr<peft::InjectResult> peft;
  // Under mpirun (load_trained with a world of several ranks): the layout `model` is sharded
  // for (the config's tensor_parallel over the world, no sequence parallelism). Null with one
  // process, where the model is whole.
  std::shared_ptr<ParallelLayout> layout;
};

// Loads the model weights (no optimizer state) and tokenizer of a checkpoint given as a rank
// file, a step directory, a checkpoint root or a run directory (newest complete step).
// `overrides` ("a.b=c") are applied to the stored config first (e.g. data.tokenizer when the
// tokenizer moved). The model is in eval mode.
// A Hugging Face model directory (config.json + safetensors, see is_hf_model_dir) is loaded
// as it is: the config is the defaults plus `overrides` with model.init_from = path (so its
// tokenizer files and context length are used), state.step is 0 and file is the directory.
// With `world` of several ranks (collective over it) the model is this rank's shard of the
// config's parallel.tensor_parallel (see inference_layout): a checkpoint written with that
// degree is read shard by shard (each rank its own tensor-parallel rank's file), any other
// (one process, another degree, a Hugging Face directory) is loaded whole and sliced.
LoadedRun load_trained(const std::string& path, const std::vector<std::string>& overrides = {},
                       const std::shared_ptr<parallel::Communicator>& world = nullptr);

// The layout inference runs `cfg`'s model with over `world`: tensor_parallel as configured,
// sequence parallelism off (incremental decoding has no sequence shards; the weights are the
// same), the remaining ranks data-parallel replicas. Null for a world of one rank.
// ConfigError when tensor parallelism meets an adapter run (merge it first: lathe export) or
// the degrees do not fit the world.
std::shared_ptr<ParallelLayout> inference_layout(const RunConfig& cfg, const std::shared_ptr<parallel::Communicator>& world);

struct EvalRunResult {
  EvalResult eval;
  std::string checkpoint;  // rank file evaluated
  int64_t step = 0;        // its training step
  std::string data;        // description of the data the split came from
  int64_t val_windows = 0;  // validation windows (or instruction samples)
  std::string layout;       // the process layout it was scored with ("dp1 x tp2 x sp1"; "" = one process)
};

// True when `path` is a Hugging Face model directory: config.json and model.safetensors
// (or model.safetensors.index.json), e.g. a download or the output of `lathe export`.
bool is_hf_model_dir(const std::string& path);

// Validation loss of a trained run (per scored token: every token of packed windows, the
// response tokens of instruction data). `target` is a config file (its checkpoint.dir is searched,
// with `overrides` applied) or a run/checkpoint directory (its stored config is used);
// `checkpoint` ("" = the newest complete one) picks another step: a step number, step
// directory or rank file. max_batches = 0 scores the whole validation split. Throws
// ConfigError when the config has no validation split (data.val_fraction 0, no val_path).
// A Hugging Face model directory is scored without fine-tuning, as `target` (data from
// `overrides`, e.g. data.source=TEXT data.path=...) or as `checkpoint` with a config
// `target` (its data, train.seq_len and micro_batch); step is then 0.
// Collective over `world`: the model is sharded by inference_layout (tensor-parallel ranks
// score the same batches) and the validation split is divided over the data-parallel replicas.
EvalRunResult eval_run(const std::string& target, const std::string& checkpoint,
                       const std::vector<std::string>& overrides, int64_t max_batches,
                       const std::shared_ptr<parallel::Communicator>& world);

// True when `path` names a config file rather than a checkpoint or run directory (a regular
// file that is not HDF5: .pbtxt, .json, ...).
bool looks_like_config(const std::string& path);

}  // namespace lathe::train
