#include "peft/inject.h"

#include <cstdio>
#include <map>
#include <set>

#include "core/error.h"
#include "peft/methods.h"

namespace lathe::peft {

namespace {

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return v < 0 ? "-" + out : out;
}

bool matches_either(const NamePattern& p, const std::string& name, const std::string& hf, const std::string& field) {
  return p.matches(name, field) || (!hf.empty() && p.matches(hf, field));
}

bool in_list(const std::vector<std::string>& list, const std::string& name, const std::string& hf) {
  NamePattern p;
  p.names = list;
  return matches_either(p, name, hf, "peft.modules_to_save");
}

// The first pattern key matching the HF name, else the lathe name.
template <typename V>
const V* find_pattern(const std::vector<std::pair<std::string, V>>& pat, const std::string& name,
                      const std::string& hf, const std::string& field) {
  std::vector<std::string> keys;
  for (const auto& kv : pat) keys.push_back(kv.first);
  std::optional<std::string> k;
  if (!hf.empty()) k = pattern_key(keys, hf, field);
  if (!k) k = pattern_key(keys, name, field);
  if (!k) return nullptr;
  for (const auto& kv : pat)
    if (kv.first == *k) return &kv.second;
  return nullptr;
}

}  // namespace

const char* bias_mode_name(BiasMode b) {
  switch (b) {
    case BiasMode::none: return "none";
    case BiasMode::all: return "all";
    case BiasMode::lora_only: return "lora_only";
  }
  return "?";
}

std::vector<PlannedAdapter> plan_lora(const std::vector<LinearInfo>& layers, const PeftOptions& o, models::Arch arch) {
  NamePattern target = o.target;
  if (target.empty()) {
    // peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the two families.
    target.names = arch == models::Arch::gpt2 ? std::vector<std::string>{"c_attn"}
                                              : std::vector<std::string>{"q_proj", "v_proj"};
  }
  LATHE_REQUIRE(target.regex.empty() || target.names.empty())
      << "peft: give target_modules or target_regex, not both";
  LATHE_REQUIRE(o.lora.r > 0) << "peft.r: the rank must be > 0 (got " << o.lora.r << ")";
  std::vector<PlannedAdapter> out;
  for (const LinearInfo& li : layers) {
    if (target.all_linear()) {
      if (li.output_head) continue;
    } else if (!matches_either(target, li.name, li.hf_name, "peft.target_regex")) {
      continue;
    }
    if (matches_either(o.exclude, li.name, li.hf_name, "peft.exclude_modules")) continue;
    if (in_list(o.modules_to_save, li.name, li.hf_name)) continue;
    PlannedAdapter a{li.name, li.hf_name, li.in, li.out, o.lora.r, o.lora.alpha};
    if (const int64_t* r = find_pattern(o.rank_pattern, li.name, li.hf_name, "peft.rank_pattern")) a.r = *r;
    if (const double* al = find_pattern(o.alpha_pattern, li.name, li.hf_name, "peft.alpha_pattern")) a.alpha = *al;
    LATHE_REQUIRE(a.r > 0) << "peft.rank_pattern: rank " << a.r << " for " << li.name << " must be > 0";
    out.push_back(a);
  }
  if (out.empty()) {
    std::string some;
    for (size_t i = 0; i < layers.size() && i < 4; ++i)
      some += (i ? ", " : "") + layers[i].name + (layers[i].hf_name.empty() ? "" : " (" + layers[i].hf_name + ")");
    LATHE_FAIL() << "peft.target_modules: the targets match no linear layer of the model (its linear layers are "
                    "named like "
                 << some << ")";
  }
  return out;
}

int64_t lora_parameter_count(const models::ModelSpec& spec, const PeftOptions& opts) {
  int64_t n = 0;
  for (const auto& a : plan_lora(linear_layers(spec), opts, spec.arch)) n += adapter_parameter_count(opts, a);
  return n;
}

InjectResult inject_lora(models::CausalLM& model, const PeftOptions& o) {
  const auto hf = hf_module_names(model.spec());
  // The model's own linear layers (not the factors inside an adapter).
  std::vector<LinearInfo> layers;
  for (auto& [name, m] : model.named_modules()) {
    if (name.empty()) continue;
    if (dynamic_cast<LoraLinear*>(m) != nullptr)
      LATHE_FAIL() << "peft: " << name << " already carries a LoRA adapter (unload it before injecting again)";
    auto* lin = dynamic_cast<models::LinearLayer*>(m);
    if (!lin) continue;
    const size_t dot = name.rfind('.');
    const std::string last = dot == std::string::npos ? name : name.substr(dot + 1);
    if (last.rfind("lora_", 0) == 0) continue;
    auto it = hf.find(name);
    layers.push_back({name, it == hf.end() ? "" : it->second, lin->in_features(), lin->out_features(),
                      lin->base_bias().defined(), name == "lm_head"});
  }
  InjectResult res;
  res.adapters = plan_lora(layers, o, model.spec().arch);

  model.freeze();
  Generator gen(o.seed);
  for (const auto& a : res.adapters) {
    auto base = std::dynamic_pointer_cast<models::LinearLayer>(model.module(a.name));
    LoraOptions lo = o.lora;
    lo.r = a.r;
    lo.alpha = a.alpha;
    model.replace_module(a.name, make_adapter(base, a.name, lo, o, gen, &model.dropout_generator()));
  }

  // modules_to_save: every module whose name (or HF name) matches, trained in full.
  std::set<std::string> matched_entries;
  if (!o.modules_to_save.empty()) {
    const auto hf_all = hf_all_module_names(model.spec());  // norms and embeddings too
    for (auto& [name, m] : model.named_modules()) {
      if (name.empty()) continue;
      auto it = hf_all.find(name);
      const std::string h = it == hf_all.end() ? "" : it->second;
      bool hit = false;
      for (const auto& e : o.modules_to_save) {
        NamePattern p;
        p.names = {e};
        if (matches_either(p, name, h, "peft.modules_to_save")) {
          hit = true;
          matched_entries.insert(e);
        }
      }
      if (!hit) continue;
      m->unfreeze();
      res.modules_to_save.push_back(name);
    }
    for (const auto& e : o.modules_to_save)
      LATHE_REQUIRE(matched_entries.count(e)) << "peft.modules_to_save: '" << e << "' matches no module of the model";
  }

  auto is_bias = [](const std::string& n) { return n.size() >= 5 && n.compare(n.size() - 5, 5, ".bias") == 0; };
  if (o.bias == BiasMode::all) {
    for (auto& [n, p] : model.named_parameters())
      if (is_bias(n) || n == "bias") p.set_requires_grad(true);
  } else if (o.bias == BiasMode::lora_only) {
    for (const auto& a : res.adapters) {
      Tensor b = std::dynamic_pointer_cast<LoraLinear>(model.module(a.name))->base_bias();
      if (b.defined()) b.set_requires_grad(true);
    }
  }
  return res;
}

std::vector<std::pair<std::string, LoraLinear*>> lora_layers(autograd::Module& root) {
  std::vector<std::pair<std::string, LoraLinear*>> out;
  for (auto& [name, m] : root.named_modules())
    if (auto* l = dynamic_cast<LoraLinear*>(m)) out.emplace_back(name, l);
  return out;
}

void merge_adapters(autograd::Module& root) {
  for (auto& [n, l] : lora_layers(root))
    if (!l->merged()) l->merge();
}

void unmerge_adapters(autograd::Module& root) {
  for (auto& [n, l] : lora_layers(root))
    if (l->merged()) l->unmerge();
}

int64_t unload_adapters(autograd::Module& root, bool merge) {
  auto layers = lora_layers(root);
  for (auto& [name, l] : layers) {
    if (merge && !l->merged()) l->merge();
    if (!merge && l->merged()) l->unmerge();
    root.replace_module(name, l->base());
  }
  return static_cast<int64_t>(layers.size());
}

std::string ParameterReport::str() const {
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.4f", percent());
  return "trainable params: " + with_commas(trainable) + " || all params: " + with_commas(total) +
         " || trainable%: " + pct;
}

ParameterReport parameter_report(const autograd::Module& root) {
  ParameterReport r;
  r.total = root.num_parameters(false);
  r.trainable = root.num_parameters(true);
  return r;
}

}  // namespace lathe::peft
