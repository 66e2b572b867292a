// LoRA adapters in the Hugging Face peft layout: a directory with adapter_model.safetensors
// and adapter_config.json, as PeftModel.save_pretrained writes them and
// PeftModel.from_pretrained reads them.
//
// Keys: "base_model.model." + the transformers module name + ".lora_A.weight" [r, in] /
// ".lora_B.weight" [out, r] (the adapter name stripped, as peft saves), e.g.
//   Llama  base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
//   GPT-2  base_model.model.transformer.h.0.attn.c_attn.lora_A.weight
// Biases (bias "all" / "lora_only") and modules_to_save tensors are stored under their
// transformers names with the same prefix ("base_model.model.lm_head.weight"); the bias of
// an adapted layer as peft (0.21) writes it, "<module>.base_layer.bias" (lathe reads both). Module names
// come from models/hf_config.h's tensor layout (the same mapping as HF import and export).
//
// GPT-2's c_attn is one Conv1D for q, k and v (peft: fan_in_fan_out), while lathe has three
// linears. peft's LoRA factors keep the nn.Linear layout even for a Conv1D (A [r, in],
// B [3d, r]), so:
//   - load: one c_attn adapter (A, B) becomes q/k/v adapters that share A (each holds a
//     copy) with B split into its three row blocks: B_q A x = rows 0..d of B A x, exactly;
//   - save: if q, k and v carry equal A (bit for bit), the same rank and alpha, they are
//     written back as that one adapter; otherwise the ranks are stacked,
//     A = [A_q; A_k; A_v] (r_q + r_k + r_v rows) and B = blockdiag(B_q, B_k, B_v), whose product
//     is exactly [B_q A_q; B_k A_k; B_v A_v] (a missing projection is a zero-rank block). With
//     equal scales the blocks are stored unchanged and alpha is set so that the stacked rank
//     gives the same scale; with different scales each block of B carries its own scale and
//     alpha gives scale 1. rank_pattern / alpha_pattern hold each module's rank and alpha.
//     The safetensors metadata records lathe's split ("lathe_split.<module>"), so lathe reads
//     the adapters back as they were (bit for bit when the scales were equal).
//
// Loading checks everything before it changes the model: every tensor must have a place and
// the shape the config's rank gives it, and an adapter needs both factors; errors name the
// tensor and the file.
#pragma once

#include <string>
#include <vector>

#include "models/model.h"
#include "peft/inject.h"

namespace lathe::peft {

struct AdapterSaveOptions {
  std::string base_model_name_or_path;  // written as is into adapter_config.json
  // The defaults rank_pattern / alpha_pattern are relative to (module ranks and alphas that
  // differ are listed there).
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool use_rslora = false;
  LoraInit init = LoraInit::kaiming;
  BiasMode bias = BiasMode::none;
  std::vector<std::string> modules_to_save;  // lathe module names (InjectResult)
};
// The save options that describe an injection.
AdapterSaveOptions save_options(const PeftOptions& opts, const InjectResult& res, const std::string& base = "");

// Writes dir/adapter_model.safetensors and dir/adapter_config.json (dir created). Every
// LoraLinear of the model must be unmerged and have a place in the model's Hugging Face layout.
void save_adapter(models::CausalLM& model, const std::string& dir, const AdapterSaveOptions& opts);

struct LoadedAdapter {
  PeftOptions options;  // r, alpha, dropout, rslora, bias, as the config says
  InjectResult injected;
};
// Reads an adapter directory into `model`: linear layers without an adapter get a LoraLinear,
// layers that have one must have the same rank and are filled. Afterwards, as after
// inject_lora, only the adapters, the saved modules and the config's biases train.
LoadedAdapter load_adapter(models::CausalLM& model, const std::string& dir);

}  // namespace lathe::peft
