// Adapter injection by module name (peft's LoraModel): the linear layers that match a
// PeftOptions get a LoraLinear in their slot, every other parameter is frozen, and the
// trainable set is reported like peft's print_trainable_parameters.
//
//   peft::PeftOptions o;  o.target.names = {"q_proj", "v_proj"};  o.lora.r = 8;
//   peft::InjectResult res = peft::inject_lora(model, o);
//   std::puts(peft::parameter_report(model).str().c_str());
//
// Matching: peft/targets.h. Frozen means frozen: the base weights get requires_grad=false, so
// the linear op computes only the input gradient for them (no weight-gradient GEMM), and an
// optimizer built afterwards (optim::make_optimizer skips parameters that do not require
// grad) holds no state for them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "autograd/module.h"
#include "models/model.h"
#include "peft/lora.h"
#include "peft/lora_sb.h"
#include "peft/nola.h"
#include "peft/sora.h"
#include "peft/spiel.h"
#include "peft/targets.h"

namespace lathe::peft {

// peft's `bias`: which biases train besides the adapters.
enum class BiasMode {
  none,       // no bias
  all,        // every bias of the model
  lora_only,  // the biases of the adapted layers
};
const char* bias_mode_name(BiasMode b);  // "none", "all", "lora_only"

// The adapter of the LoRA family injected (peft/methods.h).
enum class Method {
  lora,     // LoraLinear
  lora_sb,  // LoraSbLinear (LoRA-SB, or LoRA-XS with sb.gradient_init = false)
  sora,     // SoraLinear
  nola,     // NolaLinear
  spiel,    // SparseDeltaLinear (SpIEL sparse fine-tuning; not a LoraLinear)
};
const char* method_name(Method m);

struct PeftOptions {
  Method method = Method::lora;
  LoraSbOptions sb;
  SoraOptions sora;
  NolaOptions nola;
  SpielOptions spiel;
  // Empty = peft's default (SPIEL: all-linear, every linear but the head) for the architecture: GPT-2 ["c_attn"], Llama ["q_proj", "v_proj"].
  NamePattern target;
  NamePattern exclude;
  // Per-module r and alpha (keys: peft/targets.h pattern_key), in the order given.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // Modules trained in full (and saved with the adapter); never adapted.
  std::vector<std::string> modules_to_save;
  BiasMode bias = BiasMode::none;
  LoraOptions lora;       // r, alpha: the defaults the patterns override
  uint64_t seed = 0;      // the stream the A factors are drawn from, in module order
};

// The adapter a module gets: lathe and Hugging Face names, its rank and alpha.
struct PlannedAdapter {
  std::string name, hf_name;
  int64_t in = 0, out = 0;
  int64_t r = 0;
  double alpha = 0;
  int64_t k = 0;  // SpIEL: the module's budget of sparse entries
};

// Which of `layers` get an adapter and with what rank (no model needed: sizes from a spec).
// Throws naming the field when the targets match nothing or a regex is bad.
std::vector<PlannedAdapter> plan_lora(const std::vector<LinearInfo>& layers, const PeftOptions& opts,
                                      models::Arch arch);
// SpIEL: each planned module's k from the budget (opts.spiel.budget, else int(density *
// model_params)) split by spiel_budget; throws naming the field when a module gets none.
void plan_spiel_budgets(std::vector<PlannedAdapter>& adapters, const PeftOptions& opts, int64_t model_params);
// Trainable adapter elements of plan_lora(linear_layers(spec), opts), computed without
// allocating the model (peft/methods.h adapter_parameter_count per module: LoRA
// r (in + out), LoRA-SB r^2, SoRA r (in + out) + r, NOLA k_A + k_B, SpIEL its budget).
int64_t lora_parameter_count(const models::ModelSpec& spec, const PeftOptions& opts);

struct InjectResult {
  std::vector<PlannedAdapter> adapters;     // in module order
  std::vector<std::string> modules_to_save;  // lathe module names trained in full
};

// Freezes every parameter, wraps the planned linear layers of `model` in LoraLinear (the
// model's dropout generator draws the adapter dropout), unfreezes the modules to save and the
// biases of opts.bias. Errors name the field (peft.target_modules, ...).
InjectResult inject_lora(models::CausalLM& model, const PeftOptions& opts);

// The LoraLinear layers of a module tree, with their dotted names, in module order.
std::vector<std::pair<std::string, LoraLinear*>> lora_layers(autograd::Module& root);
// The SpIEL layers (SparseDeltaLinear), likewise.
std::vector<std::pair<std::string, SparseDeltaLinear*>> spiel_layers(autograd::Module& root);
// merge()/unmerge() on every adapter (see LoraLinear, SparseDeltaLinear).
void merge_adapters(autograd::Module& root);
void unmerge_adapters(autograd::Module& root);
// Puts every wrapped base layer back in its slot; with `merge` the adapters are merged into
// the base weights first (peft's merge_and_unload), otherwise they are dropped (unload).
// Returns how many adapters were removed.
int64_t unload_adapters(autograd::Module& root, bool merge);

// peft's print_trainable_parameters.
struct ParameterReport {
  int64_t trainable = 0, total = 0;
  double percent() const { return total > 0 ? 100.0 * static_cast<double>(trainable) / static_cast<double>(total) : 0; }
  // "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
  std::string str() const;
};
ParameterReport parameter_report(const autograd::Module& root);

}  // namespace lathe::peft
