// Loading, overriding, checking and printing a lathe.RunConfig (configs/lathe.proto).
//
//   RunConfig cfg = lathe::configs::load_config("configs/quickstart.pbtxt", {"optimizer.lr=1e-3"});
//   std::cout << lathe::configs::to_text(cfg);   // resolved: every knob explicit
//
// Every problem surfaces as one ConfigError listing all errors found, each as
// `file:line:col: message` (1-based line and column; a column counts bytes, so a tab is 1).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/lathe.pb.h"
#include "core/error.h"

namespace lathe::configs {

// One or more problems with a config: what() starts with the origin (file name, or
// "override") and lists every error on its own line. The origin "config" (what code past
// loading, e.g. the trainer, uses) becomes the file of the last successful load_config(),
// so errors found at train time still name the file to edit.
class ConfigError : public lathe::Error {
 public:
  ConfigError(std::string origin, std::vector<std::string> errors);
  const std::string& origin() const { return origin_; }
  // Each error as it appears in what(), e.g. "run.pbtxt:3:7: Message type ... (did you mean ...)".
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string origin_;
  std::vector<std::string> errors_;
};

// Reads a config file, applies overrides ("path=value", in order), fills derived defaults
// (resolve) and checks it (validate). Text format for .pbtxt/.prototxt/.txtpb/.textproto,
// JSON for .json (other extensions: JSON if the file starts with '{', else text).
// Throws ConfigError listing every parse error, every bad override, or every semantic
// problem (each located at the field's line:col in the file when the file set it).
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The path the last successful load_config() read ("" before any).
std::string loaded_config_file();

// Parses text format (e.g. a config stored in a checkpoint); `origin` names the source in
// errors. Does not resolve or validate.
RunConfig parse_text(const std::string& text, const std::string& origin);

// Parses JSON (proto field names or their camelCase forms); errors as for parse_text.
RunConfig parse_json(const std::string& text, const std::string& origin);

// Text format of `cfg`, the inverse of parse_text (parse_text(to_text(c)) equals c).
std::string to_text(const RunConfig& cfg);

// Applies one override "a.b.c=value": strings need no quotes, enums are given by name
// (any case), bools as true/false/1/0/yes/no/on/off, a message field takes a "{...}" block,
// a repeated field gets the value appended. Throws ConfigError naming the override, with a
// suggestion for a misspelled path.
void apply_override(RunConfig& cfg, const std::string& spec);
// Applies all of them, collecting every bad one into a single ConfigError.
void apply_overrides(RunConfig& cfg, const std::vector<std::string>& specs);

// Semantic checks; each message starts with the field path it is about, e.g.
// "train.micro_batch: must be > 0 (got 0)". Empty when the config is usable.
// Works on resolved and unresolved configs (0 = auto values are accepted).
std::vector<std::string> validate(const RunConfig& cfg);

// Makes every field explicit: writes each default into the message and fills the derived
// values (run_dir = runs/<name>, model.bias by arch, model.n_kv_head = n_head, model.d_ff,
// model.vocab_size for the byte tokenizer, train.seq_len = model.max_seq_len,
// checkpoint.dir = <run_dir>/checkpoints, sample.seed = train.seed, data.tokenizer
// "auto" -> "byte"). Idempotent.
// model.vocab_size stays 0 for a file tokenizer (the trainer takes it from the tokenizer).
// With model.init_from set, data.tokenizer "auto", model.vocab_size 0 and train.seq_len 0
// stay as they are: the trainer fills them from the source model (train/init_from.h) and
// resolves again. The parameter count of a model is models::count_parameters(ModelSpec).
void resolve(RunConfig& cfg);

// The MLP width resolve() gives for d_ff = 0: 4*d_model for GPT2; for LLAMA the SwiGLU rule
// of the Llama reference code, round_up(int(2*4*d_model/3), ffn_multiple_of).
int64_t default_d_ff(const ModelConfig& model);

// optimizer.eight_bit.f32_params when unset: the token and position embeddings of lathe's
// models ("embed.weight", "pos_embed.weight", also under a prefix) keep f32 moments with 8-bit
// states (Dettmers' guidance, transformers#14819). resolve() writes it into the config.
inline constexpr const char* kDefaultEightBitF32Params = "(.*\\.)?(embed|pos_embed)\\.weight";

}  // namespace lathe::configs
