// Import of Hugging Face transformers checkpoints (config.json + model.safetensors, or
// model.safetensors.index.json and its shards) into lathe models.
//
// Name mapping (see hf_tensor_layout in models/hf_config.h):
//   GPT-2 ("transformer." or bare prefix): wte -> embed, wpe -> pos_embed, h.N.ln_1 ->
//   layers.N.attn_norm, h.N.attn.c_attn (Conv1D [C, 3C], x @ W + b) -> q/k/v_proj (split,
//   transposed to [out, in]), attn.c_proj -> o_proj, ln_2 -> mlp_norm, mlp.c_fc -> mlp.fc,
//   mlp.c_proj -> mlp.proj, ln_f -> final_norm.
//   Llama family ("model." or bare prefix): embed_tokens -> embed, layers.N.input_layernorm ->
//   attn_norm, self_attn.{q,k,v,o}_proj -> attn.* (Qwen2: q/k/v .bias too),
//   post_attention_layernorm -> mlp_norm,
//   mlp.{gate,up,down}_proj -> mlp.*, norm -> final_norm. HF Llama rotates pairs (i, i + D/2)
//   (rotate_half), as lathe's RoPE kernels do, so q/k need no permutation.
//   lm_head.weight: the output matrix when embeddings are untied; when tied it may be absent
//   or present, and then must equal the embedding.
// Skipped (non-parameter buffers old files carry): GPT-2 h.N.attn.bias / h.N.attn.masked_bias
// (causal masks), Llama layers.N.self_attn.rotary_emb.inv_freq (checked against
// rope_inv_freq(spec): rope_theta and rope_scaling).
//
// Everything else is an error naming the file and tensor: a missing tensor, a shape mismatch
// (both shapes), a non-floating dtype, and any tensor that has no place in the lathe model
// (e.g. projection biases that config.json does not declare).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "models/hf_config.h"
#include "models/model.h"

namespace lathe::models {

// Reads dir/config.json, builds the model and fills every parameter from the safetensors
// in `dir`; F32/BF16/F16 tensors are converted to `param_dtype` (round to nearest even).
std::unique_ptr<CausalLM> load_hf_model(const std::string& dir, DType param_dtype = DType::f32);

// Fills the parameters of an existing model (its spec gives the layout) from `path`: a
// checkpoint directory, an index .json or a .safetensors file. Values are converted to each
// parameter's current dtype and copied in place (param.copy_), so layers keep their handles.
// Everything is validated before the first parameter is written.
void load_hf_weights(CausalLM& model, const std::string& path);

// Copies the HF tensor `src` of `rule` (models/hf_config.h) into the lathe parameters it holds
// (`params`, in rule.params order, shapes already checked): the inverse of hf_tensor().

void copy_hf_tensor(const HfTensorRule& rule, const Tensor& src, const std::vector<Tensor>& params);

}  // namespace lathe::models
