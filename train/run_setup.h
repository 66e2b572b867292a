// From a RunConfig to the objects a run needs: the ModelSpec, the tokenizer, the device and
// the packed train/validation datasets. Shared by `lathe train`, `eval` and `generate`.
//
// This build trains decoder-only LMs in f32 on the CPU from SYNTHETIC or TEXT data; config
// features that belong to later work (HDF5/JSONL sources, instruction formats, bf16,
// init_from) are rejected by check_supported() with a message naming the field.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "core/device.h"
#include "data/lm_dataset.h"
#include "data/tokenizer.h"
#include "models/model.h"

namespace lathe::train {

// The ModelSpec a resolved ModelConfig describes (vocab_size must be known, i.e. > 0).
// Throws ConfigError naming model.vocab_size when it is still 0.
models::ModelSpec model_spec(const ModelConfig& m);

// Problems with fields this build cannot run yet, each "field: message" (empty when the
// config is runnable here). Used by check_runnable() and `lathe validate`.
std::vector<std::string> unsupported_features(const RunConfig& cfg);
// Throws ConfigError (origin "config") listing unsupported_features(cfg), if any.
void check_runnable(const RunConfig& cfg);

// "auto" -> cuda:0 when a GPU and CUDA kernels are present, else cpu; "cpu"; "cuda[:N]"
// (throws naming train.device when this build or machine has no CUDA).
Device resolve_device(const std::string& spec);

// The tokenizer of data.tokenizer (errors name the field and the path).
std::unique_ptr<data::Tokenizer> load_run_tokenizer(const RunConfig& cfg);

// Sets model.vocab_size from the tokenizer when it is 0, and checks that a set vocab_size
// covers every id of the tokenizer (ConfigError naming model.vocab_size otherwise).
void apply_tokenizer_vocab(RunConfig& cfg, const data::Tokenizer& tok);

struct RunData {
  std::shared_ptr<const data::TokenIds> tokens;  // the whole corpus, tokenized
  data::PackedLMDataset train;                   // windows of train.seq_len
  data::PackedLMDataset val;                     // size() == 0 when val_fraction == 0
  std::string description;                       // "synthetic corpus (seed 0, 1048576 bytes)"
};

// Reads (or generates) the corpus of cfg.data, tokenizes it and splits it by
// data.val_fraction (or reads data.val_path as the validation set). cfg must be resolved.
RunData load_run_data(const RunConfig& cfg, const data::Tokenizer& tok);

// Training FLOPs per token, 6N + 6LCT (llm.c / specs/core.md 1.1): N parameters, L layers,
// C = d_model, T = the sequence length trained on.
double flops_per_token(const models::ModelSpec& spec, int64_t seq_len);

}  // namespace lathe::train
