// Which linear layers an adapter goes into, with Hugging Face peft's matching rules:
//   - a list of names: a module matches when its full dotted name equals an entry or ends
//     with "." + entry (peft's check_target_module_exists);
//   - a single regex string: std::regex_match (Python's re.fullmatch) on the full name;
//   - ["all-linear"]: every linear layer except the output head (lm_head);
//   - exclude_modules with the same rules; rank_pattern / alpha_pattern keys are regexes that
//     must match a dotted suffix of the name, the form (.*\.)?(key) (peft's get_pattern_key,
//     first key in order that matches);
//   - modules listed in modules_to_save are never adapted.
//
// Every lathe module is matched under two names: its lathe name (`layers.0.attn.q_proj`)
// and, where the model has a Hugging Face layout, the name of the module that holds its
// weight in transformers (`model.layers.0.self_attn.q_proj`, GPT-2 `transformer.h.0.attn.c_attn`
// for q, k and v). A module matches when either name does, so the target_modules of an
// adapter_config.json written for peft (`c_attn`, `self_attn.q_proj`) select the same layers
// in lathe as they do in transformers.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/model.h"

namespace lathe::peft {

// A set of module names with peft's semantics: list entries (equal or "."-suffix) or one
// full-match regex. Empty (no entries, no regex) matches nothing.
struct NamePattern {
  std::vector<std::string> names;
  std::string regex;  // used when non-empty (then `names` must be empty)
  bool empty() const { return names.empty() && regex.empty(); }
  bool all_linear() const { return regex.empty() && names.size() == 1 && names[0] == "all-linear"; }
  // Throws naming `field` for a regex that does not compile.
  bool matches(const std::string& module_name, const std::string& field) const;
};

// The first key of `pattern` (in order) that matches a dotted suffix of `name` (regex
// (.*\.)?(key), full match), or nullopt.
std::optional<std::string> pattern_key(const std::vector<std::string>& keys, const std::string& name,
                                       const std::string& field);

// A linear layer of a model spec, without building the model.
struct LinearInfo {
  std::string name;     // lathe module name, e.g. layers.0.attn.q_proj
  std::string hf_name;  // Hugging Face module name (transformer.h.0.attn.c_attn), "" when none
  int64_t in = 0, out = 0;
  bool bias = false;
  bool output_head = false;  // lm_head
};
// Every linear layer of build_model(spec), in parameter order.
std::vector<LinearInfo> linear_layers(const models::ModelSpec& spec);

// lathe linear module name -> Hugging Face module name for spec (from models/hf_config.h's
// tensor layout); empty when the spec has no Hugging Face form.
std::map<std::string, std::string> hf_module_names(const models::ModelSpec& spec);

// Every lathe module with parameters (linears, norms, embeddings) -> the Hugging Face module
// holding them (final_norm -> transformer.ln_f); empty when the spec has no HF form.
std::map<std::string, std::string> hf_all_module_names(const models::ModelSpec& spec);

// One Hugging Face module that holds linear weights and the lathe modules it maps to (GPT-2
// c_attn: q_proj, k_proj, v_proj, concatenated along the output; Conv1D = stored [in, out]).
struct HfLinearModule {
  std::string hf_name;                    // e.g. transformer.h.0.attn.c_attn (no base_model.model.)
  std::vector<std::string> lathe_names;   // in concatenation order
  bool conv1d = false;
};
std::vector<HfLinearModule> hf_linear_modules(const models::ModelSpec& spec);

}  // namespace lathe::peft
