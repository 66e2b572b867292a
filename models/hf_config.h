// Hugging Face transformers side of a ModelSpec: config.json <-> ModelSpec, and the tensor
// layout (HF tensor names and how each maps onto lathe parameters) shared by import and export.
//
// Supported model_type values: "gpt2" (GPT2LMHeadModel) and the Llama family "llama",
// "qwen2", "mistral" (all Arch::llama: RMSNorm, rotate_half RoPE, SwiGLU, GQA). Qwen2 gives
// spec.qkv_bias (biases on q/k/v, none on o_proj or the MLP). Export writes "gpt2", "qwen2"
// (a Llama-family spec with qkv_bias and no other bias), "mistral" (a sliding window on every
// layer, no biases) or "llama".
//
// RoPE scaling: rope_scaling (or newer transformers' rope_parameters, which wins when both
// are present) with rope_type/type "default" or "llama3" {factor, low_freq_factor,
// high_freq_factor, original_max_position_embeddings} -> spec.rope_scaling; export writes
// it back as rope_scaling (null when none).
//
// Sliding-window attention: mistral's sliding_window (every layer), qwen2's
// use_sliding_window + sliding_window on the layers from max_window_layers on (or as
// layer_types says, when it is a run of full_attention then sliding_attention layers) ->
// spec.sliding_window, spec.full_attention_layers; max_seq_len stays max_position_embeddings.
// Export writes a windowed spec back as qwen2 (qkv_bias) or mistral (every layer, no biases).
//
// Every size field must fit lathe's 32-bit config fields (an error naming it, not a
// narrowing). What lathe cannot represent is an error naming the file and field, never dropped silently:
// other RoPE types (linear, dynamic, yarn, longrope, ...), hidden_act other than silu,
// head_dim != hidden/heads, Llama attention_bias != mlp_bias (HF's attention_bias covers
// o_proj too, which lathe biases only together with the MLP), GPT-2 options that change the
// attention math. Dropout rates in config.json are not imported (spec.dropout = 0; runs set
// their own).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "models/model.h"

namespace lathe::models {

struct HfConfig {
  std::string model_type;   // as written: "gpt2", "llama", "qwen2", "mistral"
  std::string torch_dtype;  // "torch_dtype" (or newer "dtype") as written; empty when absent
  ModelSpec spec;
};

// config.json contents -> spec. `where` names the file in errors.
HfConfig parse_hf_config(const nlohmann::json& config, const std::string& where);
// Reads `path`: a config.json file or a directory holding one. For a directory it also runs
// check_hf_sizes against the weights there (model.safetensors or its index), if any.
HfConfig read_hf_config(const std::string& path);
// Checks the sizes of `config` before a model is allocated: against the safetensors
// checkpoint `weights` (a directory, index or file; "" = none) the number of layers and the
// embedding's [vocab_size, width], and against the machine's memory (RAM + swap) the f32 parameters.
// Errors name `config_file` and the field. Reads only the safetensors headers.
void check_hf_sizes(const HfConfig& config, const std::string& config_file, const std::string& weights);

// "float32", "bfloat16", "float16", "float64" (throws for other dtypes).
const char* hf_torch_dtype_name(DType dt);
// spec -> config.json for transformers (architectures, model_type, torch_dtype and every
// shape field). Throws for specs with no HF form (a GPT-2 without biases or with GQA).
nlohmann::ordered_json hf_config_json(const ModelSpec& spec, DType dtype = DType::f32);
// Writes hf_config_json atomically (temp file, fsync, rename) to `path`.
void write_hf_config(const ModelSpec& spec, const std::string& path, DType dtype = DType::f32);

// One tensor of the HF layout and the lathe parameters it holds.
struct HfTensorRule {
  enum class Kind {
    same,    // one parameter, same shape and meaning
    conv1d,  // GPT-2 Conv1D: 2-D params [out, in] are stored transposed [in, out]; several
             // params are concatenated along the last dim (c_attn = q | k | v), biases too
  };
  std::string hf_name;
  Kind kind = Kind::same;
  std::vector<std::string> params;  // lathe parameter names, in concatenation order
};

// Standard prefix of the backbone tensors: "transformer." (GPT-2) or "model." (Llama).
// Bare base-model files ("wte.weight", "embed_tokens.weight") use the prefix "".
std::string hf_default_prefix(Arch arch);
// Every tensor of the HF layout of `spec` (lm_head.weight only when embeddings are untied;
// it never takes the prefix). Together the rules name every lathe parameter exactly once.
std::vector<HfTensorRule> hf_tensor_layout(const ModelSpec& spec, const std::string& prefix);
// Shape of the HF tensor of `rule`, given the shapes of its lathe parameters.
Shape hf_tensor_shape(const HfTensorRule& rule, const std::vector<Shape>& param_shapes);

}  // namespace lathe::models
