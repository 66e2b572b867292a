// Export of lathe models as Hugging Face transformers checkpoints: config.json plus
// model.safetensors (or model-0000k-of-0000n.safetensors + model.safetensors.index.json),
// in the layout of the model's family: GPT2LMHeadModel ("transformer.*", Conv1D weights
// transposed to [in, out], q/k/v fused into c_attn, lm_head omitted when tied) or
// LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM ("model.*", q/k/v biases for a
// qkv_bias spec, lm_head.weight when untied; rope_scaling and the sliding window in
// config.json, see hf_config_json). The inverse of load_hf_model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "models/hf_config.h"
#include "models/model.h"
#include "models/safetensors.h"

namespace lathe::models {

// The model's parameters under their HF names and shapes, converted to `dtype`. Throws when
// a parameter has no place in the layout (e.g. un-merged adapters).
NamedTensors hf_state_dict(const CausalLM& model, DType dtype = DType::f32);
// The one HF tensor of `rule` (models/hf_config.h) built from the model's parameters
// (Conv1D transposed, c_attn fused), converted to `dtype`.

Tensor hf_tensor(const CausalLM& model, const HfTensorRule& rule, DType dtype = DType::f32);

// Writes the checkpoint into `dir` (created if missing). dtype: f32, bf16 or f16.
// max_shard_bytes > 0 splits the tensors into shards of at most that many bytes (a larger
// tensor gets a shard of its own) with an index; 0 writes one model.safetensors.
// Every file is written to a temporary name and renamed; the index comes after its shards
// and config.json last. Weight files of an earlier save that the new one does not use
// (model.safetensors, other shards, a stale index) are removed, so the directory always
// loads as the newest complete checkpoint. Safetensors metadata carries {"format": "pt"},
// which transformers requires.
// `tokens` (ids of the tokenizer's role tokens, where it has them) go into config.json as
// bos/eos/pad_token_id and into generation_config.json, which is always written (so that
// transformers' generate() stops at the tokenizer's end token).
struct HfTokenIds {
  std::optional<int32_t> bos, eos, pad;
};
void save_hf_model(const CausalLM& model, const std::string& dir, DType dtype = DType::f32,
                   int64_t max_shard_bytes = 0, const HfTokenIds& tokens = {});

// generation_config.json text for `tokens` (ids that are unknown are left out).
std::string hf_generation_config_json(const HfTokenIds& tokens);

}  // namespace lathe::models
