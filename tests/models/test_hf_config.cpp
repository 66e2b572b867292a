// transformers config.json <-> ModelSpec: published configs give the published parameter
// counts, defaults follow the transformers classes, unsupported settings are errors naming
// the file and field, and spec -> config.json -> spec is the identity.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "models/hf_config.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "models/safetensors.h"
#include "tests/common/test_helpers.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::models;
using json = nlohmann::json;

namespace {

// EXPECT_ERROR_HAS: tests/common/test_helpers.h.

// openai-community/gpt2 config.json (the fields lathe reads).
json gpt2_small() {
  return json::parse(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
    "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "n_inner": null,
    "layer_norm_epsilon": 1e-05, "vocab_size": 50257, "resid_pdrop": 0.1})");
}

// meta-llama/Llama-3.2-1B config.json, as published.
json llama_1b() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

void expect_same_spec(const ModelSpec& a, const ModelSpec& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.kv_heads(), b.kv_heads());
  EXPECT_EQ(a.d_model, b.d_model);
  EXPECT_EQ(a.ff_dim(), b.ff_dim());
  EXPECT_EQ(a.max_seq_len, b.max_seq_len);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
  EXPECT_EQ(a.bias, b.bias);
  EXPECT_EQ(a.has_qkv_bias(), b.has_qkv_bias());
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.full_attention_layers, b.full_attention_layers);
  if (a.rope_scaling.enabled() && b.rope_scaling.enabled()) {
    EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
    EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
    EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
    EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  }
}

}  // namespace

TEST(HfConfig, Gpt2SmallGivesGpt2Small) {
  HfConfig c = parse_hf_config(gpt2_small(), "gpt2/config.json");
  EXPECT_EQ(c.model_type, "gpt2");
  expect_same_spec(c.spec, ModelSpec::gpt2_124m());
  EXPECT_EQ(c.spec.norm_eps, 1e-5);
  EXPECT_EQ(c.spec.dropout, 0.0);  // dropout rates are not imported
  EXPECT_EQ(count_parameters(c.spec), 124439808);
}

TEST(HfConfig, Llama1bGivesLlama1b) {
  HfConfig c = parse_hf_config(llama_1b(), "llama/config.json");
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  expect_same_spec(c.spec, ModelSpec::llama_1b());
  EXPECT_EQ(count_parameters(c.spec), 1235814400);
  const ModelSpec& s = c.spec;
  EXPECT_EQ(s.d_model, 2048);
  EXPECT_EQ(s.ff_dim(), 8192);
  EXPECT_EQ(s.n_layer, 16);
  EXPECT_EQ(s.n_head, 32);
  EXPECT_EQ(s.kv_heads(), 8);
  EXPECT_EQ(s.vocab_size, 128256);
  EXPECT_EQ(s.max_seq_len, 131072);
  EXPECT_EQ(s.rope_theta, 500000.0);
  EXPECT_TRUE(s.tie_embeddings);
  EXPECT_FALSE(s.has_qkv_bias());
  EXPECT_EQ(s.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_EQ(s.rope_scaling.factor, 32.0);
  EXPECT_EQ(s.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(s.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(s.rope_scaling.original_max_position_embeddings, 8192);
}

TEST(HfConfig, Qwen2GivesQkvBiasesOnly) {
  json j = llama_1b();
  j["model_type"] = "qwen2";
  j.erase("attention_bias");
  j.erase("mlp_bias");
  j["rope_scaling"] = nullptr;
  HfConfig c = parse_hf_config(j, "qwen/config.json");
  EXPECT_FALSE(c.spec.bias);
  EXPECT_TRUE(c.spec.qkv_bias);
  EXPECT_FALSE(c.spec.rope_scaling.enabled());
  // 16 layers x (32 + 2 * 8) heads x 64 dims of q/k/v bias on top of the Llama-3.2-1B shapes.
  EXPECT_EQ(count_parameters(c.spec), 1235814400 + 16 * (32 + 2 * 8) * 64);
}

TEST(HfConfig, RopeScalingForms) {
  // Older files name the type "type"; "default" is plain RoPE.
  json j = llama_1b();
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "llama3";
  j["rope_scaling"]["factor"] = 8;  // an integer in JSON is a number too
  HfConfig c = parse_hf_config(j, "x");
  EXPECT_EQ(c.spec.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_EQ(c.spec.rope_scaling.factor, 8.0);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_FALSE(parse_hf_config(j, "x").spec.rope_scaling.enabled());
  // Newer transformers: rope_parameters holds the type, its parameters and rope_theta, and wins.
  json r = llama_1b();
  r.erase("rope_theta");
  r["rope_parameters"] = r["rope_scaling"];
  r["rope_parameters"]["rope_theta"] = 250000.0;
  r["rope_parameters"]["low_freq_factor"] = 2.0;
  r["rope_scaling"] = nullptr;
  c = parse_hf_config(r, "x");
  EXPECT_EQ(c.spec.rope_theta, 250000.0);
  EXPECT_EQ(c.spec.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_EQ(c.spec.rope_scaling.low_freq_factor, 2.0);
  r["rope_scaling"] = llama_1b()["rope_scaling"];
  r["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1.0e4}};
  EXPECT_FALSE(parse_hf_config(r, "x").spec.rope_scaling.enabled());
}

TEST(HfConfig, DefaultsFollowTheTransformersClasses) {
  json g = gpt2_small();
  g.erase("n_positions");
  g.erase("layer_norm_epsilon");
  g["n_inner"] = 100;
  HfConfig c = parse_hf_config(g, "x");
  EXPECT_EQ(c.spec.max_seq_len, 1024);
  EXPECT_EQ(c.spec.ff_dim(), 100);
  EXPECT_TRUE(c.spec.tie_embeddings);  // GPT-2 ties unless told otherwise

  for (const char* type : {"llama", "qwen2", "mistral"}) {
    json j = llama_1b();
    j["model_type"] = type;
    for (const char* k : {"num_key_value_heads", "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps",
                          "rope_theta", "hidden_act", "head_dim"})
      j.erase(k);
    HfConfig l = parse_hf_config(j, "x");
    EXPECT_EQ(l.spec.arch, Arch::llama) << type;
    EXPECT_EQ(l.spec.qkv_bias, std::string(type) == "qwen2") << type;
    EXPECT_EQ(l.spec.kv_heads(), 32) << type;
    EXPECT_FALSE(l.spec.tie_embeddings) << type;
    EXPECT_EQ(l.spec.norm_eps, 1e-6) << type;
    EXPECT_EQ(l.spec.rope_theta, 10000.0) << type;
    EXPECT_FALSE(l.spec.bias) << type;
    const int64_t max_pos = std::string(type) == "llama" ? 2048 : std::string(type) == "qwen2" ? 32768 : 131072;
    EXPECT_EQ(l.spec.max_seq_len, max_pos) << type;
  }
  // A null field means "unset", like an absent one.
  json k = llama_1b();
  k["num_key_value_heads"] = nullptr;
  EXPECT_EQ(parse_hf_config(k, "x").spec.kv_heads(), 32);
  // Llama with biases on every linear.
  k["attention_bias"] = true;
  k["mlp_bias"] = true;
  EXPECT_TRUE(parse_hf_config(k, "x").spec.bias);
  // Newer transformers put rope_theta inside rope_parameters.
  json r = llama_1b();
  r.erase("rope_theta");
  r["rope_scaling"] = nullptr;
  r["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1234.0}};
  EXPECT_EQ(parse_hf_config(r, "x").spec.rope_theta, 1234.0);
}

// Which layers get which window, as transformers 5's MistralConfig / Qwen2Config decide it;
// the window no longer limits the context (max_seq_len stays max_position_embeddings).
TEST(HfConfig, SlidingWindowPerLayer) {
  json m = llama_1b();  // 16 layers
  m["model_type"] = "mistral";
  m["max_position_embeddings"] = 32768;
  m["sliding_window"] = 4096;
  ModelSpec s = parse_hf_config(m, "x").spec;
  EXPECT_EQ(s.max_seq_len, 32768);
  EXPECT_EQ(s.sliding_window, 4096);
  EXPECT_EQ(s.full_attention_layers, 0);  // Mistral: every layer
  EXPECT_EQ(s.window_of(0), 4096);
  m["sliding_window"] = nullptr;  // null: no window
  EXPECT_EQ(parse_hf_config(m, "x").spec.sliding_window, 0);
  m.erase("sliding_window");  // absent: MistralConfig's default, 4096
  EXPECT_EQ(parse_hf_config(m, "x").spec.sliding_window, 4096);
  m["sliding_window"] = 0;
  EXPECT_ERROR_HAS(parse_hf_config(m, "m.json"), "m.json", "sliding_window");
  m["sliding_window"] = 4294967297LL;
  EXPECT_ERROR_HAS(parse_hf_config(m, "m.json"), "m.json", "sliding_window", "32-bit");

  json q = llama_1b();
  q["model_type"] = "qwen2";
  q["sliding_window"] = 64;
  q["use_sliding_window"] = false;  // Qwen2 ignores the window unless this is on
  EXPECT_EQ(parse_hf_config(q, "x").spec.sliding_window, 0);
  q["use_sliding_window"] = true;
  q["max_window_layers"] = 10;  // layers 10..15 use the window
  s = parse_hf_config(q, "x").spec;
  EXPECT_EQ(s.sliding_window, 64);
  EXPECT_EQ(s.full_attention_layers, 10);
  EXPECT_EQ(s.window_of(9), 0);
  EXPECT_EQ(s.window_of(10), 64);
  q.erase("max_window_layers");  // Qwen2Config's default 28 >= 16 layers: no layer windowed
  EXPECT_EQ(parse_hf_config(q, "x").spec.sliding_window, 0);
  // layer_types, when written, decides (and wins over max_window_layers).
  q["max_window_layers"] = 3;
  json types = json::array();
  for (int i = 0; i < 16; ++i) types.push_back(i < 5 ? "full_attention" : "sliding_attention");
  q["layer_types"] = types;
  EXPECT_EQ(parse_hf_config(q, "x").spec.full_attention_layers, 5);
  types[7] = "full_attention";  // a pattern lathe cannot represent
  q["layer_types"] = types;
  EXPECT_ERROR_HAS(parse_hf_config(q, "q.json"), "q.json", "layer_types", "layer 7");
  types[7] = "chunked_attention";
  q["layer_types"] = types;
  EXPECT_ERROR_HAS(parse_hf_config(q, "q.json"), "q.json", "layer_types[7]");
  q["layer_types"] = json::array({"full_attention"});
  EXPECT_ERROR_HAS(parse_hf_config(q, "q.json"), "q.json", "layer_types", "16");
  // Llama has no window, whatever the file says.
  json l = llama_1b();
  l["sliding_window"] = 8;
  EXPECT_EQ(parse_hf_config(l, "x").spec.sliding_window, 0);
}

// Export writes the window back in the form transformers reads: Mistral for a window on
// every layer of a bias-free model, Qwen2 (use_sliding_window, max_window_layers,
// layer_types) for q/k/v biases; other windowed specs have no HF form.
TEST(HfConfig, SlidingWindowExportRoundTrips) {
  ModelSpec m = ModelSpec::llama_1b();
  m.sliding_window = 4096;
  auto mj = hf_config_json(m);
  EXPECT_EQ(mj["model_type"], "mistral");
  EXPECT_EQ(mj["architectures"][0], "MistralForCausalLM");
  EXPECT_EQ(mj["sliding_window"], 4096);
  expect_same_spec(parse_hf_config(json::parse(mj.dump()), "x").spec, m);

  ModelSpec q = ModelSpec::llama_1b();
  q.qkv_bias = true;
  q.sliding_window = 128;
  q.full_attention_layers = 6;
  auto qj = hf_config_json(q);
  EXPECT_EQ(qj["model_type"], "qwen2");
  EXPECT_EQ(qj["use_sliding_window"], true);
  EXPECT_EQ(qj["sliding_window"], 128);
  EXPECT_EQ(qj["max_window_layers"], 6);
  EXPECT_EQ(qj["layer_types"][5], "full_attention");
  EXPECT_EQ(qj["layer_types"][6], "sliding_attention");
  expect_same_spec(parse_hf_config(json::parse(qj.dump()), "x").spec, q);
  qj.erase("layer_types");  // older transformers: max_window_layers alone says the same
  expect_same_spec(parse_hf_config(json::parse(qj.dump()), "x").spec, q);

  ModelSpec partial = ModelSpec::llama_1b();
  partial.sliding_window = 64;
  partial.full_attention_layers = 2;  // only Qwen2 has a per-layer window
  EXPECT_ERROR_HAS(hf_config_json(partial), "full_attention_layers=2");
  ModelSpec g = ModelSpec::gpt2_124m();
  g.sliding_window = 64;
  EXPECT_ERROR_HAS(hf_config_json(g), "GPT-2", "sliding_window");
}

TEST(HfConfig, UnsupportedSettingsNameFileAndField) {
  json j = llama_1b();
  j["model_type"] = "bert";
  EXPECT_ERROR_HAS(parse_hf_config(j, "ckpt/config.json"), "ckpt/config.json", "bert");
  j = llama_1b();
  j.erase("model_type");
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "model_type");
  for (const char* rt : {"linear", "dynamic", "yarn", "longrope"}) {
    j = llama_1b();
    j["rope_scaling"]["rope_type"] = rt;
    EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.rope_type", rt);
  }
  j = llama_1b();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.type", "linear");
  j = llama_1b();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}};
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.low_freq_factor", "llama3");
  j = llama_1b();
  j["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.original_max_position_embeddings");
  j = llama_1b();
  j["rope_scaling"]["original_max_position_embeddings"] = 8192.5;
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "rope_scaling.original_max_position_embeddings", "integer");
  j = llama_1b();
  j["rope_scaling"]["factor"] = 0.5;
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.factor", "0.5");
  j = llama_1b();
  j["rope_scaling"]["high_freq_factor"] = 1.0;
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.high_freq_factor");
  j = llama_1b();
  j["rope_scaling"]["factor"] = "32";
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling.factor", "number");
  j = llama_1b();
  j["rope_scaling"] = 32;
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_scaling", "object");
  j = llama_1b();
  j["rope_parameters"] = {{"rope_type", "yarn"}};
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "rope_parameters.rope_type", "yarn");
  j = llama_1b();
  j["head_dim"] = 128;
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "head_dim", "128");
  j = llama_1b();
  j["hidden_act"] = "gelu";
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "hidden_act", "gelu");
  j = llama_1b();
  j["attention_bias"] = true;  // Llama's attention_bias biases o_proj too: neither bias nor qkv_bias
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "attention_bias", "mlp_bias", "o_proj");
  j = llama_1b();
  j.erase("hidden_size");
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "hidden_size");
  j = llama_1b();
  j["num_hidden_layers"] = "16";
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "num_hidden_layers", "integer");
  j = llama_1b();
  j["num_key_value_heads"] = 5;  // 32 % 5 != 0: the spec's own check, prefixed with the file
  EXPECT_ERROR_HAS(parse_hf_config(j, "f.json"), "f.json", "n_kv_head");
  json g = gpt2_small();
  g["activation_function"] = "relu";
  EXPECT_ERROR_HAS(parse_hf_config(g, "g.json"), "g.json", "activation_function", "relu");
  g = gpt2_small();
  g["scale_attn_by_inverse_layer_idx"] = true;
  EXPECT_ERROR_HAS(parse_hf_config(g, "g.json"), "g.json", "scale_attn_by_inverse_layer_idx");
  EXPECT_ERROR_HAS(parse_hf_config(json::array(), "g.json"), "g.json", "object");
}

TEST(HfConfig, SpecToConfigToSpecIsTheIdentity) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    for (bool tie : {true, false}) {
      ModelSpec s = a == Arch::gpt2 ? ModelSpec::gpt2_124m() : ModelSpec::llama_1b();
      s.tie_embeddings = tie;
      s.d_ff = 1000;
      s.norm_eps = 3e-6;
      auto j = hf_config_json(s, DType::bf16);
      EXPECT_EQ(j["torch_dtype"], "bfloat16");
      EXPECT_EQ(j["model_type"], a == Arch::gpt2 ? "gpt2" : "llama");
      EXPECT_EQ(j["architectures"][0], a == Arch::gpt2 ? "GPT2LMHeadModel" : "LlamaForCausalLM");
      // Through text, as transformers would read it.
      HfConfig back = parse_hf_config(json::parse(j.dump()), "x");
      expect_same_spec(back.spec, s);
      EXPECT_EQ(back.torch_dtype, "bfloat16");
    }
  }
  // Llama 3 RoPE scaling is written back with every parameter; none is written as null.
  auto lj = hf_config_json(ModelSpec::llama_1b());
  EXPECT_EQ(lj["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(lj["rope_scaling"]["factor"], 32.0);
  EXPECT_EQ(lj["rope_scaling"]["low_freq_factor"], 1.0);
  EXPECT_EQ(lj["rope_scaling"]["high_freq_factor"], 4.0);
  EXPECT_EQ(lj["rope_scaling"]["original_max_position_embeddings"], 8192);
  ModelSpec unscaled = ModelSpec::llama_1b();
  unscaled.rope_scaling = RopeScaling{};
  EXPECT_TRUE(hf_config_json(unscaled)["rope_scaling"].is_null());
  expect_same_spec(parse_hf_config(json::parse(hf_config_json(unscaled).dump()), "x").spec, unscaled);
  // q/k/v-only biases are written as Qwen2 (whose attention always has them), with or
  // without RoPE scaling; biases everywhere stay Llama.
  for (bool scaled : {false, true}) {
    ModelSpec q = scaled ? ModelSpec::llama_1b() : unscaled;
    q.qkv_bias = true;
    auto qj = hf_config_json(q);
    EXPECT_EQ(qj["model_type"], "qwen2");
    EXPECT_EQ(qj["architectures"][0], "Qwen2ForCausalLM");
    EXPECT_EQ(qj["use_sliding_window"], false);
    HfConfig back = parse_hf_config(json::parse(qj.dump()), "x");
    expect_same_spec(back.spec, q);
    EXPECT_TRUE(back.spec.qkv_bias);
    EXPECT_EQ(back.spec.max_seq_len, q.max_seq_len);
  }
  ModelSpec all = ModelSpec::llama_1b();
  all.bias = true;
  all.qkv_bias = true;
  EXPECT_EQ(hf_config_json(all)["model_type"], "llama");
  EXPECT_EQ(hf_config_json(all)["attention_bias"], true);
  ModelSpec bad = ModelSpec::gpt2_124m();
  bad.bias = false;
  EXPECT_ERROR_HAS(hf_config_json(bad), "bias");
  bad = ModelSpec::gpt2_124m();
  bad.n_kv_head = 4;
  EXPECT_ERROR_HAS(hf_config_json(bad), "n_kv_head=4");
  EXPECT_ERROR_HAS(hf_config_json(ModelSpec::llama_1b(), DType::i32), "i32");
}

TEST(HfConfig, WriteAndReadFiles) {
  fs::path dir = fs::temp_directory_path() / ("lathe_hfcfg_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  ModelSpec s = ModelSpec::llama_1b();
  s.n_layer = 3;
  write_hf_config(s, (dir / "config.json").string(), DType::f16);
  HfConfig c = read_hf_config(dir.string());  // the directory finds its config.json
  expect_same_spec(c.spec, s);
  EXPECT_EQ(c.torch_dtype, "float16");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename(), "config.json");  // no temp file left behind
  }
  EXPECT_EQ(files, 1);
  { std::ofstream(dir / "bad.json") << "{\"model_type\": \"llama\", "; }
  EXPECT_ERROR_HAS(read_hf_config((dir / "bad.json").string()), "bad.json", "invalid JSON");
  EXPECT_ERROR_HAS(read_hf_config((dir / "none").string()), "none", "does not exist");
  fs::remove_all(dir);
}

TEST(HfConfig, LayoutNamesEveryParameterOnce) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    for (bool tie : {true, false}) {
      for (int biases = 0; biases < 3; ++biases) {  // all, none, q/k/v only
        const bool bias = biases == 0, qkv = biases == 2;
        if (a == Arch::gpt2 && !bias) continue;
        ModelSpec s;
        s.arch = a;
        s.vocab_size = 7;
        s.n_layer = 2;
        s.n_head = 2;
        s.n_kv_head = a == Arch::llama ? 1 : 0;
        s.d_model = 4;
        s.max_seq_len = 5;
        s.tie_embeddings = tie;
        s.bias = bias;
        s.qkv_bias = qkv;
        auto m = build_model(s, 1);
        std::multiset<std::string> named;
        std::set<std::string> hf;
        for (const auto& r : hf_tensor_layout(s, hf_default_prefix(a))) {
          named.insert(r.params.begin(), r.params.end());
          EXPECT_TRUE(hf.insert(r.hf_name).second) << r.hf_name;
        }
        std::multiset<std::string> params;
        for (const auto& [n, t] : m->named_parameters()) params.insert(n);
        EXPECT_EQ(named, params) << arch_name(a) << " tie=" << tie << " bias=" << bias << " qkv_bias=" << qkv;
        EXPECT_EQ(hf.count("lm_head.weight"), tie ? 0u : 1u);
        if (a == Arch::llama) {
          EXPECT_EQ(hf.count("model.layers.1.self_attn.v_proj.bias"), bias || qkv ? 1u : 0u);
          EXPECT_EQ(hf.count("model.layers.1.self_attn.o_proj.bias"), bias ? 1u : 0u);
          EXPECT_EQ(hf.count("model.layers.1.mlp.up_proj.bias"), bias ? 1u : 0u);
        }
      }
    }
  }
  // Fused c_attn: [in, q|k|v] for weights, [q|k|v] for biases.
  HfTensorRule r{"c_attn", HfTensorRule::Kind::conv1d, {"q", "k", "v"}};
  EXPECT_EQ(hf_tensor_shape(r, {{4, 6}, {4, 6}, {4, 6}}), (Shape{6, 12}));
  EXPECT_EQ(hf_tensor_shape(r, {{4}, {4}, {4}}), (Shape{12}));
}

// 64-bit sizes must not be narrowed into lathe's 32-bit config fields (issue 8): they are
// refused at parse time, naming the file and the field.
TEST(HfConfig, SizesBeyond32BitsAreRefusedNotNarrowed) {
  json g = gpt2_small();
  g["n_layer"] = 4294967297LL;  // 2^32 + 1: would narrow to n_layer 1
  EXPECT_ERROR_HAS(parse_hf_config(g, "big/config.json"), "big/config.json", "\"n_layer\"", "4294967297",
                   "32-bit");
  json l = llama_1b();
  l["vocab_size"] = (1LL << 32) + 300;  // would narrow to 300
  EXPECT_ERROR_HAS(parse_hf_config(l, "l.json"), "l.json", "\"vocab_size\"", "4294967596");
  l = llama_1b();
  l["num_key_value_heads"] = -4294967288LL;
  EXPECT_ERROR_HAS(parse_hf_config(l, "l.json"), "l.json", "num_key_value_heads");
  l = llama_1b();
  l["rope_scaling"]["original_max_position_embeddings"] = 1LL << 40;
  EXPECT_ERROR_HAS(parse_hf_config(l, "l.json"), "l.json", "original_max_position_embeddings", "32-bit");
  l = llama_1b();
  l["vocab_size"] = 2147483647;  // the largest that fits is still accepted
  EXPECT_EQ(parse_hf_config(l, "l.json").spec.vocab_size, 2147483647);
}

namespace {
// A tiny GPT-2 or Llama saved as a Hugging Face directory, with config.json then edited.
class HfSizes : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lathe_hfsizes_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string save(const ModelSpec& s, const std::string& sub) {
    auto m = build_model(s, 1);
    const std::string d = (dir_ / sub).string();
    save_hf_model(*m, d);
    return d;
  }
  static json read_json(const std::string& f) {
    std::ifstream in(f);
    return json::parse(in);
  }
  static void write_json(const std::string& f, const json& j) { std::ofstream(f) << j.dump(); }
  static ModelSpec tiny(Arch a) {
    ModelSpec s;
    s.arch = a;
    s.vocab_size = 40;
    s.n_layer = 2;
    s.n_head = 2;
    s.d_model = 8;
    s.d_ff = 16;
    s.max_seq_len = 16;
    s.bias = a == Arch::gpt2;
    return s;
  }
  fs::path dir_;
};
}  // namespace

TEST_F(HfSizes, ConfigSizesAreCheckedAgainstTheWeightsBeforeAllocating) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    const std::string d = save(tiny(a), a == Arch::gpt2 ? "g" : "l");
    const std::string cfg = d + "/config.json";
    const char* layers = a == Arch::gpt2 ? "n_layer" : "num_hidden_layers";
    const char* width = a == Arch::gpt2 ? "n_embd" : "hidden_size";
    EXPECT_EQ(read_hf_config(d).spec.n_layer, 2);
    json j = read_json(cfg);
    json orig = j;
    j[layers] = 1000000;  // used to build a million layers before noticing
    write_json(cfg, j);
    EXPECT_ERROR_HAS(read_hf_config(d), cfg, layers, "1000000", "hold 2 layers");
    EXPECT_ERROR_HAS(load_hf_model(d), cfg, layers, "1000000");
    j = orig;
    j["vocab_size"] = 41;
    write_json(cfg, j);
    EXPECT_ERROR_HAS(load_hf_model(d), cfg, "vocab_size", "41", "40 rows");
    j = orig;
    j[width] = 16;
    j[a == Arch::gpt2 ? "n_inner" : "intermediate_size"] = 16;
    j.erase("head_dim");  // Llama writes it; it would no longer match the width
    write_json(cfg, j);
    EXPECT_ERROR_HAS(read_hf_config(d), cfg, width, "16", "width 8");
    write_json(cfg, orig);
    EXPECT_EQ(load_hf_model(d)->spec().n_layer, 2);
  }
}

TEST_F(HfSizes, AModelLargerThanMemoryIsRefusedNamingTheFields) {
  fs::create_directories(dir_);
  ModelSpec s = ModelSpec::llama_1b();
  s.n_layer = 2000000000;  // fits 32 bits; ~1e17 parameters
  write_hf_config(s, (dir_ / "config.json").string());
  EXPECT_ERROR_HAS(read_hf_config(dir_.string()), (dir_ / "config.json").string(), "memory",
                   "num_hidden_layers=2000000000", "hidden_size=2048");
  // The check on its own, without weights: a small model passes.
  EXPECT_NO_THROW(check_hf_sizes(parse_hf_config(json::parse(hf_config_json(tiny(Arch::llama)).dump()), "t.json"), "t.json", ""));
}

TEST_F(HfSizes, NonFiniteWeightsAreRefusedNamingTheTensor) {
  const std::string d = save(tiny(Arch::llama), "l");
  auto m = build_model(tiny(Arch::llama), 1);
  NamedTensors t = hf_state_dict(*m);
  for (auto& [name, v] : t)
    if (name == "model.layers.1.mlp.up_proj.weight") v.data<float>()[5] = std::nanf("");
  save_safetensors(d + "/model.safetensors", t);
  EXPECT_ERROR_HAS(load_hf_model(d), "model.layers.1.mlp.up_proj.weight", d + "/model.safetensors", "non-finite",
                   "element 5");
}
