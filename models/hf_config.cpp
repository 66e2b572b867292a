#include "models/hf_config.h"

#include "core/memory.h"
#include "core/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "models/safetensors.h"

namespace lathe::models {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Typed access to config.json fields with errors that name the file and the field.
// A field that is present but null counts as absent (transformers writes null for "unset").
class Fields {
 public:
  Fields(const json& j, const std::string& where) : j_(j), where_(where) {}

  bool has(const char* k) const {
    auto it = j_.find(k);
    return it != j_.end() && !it->is_null();
  }
  const json& raw(const char* k) const { return j_.at(k); }
  const json& object() const { return j_; }

  int64_t integer(const char* k) const {
    LATHE_CHECK(has(k)) << where_ << ": missing field \"" << k << "\"" << type_hint();
    const json& v = j_.at(k);
    LATHE_CHECK(v.is_number_integer()) << where_ << ": field \"" << k << "\" must be an integer, got " << v.dump();
    // lathe's run config (configs/lathe.proto) holds these sizes in 32-bit fields; a larger
    // value would be narrowed there into a different model, so it is refused here.
    LATHE_CHECK(v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(INT32_MAX)
                                       : v.get<int64_t>() >= INT32_MIN && v.get<int64_t>() <= INT32_MAX)
        << where_ << ": field \"" << k << "\" is " << v.dump()
        << ", which does not fit lathe's 32-bit config field (at most 2147483647)";
    return v.get<int64_t>();
  }
  int64_t integer(const char* k, int64_t def) const { return has(k) ? integer(k) : def; }

  double number(const char* k, double def) const {
    if (!has(k)) return def;
    const json& v = j_.at(k);
    LATHE_CHECK(v.is_number()) << where_ << ": field \"" << k << "\" must be a number, got " << v.dump();
    return v.get<double>();
  }

  bool boolean(const char* k, bool def) const {
    if (!has(k)) return def;
    const json& v = j_.at(k);
    LATHE_CHECK(v.is_boolean()) << where_ << ": field \"" << k << "\" must be true or false, got " << v.dump();
    return v.get<bool>();
  }

  std::string string(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    const json& v = j_.at(k);
    LATHE_CHECK(v.is_string()) << where_ << ": field \"" << k << "\" must be a string, got " << v.dump();
    return v.get<std::string>();
  }

 private:
  std::string type_hint() const {
    auto it = j_.find("model_type");
    return it != j_.end() && it->is_string() ? " (model_type " + it->get<std::string>() + ")" : "";
  }
  const json& j_;
  const std::string& where_;
};

ModelSpec parse_gpt2(const Fields& f, const std::string& where) {
  ModelSpec s;
  s.arch = Arch::gpt2;
  s.d_model = f.integer("n_embd");
  s.n_layer = f.integer("n_layer");
  s.n_head = f.integer("n_head");
  s.vocab_size = f.integer("vocab_size");
  s.max_seq_len = f.integer("n_positions", 1024);
  s.d_ff = f.integer("n_inner", 0);  // null -> 4 * n_embd, lathe's GPT-2 default too
  s.norm_eps = f.number("layer_norm_epsilon", 1e-5);
  s.tie_embeddings = f.boolean("tie_word_embeddings", true);
  s.bias = true;  // GPT-2 has biases on every Conv1D and LayerNorm
  // gelu_new and gelu_pytorch_tanh are both the tanh approximation lathe's GeluMLP computes.
  const std::string act = f.string("activation_function", "gelu_new");
  LATHE_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh")
      << where << ": field \"activation_function\" is \"" << act
      << "\"; lathe's GPT-2 MLP computes the tanh GELU (gelu_new / gelu_pytorch_tanh) only";
  // Options that change the attention math have no lathe counterpart.
  LATHE_CHECK(f.boolean("scale_attn_weights", true))
      << where << ": field \"scale_attn_weights\" is false; lathe always scales scores by 1/sqrt(head_dim)";
  LATHE_CHECK(!f.boolean("scale_attn_by_inverse_layer_idx", false))
      << where << ": field \"scale_attn_by_inverse_layer_idx\" is true; lathe has no per-layer score scaling";
  LATHE_CHECK(!f.boolean("add_cross_attention", false))
      << where << ": field \"add_cross_attention\" is true; lathe models are decoder-only";
  return s;
}

// A rope_scaling (or newer rope_parameters) object -> spec.rope_scaling. `field` names the
// object in errors. "default" (or no type) is plain RoPE; "llama3" needs all four of its
// parameters, as transformers' own validation does.
void parse_rope_scaling(const json& v, const std::string& field, const std::string& where, ModelSpec& s) {
  LATHE_CHECK(v.is_object()) << where << ": field \"" << field << "\" must be an object or null, got " << v.dump();
  Fields r(v, where);
  const bool has_rope_type = r.has("rope_type");
  const std::string rt = r.string("rope_type", r.string("type", "default"));
  const std::string type_field = field + (has_rope_type || !r.has("type") ? ".rope_type" : ".type");
  if (rt == "default") {
    s.rope_scaling = RopeScaling{};
    return;
  }
  LATHE_CHECK(rt == "llama3") << where << ": field \"" << type_field << "\" is \"" << rt
                              << "\"; lathe supports RoPE types \"default\" and \"llama3\" only";
  auto need = [&](const char* k) -> const json& {
    LATHE_CHECK(r.has(k)) << where << ": field \"" << field << "." << k << "\" is missing; rope_type llama3 needs "
                          << "factor, low_freq_factor, high_freq_factor and original_max_position_embeddings";
    const json& x = v.at(k);
    LATHE_CHECK(x.is_number()) << where << ": field \"" << field << "." << k << "\" must be a number, got " << x.dump();
    return x;
  };
  RopeScaling rs;
  rs.type = RopeScaling::Type::llama3;
  rs.factor = need("factor").get<double>();
  rs.low_freq_factor = need("low_freq_factor").get<double>();
  rs.high_freq_factor = need("high_freq_factor").get<double>();
  const json& orig = need("original_max_position_embeddings");
  LATHE_CHECK(orig.is_number_integer()) << where << ": field \"" << field
                                        << ".original_max_position_embeddings\" must be an integer, got " << orig.dump();
  LATHE_CHECK(orig.is_number_unsigned() ? orig.get<uint64_t>() <= static_cast<uint64_t>(INT32_MAX)
                                        : orig.get<int64_t>() <= INT32_MAX)
      << where << ": field \"" << field << ".original_max_position_embeddings\" is " << orig.dump()
      << ", which does not fit lathe's 32-bit config field (at most 2147483647)";
  rs.original_max_position_embeddings = orig.get<int64_t>();
  LATHE_CHECK(rs.factor >= 1) << where << ": field \"" << field << ".factor\" is " << rs.factor << "; it must be >= 1";
  LATHE_CHECK(rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor)
      << where << ": fields \"" << field << ".low_freq_factor\" (" << rs.low_freq_factor << ") and \"" << field
      << ".high_freq_factor\" (" << rs.high_freq_factor << ") must satisfy 0 < low < high";
  LATHE_CHECK(rs.original_max_position_embeddings > 0)
      << where << ": field \"" << field << ".original_max_position_embeddings\" is "
      << rs.original_max_position_embeddings << "; it must be > 0";
  s.rope_scaling = rs;
}

// Sliding-window attention as transformers (5.x) configures it:
//   mistral: every layer, window = sliding_window (the class default 4096 when the field is
//            absent; null = none). layer_types is ignored by MistralConfig.
//   qwen2:   only with use_sliding_window (default false); window = sliding_window (default
//            4096), on the layers that layer_types marks "sliding_attention", or, without
//            layer_types, on layers i >= max_window_layers (default 28).
//   llama:   none.
// lathe represents a window on layers [full_attention_layers, n_layer); other layer_types
// patterns are an error naming the field.
void parse_sliding_window(const Fields& f, const std::string& type, const std::string& where, ModelSpec& s) {
  if (type != "mistral" && type != "qwen2") return;
  if (type == "qwen2" && !f.boolean("use_sliding_window", false)) return;
  // An absent field takes the class default; a null one means no window.
  const bool present = f.object().contains("sliding_window");
  if (present && !f.has("sliding_window")) return;
  const int64_t w = present ? f.integer("sliding_window") : 4096;
  LATHE_CHECK(w > 0) << where << ": field \"sliding_window\" is " << w << "; it must be > 0 (or null for none)";
  int64_t full = 0;
  if (type == "qwen2") {
    if (f.has("layer_types")) {
      const json& lt = f.raw("layer_types");
      LATHE_CHECK(lt.is_array() && static_cast<int64_t>(lt.size()) == s.n_layer)
          << where << ": field \"layer_types\" must be a list of num_hidden_layers = " << s.n_layer
          << " strings, got " << lt.dump();
      bool sliding_seen = false;
      full = s.n_layer;
      for (size_t i = 0; i < lt.size(); ++i) {
        const bool sl = lt[i] == "sliding_attention";
        LATHE_CHECK(sl || lt[i] == "full_attention")
            << where << ": field \"layer_types[" << i << "]\" is " << lt[i].dump()
            << "; expected \"full_attention\" or \"sliding_attention\"";
        LATHE_CHECK(sl || !sliding_seen)
            << where << ": field \"layer_types\" has full_attention at layer " << i
            << " after a sliding_attention layer; lathe applies the window to the layers from one index on only "
               "(model.full_attention_layers)";
        if (sl && !sliding_seen) full = static_cast<int64_t>(i);
        sliding_seen = sliding_seen || sl;
      }
    } else {
      full = std::min<int64_t>(std::max<int64_t>(f.integer("max_window_layers", 28), 0), s.n_layer);
    }
  }
  if (full >= s.n_layer) return;  // no layer uses the window
  s.sliding_window = w;
  s.full_attention_layers = full;
}

ModelSpec parse_llama_family(const Fields& f, const std::string& type, const std::string& where) {
  ModelSpec s;
  s.arch = Arch::llama;
  s.d_model = f.integer("hidden_size");
  s.d_ff = f.integer("intermediate_size");
  s.n_layer = f.integer("num_hidden_layers");
  s.n_head = f.integer("num_attention_heads");
  s.n_kv_head = f.integer("num_key_value_heads", s.n_head);
  s.vocab_size = f.integer("vocab_size");
  // transformers class defaults for fields a config may leave out.
  const int64_t default_max_pos = type == "llama" ? 2048 : type == "qwen2" ? 32768 : 4096 * 32;
  s.max_seq_len = f.integer("max_position_embeddings", default_max_pos);
  s.norm_eps = f.number("rms_norm_eps", 1e-6);
  s.rope_theta = f.number("rope_theta", 10000.0);
  s.tie_embeddings = f.boolean("tie_word_embeddings", false);

  const std::string act = f.string("hidden_act", "silu");
  LATHE_CHECK(act == "silu") << where << ": field \"hidden_act\" is \"" << act
                             << "\"; lathe's Llama MLP is SwiGLU (silu) only";
  if (f.has("rope_scaling")) parse_rope_scaling(f.raw("rope_scaling"), "rope_scaling", where, s);
  if (f.has("rope_parameters")) {  // newer transformers group the RoPE settings (and win)
    const json& rp = f.raw("rope_parameters");
    parse_rope_scaling(rp, "rope_parameters", where, s);
    s.rope_theta = Fields(rp, where).number("rope_theta", s.rope_theta);
  }
  if (f.has("head_dim")) {
    const int64_t hd = f.integer("head_dim");
    LATHE_CHECK(s.n_head > 0 && hd * s.n_head == s.d_model)
        << where << ": field \"head_dim\" is " << hd << " but hidden_size / num_attention_heads = " << s.d_model
        << " / " << s.n_head << "; lathe needs head_dim * heads == hidden_size";
  }
  if (type == "llama") {
    // LlamaAttention's attention_bias covers o_proj as well as q/k/v, so without mlp_bias it
    // is neither lathe's `bias` (every linear) nor `qkv_bias` (q/k/v only).
    const bool ab = f.boolean("attention_bias", false), mb = f.boolean("mlp_bias", false);
    LATHE_CHECK(ab == mb) << where << ": attention_bias=" << ab << " and mlp_bias=" << mb
                          << " differ; lathe has biases on every linear (bias) or on q/k/v only (qkv_bias, "
                             "Qwen2), but not on the attention projections including o_proj alone";
    s.bias = ab;
  } else if (type == "qwen2") {
    // Qwen2Attention always has q/k/v biases and an unbiased o_proj; the MLP has none.
    s.bias = false;
    s.qkv_bias = true;
  } else {
    s.bias = false;  // Mistral has no biases
  }
  parse_sliding_window(f, type, where, s);
  return s;
}

std::string read_text(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  LATHE_CHECK(in) << what << ": cannot open " << path << ": " << std::strerror(errno);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

HfConfig parse_hf_config(const json& j, const std::string& where) {
  LATHE_CHECK(j.is_object()) << where << ": a transformers config must be a JSON object";
  Fields f(j, where);
  HfConfig c;
  LATHE_CHECK(f.has("model_type")) << where << ": missing field \"model_type\"";
  c.model_type = f.string("model_type", "");
  c.torch_dtype = f.string("torch_dtype", f.string("dtype", ""));
  if (c.model_type == "gpt2") {
    c.spec = parse_gpt2(f, where);
  } else if (c.model_type == "llama" || c.model_type == "qwen2" || c.model_type == "mistral") {
    c.spec = parse_llama_family(f, c.model_type, where);
  } else {
    LATHE_FAIL() << where << ": unsupported model_type \"" << c.model_type
                 << "\" (lathe imports gpt2, llama, qwen2 and mistral)";
  }
  try {
    c.spec.validate();
  } catch (const Error& e) {
    LATHE_FAIL() << where << ": " << e.message();
  }
  return c;
}

namespace {

uint64_t machine_memory() { return lathe::machine_memory_bytes(); }

// Parameters of `s`, in floating point so that absurd sizes cannot overflow (an estimate
// within norms and biases of count_parameters, which is exact but int64).
long double approx_parameters(const ModelSpec& s) {
  const long double d = s.d_model, v = s.vocab_size, ff = s.ff_dim(), hd = s.n_head > 0 ? d / s.n_head : d;
  const long double attn = d * d * 2 + d * (2 * s.kv_heads() * hd);
  const long double mlp = (s.arch == Arch::gpt2 ? 2 : 3) * d * ff;
  long double n = v * d + static_cast<long double>(s.n_layer) * (attn + mlp);
  if (s.arch == Arch::gpt2) n += static_cast<long double>(s.max_seq_len) * d;
  if (!s.tie_embeddings) n += v * d;
  return n;
}

const char* layers_field(const HfConfig& c) { return c.spec.arch == Arch::gpt2 ? "n_layer" : "num_hidden_layers"; }
const char* width_field(const HfConfig& c) { return c.spec.arch == Arch::gpt2 ? "n_embd" : "hidden_size"; }

}  // namespace

void check_hf_sizes(const HfConfig& c, const std::string& config_file, const std::string& weights) {
  const ModelSpec& s = c.spec;
  if (!weights.empty()) {
    SafetensorsLoader st(weights);
    const std::string files = st.files().size() == 1 ? st.files()[0] : weights;
    // Layers: the highest layer index any tensor carries (with or without the prefix).
    const std::vector<std::string> heads = s.arch == Arch::gpt2 ? std::vector<std::string>{"transformer.h.", "h."}
                                                                 : std::vector<std::string>{"model.layers.", "layers."};
    int64_t layers = 0;
    for (const std::string& name : st.names()) {
      for (const std::string& h : heads) {
        if (name.compare(0, h.size(), h) != 0) continue;
        size_t i = h.size(), j = i;
        while (j < name.size() && j - i < 10 && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
        if (j > i && j < name.size() && name[j] == '.') layers = std::max<int64_t>(layers, std::stoll(name.substr(i, j - i)) + 1);
      }
    }
    LATHE_CHECK(s.n_layer <= layers) << config_file << ": field \"" << layers_field(c) << "\" is " << s.n_layer
                                     << ", but the weights in " << files << " hold " << layers
                                     << " layers; config.json and the weights do not belong together";
    // Vocabulary and width: the embedding matrix is [vocab_size, width].
    const std::string tail = s.arch == Arch::gpt2 ? "wte.weight" : "embed_tokens.weight";
    for (const std::string& name : {hf_default_prefix(s.arch) + tail, tail}) {
      if (!st.contains(name)) continue;
      const Shape& sh = st.entry(name).shape;
      if (sh.size() != 2) break;  // load_hf_weights reports the shape
      LATHE_CHECK(sh[0] == s.vocab_size) << config_file << ": field \"vocab_size\" is " << s.vocab_size
                                         << ", but the embedding " << name << " in " << st.file_of(name) << " has "
                                         << sh[0] << " rows (shape " << shape_str(sh) << ")";
      LATHE_CHECK(sh[1] == s.d_model) << config_file << ": field \"" << width_field(c) << "\" is " << s.d_model
                                      << ", but the embedding " << name << " in " << st.file_of(name)
                                      << " has width " << sh[1] << " (shape " << shape_str(sh) << ")";
      break;
    }
  }
  // The parameters alone (f32, as build_model makes them) must fit in memory.
  const uint64_t avail = machine_memory();
  const long double bytes = approx_parameters(s) * 4;
  if (avail > 0 && bytes > static_cast<long double>(avail)) {
    std::ostringstream msg;
    msg << config_file << ": the model it describes needs about " << static_cast<double>(bytes / (1ull << 30))
        << " GiB for its f32 parameters alone, more than the " << static_cast<double>(avail) / (1ull << 30)
        << " GiB of memory on this machine (fields " << layers_field(c) << "=" << s.n_layer << ", " << width_field(c)
        << "=" << s.d_model << ", vocab_size=" << s.vocab_size << ")";
    LATHE_FAIL() << msg.str();
  }
}

HfConfig read_hf_config(const std::string& path) {
  std::error_code ec;
  std::string file = fs::is_directory(path, ec) ? (fs::path(path) / "config.json").string() : path;
  LATHE_CHECK(fs::exists(file, ec)) << "read_hf_config: " << file << " does not exist";
  std::string text = read_text(file, "read_hf_config");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    LATHE_FAIL() << file << ": invalid JSON at byte " << e.byte << ": " << e.what();
  }
  HfConfig c = parse_hf_config(j, file);
  // A model directory: check the sizes against its weights and memory now, before anyone
  // allocates the model (a corrupt n_layer would otherwise allocate for minutes).
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    std::string weights;
    if (fs::exists(dir / "model.safetensors.index.json", ec) || fs::exists(dir / "model.safetensors", ec)) weights = path;
    check_hf_sizes(c, file, weights);
  }
  return c;
}

const char* hf_torch_dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::f64: return "float64";
    default: LATHE_FAIL() << "hf_torch_dtype_name: " << dtype_name(dt) << " is not a floating dtype";
  }
  return "";
}

nlohmann::ordered_json hf_config_json(const ModelSpec& s, DType dtype) {
  s.validate();
  nlohmann::ordered_json j;
  if (s.arch == Arch::gpt2) {
    LATHE_CHECK(s.bias) << "hf_config_json: a GPT-2 spec with bias=false has no Hugging Face GPT-2 form";
    LATHE_CHECK(s.kv_heads() == s.n_head)
        << "hf_config_json: a GPT-2 spec with n_kv_head=" << s.n_kv_head << " (grouped-query attention) has no "
        << "Hugging Face GPT-2 form";
    LATHE_CHECK(s.sliding_window == 0) << "hf_config_json: a GPT-2 spec with a sliding window (model.sliding_window "
                                       << s.sliding_window << ") has no Hugging Face GPT-2 form";
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["vocab_size"] = s.vocab_size;
    j["n_positions"] = s.max_seq_len;
    j["n_ctx"] = s.max_seq_len;
    j["n_embd"] = s.d_model;
    j["n_layer"] = s.n_layer;
    j["n_head"] = s.n_head;
    j["n_inner"] = s.ff_dim();
    j["activation_function"] = "gelu_new";
    j["layer_norm_epsilon"] = s.norm_eps;
    j["resid_pdrop"] = s.dropout;
    j["embd_pdrop"] = s.dropout;
    j["attn_pdrop"] = 0.0;  // lathe has no attention-probability dropout
    j["initializer_range"] = s.init_std;
    j["scale_attn_weights"] = true;
  } else {
    // q/k/v-only biases are Qwen2's layout; a sliding window on every layer without biases
    // is Mistral's; every other Llama-family spec is a Llama.
    const bool qwen2 = s.qkv_bias && !s.bias;
    const bool mistral = !qwen2 && s.sliding_window > 0;
    if (mistral) {
      LATHE_CHECK(!s.bias && !s.qkv_bias && s.full_attention_layers == 0)
          << "hf_config_json: a sliding window (model.sliding_window " << s.sliding_window
          << ") has a Hugging Face form as Mistral (every layer, no biases) or Qwen2 (qkv_bias only, any "
             "full_attention_layers); this spec has bias="
          << s.bias << ", qkv_bias=" << s.qkv_bias << ", full_attention_layers=" << s.full_attention_layers;
    }
    j["architectures"] = {qwen2 ? "Qwen2ForCausalLM" : mistral ? "MistralForCausalLM" : "LlamaForCausalLM"};
    j["model_type"] = qwen2 ? "qwen2" : mistral ? "mistral" : "llama";
    j["vocab_size"] = s.vocab_size;
    j["hidden_size"] = s.d_model;
    j["intermediate_size"] = s.ff_dim();
    j["num_hidden_layers"] = s.n_layer;
    j["num_attention_heads"] = s.n_head;
    j["num_key_value_heads"] = s.kv_heads();
    j["head_dim"] = s.head_dim();
    j["max_position_embeddings"] = s.max_seq_len;
    j["rms_norm_eps"] = s.norm_eps;
    j["rope_theta"] = s.rope_theta;
    if (s.rope_scaling.type == RopeScaling::Type::llama3) {
      const RopeScaling& r = s.rope_scaling;
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", r.factor},
                           {"low_freq_factor", r.low_freq_factor},
                           {"high_freq_factor", r.high_freq_factor},
                           {"original_max_position_embeddings", r.original_max_position_embeddings}};
    } else {
      j["rope_scaling"] = nullptr;
    }
    j["hidden_act"] = "silu";
    if (qwen2) {
      const bool window = s.sliding_window > 0;
      j["use_sliding_window"] = window;
      j["sliding_window"] = window ? nlohmann::ordered_json(s.sliding_window) : nlohmann::ordered_json(nullptr);
      j["max_window_layers"] = window ? s.full_attention_layers : s.n_layer;
      nlohmann::ordered_json types = nlohmann::ordered_json::array();
      for (int64_t l = 0; l < s.n_layer; ++l) types.push_back(s.window_of(l) > 0 ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    } else if (mistral) {
      j["sliding_window"] = s.sliding_window;
    } else {
      j["attention_bias"] = s.bias;
      j["mlp_bias"] = s.bias;
      j["pretraining_tp"] = 1;
    }
    j["attention_dropout"] = 0.0;
    j["initializer_range"] = s.init_std;
  }
  j["tie_word_embeddings"] = s.tie_embeddings;
  j["torch_dtype"] = hf_torch_dtype_name(dtype);
  j["use_cache"] = true;
  return j;
}

void write_hf_config(const ModelSpec& spec, const std::string& path, DType dtype) {
  write_file_atomic(path, hf_config_json(spec, dtype).dump(2) + "\n");
}

// ---- tensor layout ------------------------------------------------------------------------

std::string hf_default_prefix(Arch arch) { return arch == Arch::gpt2 ? "transformer." : "model."; }

std::vector<HfTensorRule> hf_tensor_layout(const ModelSpec& s, const std::string& prefix) {
  using K = HfTensorRule::Kind;
  std::vector<HfTensorRule> r;
  auto add = [&](std::string hf, K kind, std::vector<std::string> params) {
    r.push_back(HfTensorRule{std::move(hf), kind, std::move(params)});
  };
  if (s.arch == Arch::gpt2) {
    LATHE_CHECK(s.bias) << "hf_tensor_layout: Hugging Face GPT-2 has biases on every layer; a spec with "
                           "bias=false has no GPT-2 layout";
    LATHE_CHECK(s.kv_heads() == s.n_head) << "hf_tensor_layout: Hugging Face GPT-2 has no grouped-query "
                                             "attention (n_kv_head=" << s.n_kv_head << ")";
    add(prefix + "wte.weight", K::same, {"embed.weight"});
    add(prefix + "wpe.weight", K::same, {"pos_embed.weight"});
    for (int64_t l = 0; l < s.n_layer; ++l) {
      const std::string h = prefix + "h." + std::to_string(l) + ".", L = "layers." + std::to_string(l) + ".";
      add(h + "ln_1.weight", K::same, {L + "attn_norm.weight"});
      add(h + "ln_1.bias", K::same, {L + "attn_norm.bias"});
      for (const char* wb : {"weight", "bias"}) {
        const std::string w = wb;
        add(h + "attn.c_attn." + w, K::conv1d,
            {L + "attn.q_proj." + w, L + "attn.k_proj." + w, L + "attn.v_proj." + w});
        add(h + "attn.c_proj." + w, K::conv1d, {L + "attn.o_proj." + w});
      }
      add(h + "ln_2.weight", K::same, {L + "mlp_norm.weight"});
      add(h + "ln_2.bias", K::same, {L + "mlp_norm.bias"});
      for (const char* wb : {"weight", "bias"}) {
        const std::string w = wb;
        add(h + "mlp.c_fc." + w, K::conv1d, {L + "mlp.fc." + w});
        add(h + "mlp.c_proj." + w, K::conv1d, {L + "mlp.proj." + w});
      }
    }
    add(prefix + "ln_f.weight", K::same, {"final_norm.weight"});
    add(prefix + "ln_f.bias", K::same, {"final_norm.bias"});
  } else {
    add(prefix + "embed_tokens.weight", K::same, {"embed.weight"});
    std::vector<std::string> kinds = {"weight"}, qkv_kinds = {"weight"};
    if (s.bias) kinds.push_back("bias");
    if (s.has_qkv_bias()) qkv_kinds.push_back("bias");
    for (int64_t l = 0; l < s.n_layer; ++l) {
      const std::string h = prefix + "layers." + std::to_string(l) + ".", L = "layers." + std::to_string(l) + ".";
      add(h + "input_layernorm.weight", K::same, {L + "attn_norm.weight"});
      for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
        for (const auto& w : std::string(p) == "o_proj" ? kinds : qkv_kinds)
          add(h + "self_attn." + p + "." + w, K::same, {L + "attn." + p + "." + w});
      add(h + "post_attention_layernorm.weight", K::same, {L + "mlp_norm.weight"});
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        for (const auto& w : kinds) add(h + "mlp." + p + "." + w, K::same, {L + "mlp." + p + "." + w});
    }
    add(prefix + "norm.weight", K::same, {"final_norm.weight"});
  }
  if (!s.tie_embeddings) add("lm_head.weight", K::same, {"lm_head.weight"});
  return r;
}

Shape hf_tensor_shape(const HfTensorRule& rule, const std::vector<Shape>& shapes) {
  LATHE_CHECK(!shapes.empty() && shapes.size() == rule.params.size())
      << "hf_tensor_shape(" << rule.hf_name << "): " << shapes.size() << " shapes for " << rule.params.size()
      << " parameters";
  if (rule.kind == HfTensorRule::Kind::same) {
    LATHE_CHECK(shapes.size() == 1) << "hf_tensor_shape(" << rule.hf_name << "): a plain tensor maps to one parameter";
    return shapes[0];
  }
  // Conv1D: [in, sum of outs] for weights, [sum of outs] for biases.
  const Shape& first = shapes[0];
  LATHE_CHECK(first.size() == 1 || first.size() == 2)
      << "hf_tensor_shape(" << rule.hf_name << "): Conv1D parameters are 1-D or 2-D, got " << shape_str(first);
  int64_t total = 0;
  for (const Shape& sh : shapes) {
    LATHE_CHECK(sh.size() == first.size() && (sh.size() == 1 || sh[1] == first[1]))
        << "hf_tensor_shape(" << rule.hf_name << "): fused parameters " << shape_str(first) << " and "
        << shape_str(sh) << " do not concatenate";
    total += sh[0];
  }
  return first.size() == 2 ? Shape{first[1], total} : Shape{total};
}

}  // namespace lathe::models
