// Fine-tuning: starting a run from pretrained weights (model.init_from).
//
// Two kinds of source:
//   Hugging Face  a directory with config.json and model.safetensors (or an index and its
//                 shards), e.g. a download of "gpt2" or "Qwen/Qwen2-0.5B", or the output
//                 of `lathe export` (models/hf_import.h);
//   lathe         a checkpoint of a lathe run: a rank file, a step directory, a checkpoint
//                 directory or a run directory (their newest complete step). The weights come
//                 from the rank 0 file (data-parallel ranks hold identical weights).
//
// The source defines the architecture. Its config (config.json, or the config stored in the
// checkpoint) replaces every shape field of the run config's model section; only
// model.dropout (which HF files do not carry), model.dtype and model.init_from itself are
// kept from the run config. A note says so when the run config's shape differs, so nobody
// believes their `n_layer: 4` took effect. Choosing this over "must agree" lets one config
// fine-tune any model without restating its shape.
//
// data.tokenizer "auto" (or "") becomes the source's tokenizer: the Hugging Face directory
// itself when it holds tokenizer.json (or vocab.json + merges.txt), or the data.tokenizer of
// the lathe checkpoint's stored config. train.seq_len 0 becomes the source's max_seq_len.
// The resolved config that checkpoints store carries all of this explicitly, so `lathe eval`
// and `generate` of a fine-tuned run do not need the source any more.
#pragma once

#include <string>
#include <vector>

#include "configs/config.h"
#include "models/model.h"

namespace lathe::train {

struct InitSource {
  enum class Kind { none, hugging_face, lathe };
  Kind kind = Kind::none;
  std::string path;         // model.init_from as written
  std::string weights;      // the HF directory, or the lathe rank file
  models::ModelSpec spec;   // the source's architecture, with the run's dropout
  std::string description;  // one line: what the source is
  std::vector<std::string> notes;  // fields of the run config that the source overrode

  bool enabled() const { return kind != Kind::none; }
};

// When cfg.model().init_from is set: reads the source's architecture into cfg.model (see
// above), resolves data.tokenizer "auto" and train.seq_len 0 from it, and returns what it
// found. Call before configs::resolve(). Without init_from, returns Kind::none and leaves cfg
// alone. Throws ConfigError naming model.init_from (a path that is neither kind, a config
// lathe cannot represent) or data.tokenizer (auto with no tokenizer in the source).
InitSource apply_init_from(RunConfig& cfg);

// Copies the source's weights into `model`, built from source.spec (every parameter must be
// present with its shape: errors name the parameter). Throws CheckpointError for a lathe
// source that cannot be read, lathe::Error (naming file and tensor) for an HF one.
void load_init_weights(const InitSource& source, models::CausalLM& model);

}  // namespace lathe::train
