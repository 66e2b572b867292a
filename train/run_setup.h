// From a RunConfig to the objects a run needs: the ModelSpec, the tokenizer, the device and
// the train/validation datasets. Shared by `lathe train`, `finetune`, `eval` and `generate`.
//
// This build trains decoder-only LMs (f32; bf16 autocast with f32 master weights on CUDA)
// from SYNTHETIC, TEXT, HDF5 (prepared shards, plain or instruction) or JSONL data, from
// random init or model.init_from (train/init_from.h); config features that belong to later
// work (model.dtype BF16, bf16 on the CPU) are rejected by check_runnable() with a message
// naming the field. train/run_plan.h puts these steps together for the trainer.
//
// Data sources (load_run_data):
//   SYNTHETIC / TEXT  tokenized here, packed into windows of train.seq_len, the last
//                     val_fraction of the windows held out (or data.val_path read as the
//                     validation set).
//   HDF5              a `lathe prepare` output directory (or one shard file). Plain ("lm")
//                     shards: packed windows of the train split; instruction shards (with a
//                     loss mask): one sample per document, prompt tokens ignored by the loss
//                     (data/instruction_dataset.h; data.mask_prompt false trains on every
//                     token). Validation: data.val_path, else the prepared val split, else
//                     the last val_fraction of the windows/documents. The shards must have
//                     been tokenized by the run's tokenizer (ConfigError naming both ids).
//   JSONL             prepared (data/prepare.h, records as data.format says) into
//                     <run_dir>/data/ by rank 0 at the start of every run (deterministic, so
//                     a resumed run sees the same data), then read as HDF5.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "core/device.h"
#include "data/instruction_dataset.h"
#include "data/lm_dataset.h"
#include "data/tokenizer.h"
#include "models/model.h"
#include "parallel/communicator.h"

namespace lathe::train {

// The ModelSpec a resolved ModelConfig describes (vocab_size must be known, i.e. > 0).
// Throws ConfigError naming model.vocab_size when it is still 0.
models::ModelSpec model_spec(const ModelConfig& m);
// The inverse for the architecture fields: writes every shape field of `s` (arch, vocab,
// layers, heads, widths, max_seq_len, norm_eps, rope_theta and rope_scaling, tying, biases,
// init_std) into m, leaving dropout, dtype and init_from alone.
void set_model_config(ModelConfig* m, const models::ModelSpec& s);

// Problems with fields this build cannot run yet, each "field: message" (empty when the
// config is runnable here). Used by check_runnable() and `lathe validate`.
std::vector<std::string> unsupported_features(const RunConfig& cfg);
// Throws ConfigError (origin "config") listing unsupported_features(cfg), if any.
void check_runnable(const RunConfig& cfg);

// "auto" -> cuda:0 when a GPU and CUDA kernels are present, else cpu; "cpu"; "cuda[:N]"
// (throws naming train.device when this build or machine has no CUDA).
Device resolve_device(const std::string& spec);

// The tokenizer of data.tokenizer (errors name the field and the path; "auto" must have been
// resolved by configs::resolve or apply_init_from).
std::unique_ptr<data::Tokenizer> load_run_tokenizer(const RunConfig& cfg);

// Sets model.vocab_size from the tokenizer when it is 0, and checks that a set vocab_size
// covers every id of the tokenizer (ConfigError naming model.vocab_size otherwise).
void apply_tokenizer_vocab(RunConfig& cfg, const data::Tokenizer& tok);

struct RunData {
  // Packed LM data (instruction == false).
  std::shared_ptr<const data::TokenIds> tokens;  // the training corpus, tokenized
  data::PackedLMDataset train;                   // windows of train.seq_len
  data::PackedLMDataset val;                     // size() == 0 when there is no validation split
  // Instruction data (instruction == true): one sample per document, prompt tokens masked.
  bool instruction = false;
  data::InstructionDataset train_instr, val_instr;
  std::string description;  // "synthetic corpus (seed 0, 1048576 bytes), ..."

  int64_t train_size() const { return instruction ? train_instr.size() : train.size(); }
  int64_t val_size() const { return instruction ? val_instr.size() : val.size(); }
};

// Reads (or generates, or prepares) the data of cfg.data with tokenizer `tok` (see the top
// of this file). cfg must be resolved, with model.vocab_size known. With comm, a JSONL
// source is prepared by rank 0 only and the other ranks wait for it (collective); without
// one the caller is the only process. Problems with the data are ConfigErrors naming the
// field (data.path, data.val_path, data.tokenizer, ...).
RunData load_run_data(const RunConfig& cfg, const data::Tokenizer& tok, parallel::Communicator* comm = nullptr);

// Training FLOPs per token, 6N + 6LCT (llm.c / specs/core.md 1.1): N parameters, L layers,
// C = d_model, T = the sequence length trained on.
double flops_per_token(const models::ModelSpec& spec, int64_t seq_len);

}  // namespace lathe::train
