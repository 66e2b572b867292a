#include "models/hf_import.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <set>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/memory.h"
#include "models/hf_config.h"
#include "models/safetensors.h"

namespace lathe::models {

namespace {

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::string files_of(const SafetensorsLoader& st) {
  std::vector<std::string> f = st.files();
  return f.size() == 1 ? f[0] : "[" + join(f) + "]";
}

// `name` == prefix + head + "<layer>" + tail for a layer < n_layer and one of the tails.
bool is_layer_tensor(const std::string& name, const std::string& head, const std::vector<std::string>& tails,
                     int64_t n_layer) {
  if (name.compare(0, head.size(), head) != 0) return false;
  size_t i = head.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j - i > 9) return false;
  const int64_t layer = std::stoll(name.substr(i, j - i));
  if (layer >= n_layer) return false;
  const std::string rest = name.substr(j);
  for (const auto& t : tails)
    if (rest == t) return true;
  return false;
}

// Bytes of both tensors as f32 compare equal (tied lm_head check).
bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  Tensor x = a.to(DType::f32).contiguous(), y = b.to(DType::f32).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// A source tensor cut into the parts each lathe parameter receives.
struct Planned {
  const HfTensorRule* rule;
  std::vector<Tensor> params;
};

}  // namespace

void load_hf_weights(CausalLM& model, const std::string& path) {
  const std::string where = "load_hf_weights(" + path + ")";
  SafetensorsLoader st(path);
  const ModelSpec& s = model.spec();
  const std::string arch = arch_name(s.arch);

  // Prefix variants: the *ForCausalLM files ("transformer." / "model.") or base-model files.
  std::string prefix = hf_default_prefix(s.arch);
  const std::string embed_tail = s.arch == Arch::gpt2 ? "wte.weight" : "embed_tokens.weight";
  if (!st.contains(prefix + embed_tail) && st.contains(embed_tail)) prefix = "";
  const std::vector<HfTensorRule> rules = hf_tensor_layout(s, prefix);

  // ---- validate everything before writing a single parameter ----
  std::vector<Planned> plan;
  std::set<std::string> used, filled;
  for (const HfTensorRule& r : rules) {
    Planned p{&r, {}};
    std::vector<Shape> shapes;
    for (const auto& name : r.params) {
      LATHE_CHECK(model.has_parameter(name))
          << where << ": the " << arch << " model has no parameter " << name << " (needed for " << r.hf_name
          << "); the model does not match its spec (adapters must be merged before import)";
      p.params.push_back(model.parameter(name));
      shapes.push_back(p.params.back().shape());
    }
    LATHE_CHECK(st.contains(r.hf_name)) << where << ": missing tensor " << r.hf_name << " (for lathe parameter"
                                        << (r.params.size() > 1 ? "s " : " ") << join(r.params) << ") in "
                                        << files_of(st);
    const SafetensorsEntry& e = st.entry(r.hf_name);
    LATHE_CHECK(is_floating(e.dtype)) << where << ": tensor " << r.hf_name << " in " << st.file_of(r.hf_name)
                                      << " has dtype " << e.dtype_name << "; weights must be F32, BF16 or F16";
    const Shape want = hf_tensor_shape(r, shapes);
    LATHE_CHECK(e.shape == want) << where << ": tensor " << r.hf_name << " in " << st.file_of(r.hf_name)
                                 << " has shape " << shape_str(e.shape) << ", expected " << shape_str(want)
                                 << " (lathe " << join(r.params) << ")";
    // A NaN or infinity in a weight (a corrupt file, a diverged run) would only show up as a
    // NaN loss later; refuse it here, where the tensor can be named.
    const int64_t bad = st.first_non_finite(r.hf_name);
    LATHE_CHECK(bad < 0) << where << ": tensor " << r.hf_name << " in " << st.file_of(r.hf_name)
                         << " holds a non-finite value (NaN or infinity) at element " << bad
                         << "; the file is corrupt or the weights diverged";
    used.insert(r.hf_name);
    filled.insert(r.params.begin(), r.params.end());
    plan.push_back(std::move(p));
  }

  for (const std::string& name : st.names()) {
    if (used.count(name)) continue;
    const std::string file = st.file_of(name);
    // Causal-mask buffers of old GPT-2 files: constants, not parameters.
    if (s.arch == Arch::gpt2 && is_layer_tensor(name, prefix + "h.", {".attn.bias", ".attn.masked_bias"}, s.n_layer))
      continue;
    if (s.arch == Arch::llama &&
        is_layer_tensor(name, prefix + "layers.", {".self_attn.rotary_emb.inv_freq"}, s.n_layer)) {
      // RoPE inverse frequencies (theta^(-2i/D), rescaled by rope_scaling): a mismatch means
      // config.json describes a different RoPE than the one the weights were trained with.
      const int64_t D = s.head_dim();
      Tensor f = st.get(name);
      LATHE_CHECK(f.shape() == Shape{D / 2}) << where << ": tensor " << name << " in " << file << " has shape "
                                              << f.shape_str() << ", expected [" << D / 2 << "]";
      std::vector<double> v = f.to_vector<double>();
      const std::vector<double> want = rope_inv_freq(s);
      for (int64_t i = 0; i < D / 2; ++i) {
        LATHE_CHECK(std::abs(v[i] - want[i]) <= 1e-3 * want[i])
            << where << ": tensor " << name << " in " << file << " holds RoPE frequency " << v[i] << " at " << i
            << ", but rope_theta " << s.rope_theta << " with rope_scaling " << rope_scaling_name(s.rope_scaling.type)
            << " gives " << want[i];
      }
      continue;
    }
    if (name == "lm_head.weight" && s.tie_embeddings) {
      const std::string embed = prefix + embed_tail;
      LATHE_CHECK(same_values(st.get(name), st.get(embed)))
          << where << ": tensor lm_head.weight in " << file << " differs from " << embed
          << " but the embeddings are tied (tie_word_embeddings=true); set tie_word_embeddings=false to use it";
      continue;
    }
    std::string hint;
    if (name.size() > 10 && name.compare(name.size() - 10, 10, "_proj.bias") == 0 && !s.bias)
      hint = s.has_qkv_bias() ? " (the spec has biases on q/k/v only, as Qwen2 does; this one has no place)"
                              : " (the checkpoint has projection biases that config.json does not declare: "
                                "attention_bias/mlp_bias for llama, or model_type qwen2 for q/k/v-only biases)";
    LATHE_FAIL() << where << ": tensor " << name << " in " << file << " has no place in the lathe " << arch
                 << " model" << hint;
  }

  for (const auto& [name, t] : model.named_parameters()) {
    (void)t;
    LATHE_CHECK(filled.count(name)) << where << ": lathe parameter " << name << " has no tensor in the Hugging Face "
                                    << arch << " layout (adapters must be merged before import)";
  }

  // ---- copy ----
  autograd::NoGradGuard no_grad;
  for (const Planned& p : plan) {
    copy_hf_tensor(*p.rule, st.get(p.rule->hf_name), p.params);
  }
}

void copy_hf_tensor(const HfTensorRule& rule, const Tensor& src, const std::vector<Tensor>& params) {
  autograd::NoGradGuard no_grad;
  if (rule.kind == HfTensorRule::Kind::same) {
    params[0].copy_(src);
    return;
  }
  // Conv1D: the HF tensor concatenates the transposed parameters along its last dim.
  int64_t off = 0;
  for (const Tensor& param : params) {
    const int64_t n = param.size(0);
    Tensor part = src.narrow(src.dim() - 1, off, n);
    param.copy_(param.dim() == 2 ? part.transpose(0, 1) : part);
    off += n;
  }
}

std::unique_ptr<CausalLM> load_hf_model(const std::string& dir, DType param_dtype) {
  LATHE_CHECK(is_floating(param_dtype)) << "load_hf_model(" << dir << "): parameter dtype "
                                        << dtype_name(param_dtype) << " is not a floating dtype";
  HfConfig cfg = read_hf_config(dir);
  std::unique_ptr<CausalLM> model = build_model(cfg.spec, 0);
  if (param_dtype != DType::f32) {
    // Re-point each parameter at storage of the requested dtype before loading, so the
    // checkpoint is converted once (no f32 detour) and the f32 init is freed as we go.
    MemCategoryGuard guard(MemCategory::parameters);
    for (auto& [name, p] : model->named_parameters()) {
      (void)name;
      p.set_data(Tensor::empty(p.shape(), param_dtype, p.device()));
    }
  }
  load_hf_weights(*model, dir);
  return model;
}

}  // namespace lathe::models
