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
  if (target.empty() && o.method == Method::spiel) {
    target.names = {"all-linear"};  // SpIEL's default: every linear inside the transformer
  } else if (target.empty()) {
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

void plan_spiel_budgets(std::vector<PlannedAdapter>& adapters, const PeftOptions& o, int64_t model_params) {
  const bool by_count = o.spiel.budget > 0;
  const int64_t total =
      by_count ? o.spiel.budget
               : static_cast<int64_t>(o.spiel.density * static_cast<double>(model_params));  // SpIEL: int(N * density)
  std::vector<int64_t> numels;
  for (const auto& a : adapters) numels.push_back(a.in * a.out);
  const std::vector<int64_t> k = spiel_budget(numels, total);
  for (size_t i = 0; i < adapters.size(); ++i) {
    LATHE_REQUIRE(k[i] > 0) << (by_count ? "peft.spiel_budget" : "peft.spiel_density") << ": the budget of " << total
                            << " entries gives " << adapters[i].name << " (" << numels[i]
                            << " weights) no entry; raise it or target fewer modules";
    adapters[i].k = k[i];
  }
}

int64_t lora_parameter_count(const models::ModelSpec& spec, const PeftOptions& opts) {
  auto plan = plan_lora(linear_layers(spec), opts, spec.arch);
  if (opts.method == Method::spiel) plan_spiel_budgets(plan, opts, models::count_parameters(spec));
  int64_t n = 0;
  for (const auto& a : plan) n += adapter_parameter_count(opts, a);
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
    if (dynamic_cast<SparseDeltaLinear*>(m) != nullptr)
      LATHE_FAIL() << "peft: " << name << " already carries a SpIEL delta (unload it before injecting again)";
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
  if (o.method == Method::spiel) plan_spiel_budgets(res.adapters, o, models::count_parameters(model.spec()));

  model.freeze();
  Generator gen(o.seed);
  for (const auto& a : res.adapters) {
    auto base = std::dynamic_pointer_cast<models::LinearLayer>(model.module(a.name));
    if (o.method == Method::spiel) {  // a uniform random k-subset of each weight, values zero
      model.replace_module(a.name, std::make_shared<SparseDeltaLinear>(base, a.k, gen));
      continue;
    }
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
      Tensor b = std::dynamic_pointer_cast<models::LinearLayer>(model.module(a.name))->base_bias();
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

std::vector<std::pair<std::string, SparseDeltaLinear*>> spiel_layers(autograd::Module& root) {
  std::vector<std::pair<std::string, SparseDeltaLinear*>> out;
  for (auto& [name, m] : root.named_modules())
    if (auto* l = dynamic_cast<SparseDeltaLinear*>(m)) out.emplace_back(name, l);
  return out;
}

void merge_adapters(autograd::Module& root) {
  for (auto& [n, l] : lora_layers(root))
    if (!l->merged()) l->merge();
  for (auto& [n, l] : spiel_layers(root))
    if (!l->merged()) l->merge();
}

void unmerge_adapters(autograd::Module& root) {
  for (auto& [n, l] : lora_layers(root))
    if (l->merged()) l->unmerge();
  for (auto& [n, l] : spiel_layers(root))
    if (l->merged()) l->unmerge();
}

int64_t unload_adapters(autograd::Module& root, bool merge) {
  auto layers = lora_layers(root);
  for (auto& [name, l] : layers) {
    if (merge && !l->merged()) l->merge();
    if (!merge && l->merged()) l->unmerge();
    root.replace_module(name, l->base());
  }
  auto sparse = spiel_layers(root);
  for (auto& [name, l] : sparse) {
    if (merge && !l->merged()) l->merge();
    if (!merge && l->merged()) l->unmerge();
    root.replace_module(name, l->base());
  }
  return static_cast<int64_t>(layers.size() + sparse.size());
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
