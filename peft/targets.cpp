#include "peft/targets.h"

#include <regex>
#include <set>

#include "core/error.h"
#include "models/hf_config.h"

namespace lathe::peft {

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::regex compile(const std::string& re, const std::string& field) {
  try {
    return std::regex(re, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    LATHE_FAIL() << field << ": '" << re << "' is not a valid regular expression (" << e.what() << ")";
  }
  return std::regex();
}

std::string strip_weight(const std::string& n) { return n.substr(0, n.size() - std::string(".weight").size()); }

}  // namespace

bool NamePattern::matches(const std::string& name, const std::string& field) const {
  if (!regex.empty()) return std::regex_match(name, compile(regex, field));
  for (const auto& e : names)
    if (name == e || ends_with(name, "." + e)) return true;
  return false;
}

std::optional<std::string> pattern_key(const std::vector<std::string>& keys, const std::string& name,
                                       const std::string& field) {
  for (const auto& k : keys)
    if (std::regex_match(name, compile("(.*\\.)?(" + k + ")", field + " key '" + k + "'"))) return k;
  return std::nullopt;
}

std::vector<LinearInfo> linear_layers(const models::ModelSpec& s) {
  const int64_t C = s.d_model, D = s.head_dim(), F = s.ff_dim(), q = s.n_head * D, kv = s.kv_heads() * D;
  const bool qb = s.has_qkv_bias(), b = s.bias;
  std::vector<LinearInfo> out;
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    out.push_back({L + "attn.q_proj", "", C, q, qb, false});
    out.push_back({L + "attn.k_proj", "", C, kv, qb, false});
    out.push_back({L + "attn.v_proj", "", C, kv, qb, false});
    out.push_back({L + "attn.o_proj", "", q, C, b, false});
    if (s.arch == models::Arch::gpt2) {
      out.push_back({L + "mlp.fc", "", C, F, b, false});
      out.push_back({L + "mlp.proj", "", F, C, b, false});
    } else {
      out.push_back({L + "mlp.gate_proj", "", C, F, b, false});
      out.push_back({L + "mlp.up_proj", "", C, F, b, false});
      out.push_back({L + "mlp.down_proj", "", F, C, b, false});
    }
  }
  if (!s.tie_embeddings) out.push_back({"lm_head", "", C, s.vocab_size, false, true});
  const auto hf = hf_module_names(s);
  for (auto& li : out) {
    auto it = hf.find(li.name);
    if (it != hf.end()) li.hf_name = it->second;
  }
  return out;
}

std::vector<HfLinearModule> hf_linear_modules(const models::ModelSpec& spec) {
  std::vector<models::HfTensorRule> rules;
  try {
    rules = models::hf_tensor_layout(spec, models::hf_default_prefix(spec.arch));
  } catch (const lathe::Error&) {
    return {};  // no Hugging Face form (e.g. a GPT-2 without biases)
  }
  std::set<std::string> linear;
  {
    // The linear module names, without hf names (avoids recursion through linear_layers).
    models::ModelSpec s = spec;
    const int64_t n = s.n_layer;
    for (int64_t l = 0; l < n; ++l) {
      const std::string L = "layers." + std::to_string(l) + ".";
      for (const char* m : {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc", "mlp.proj",
                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
        linear.insert(L + m);
    }
    linear.insert("lm_head");
  }
  std::vector<HfLinearModule> out;
  for (const auto& r : rules) {
    if (!ends_with(r.hf_name, ".weight")) continue;
    HfLinearModule m{strip_weight(r.hf_name), {}, r.kind == models::HfTensorRule::Kind::conv1d};
    bool ok = true;
    for (const auto& p : r.params) {
      ok = ok && ends_with(p, ".weight") && linear.count(strip_weight(p));
      if (ok) m.lathe_names.push_back(strip_weight(p));
    }
    if (ok && !m.lathe_names.empty()) out.push_back(std::move(m));
  }
  return out;
}

std::map<std::string, std::string> hf_all_module_names(const models::ModelSpec& spec) {
  std::map<std::string, std::string> out;
  std::vector<models::HfTensorRule> rules;
  try {
    rules = models::hf_tensor_layout(spec, models::hf_default_prefix(spec.arch));
  } catch (const lathe::Error&) {
    return out;
  }
  auto module_of = [](const std::string& n) { return n.substr(0, n.rfind('.')); };
  for (const auto& r : rules)
    for (const auto& p : r.params) out[module_of(p)] = module_of(r.hf_name);
  return out;
}

std::map<std::string, std::string> hf_module_names(const models::ModelSpec& spec) {
  std::map<std::string, std::string> out;
  for (const auto& m : hf_linear_modules(spec))
    for (const auto& n : m.lathe_names) out[n] = m.hf_name;
  return out;
}

}  // namespace lathe::peft
