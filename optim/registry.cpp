#include "optim/registry.h"

#include <cmath>
#include <cstdlib>
#include <regex>
#include <map>
#include <mutex>
#include <string>

#include "configs/config.h"
#include "optim/adamw.h"
#include "optim/galore.h"
#include "optim/sgd.h"
#include "optim/sgd_sai.h"

namespace lathe::optim {

namespace {

using configs::ConfigError;

}  // namespace

PagingOptions paging_from_config(const lathe::OptimizerConfig& c) {
  PagingOptions p;
  p.enabled = c.paged();
  p.min_numel = c.paging().min_numel();
  p.dir = c.paging().dir();
  return p;
}

AdamWOptions adamw_options_from_config(const lathe::OptimizerConfig& c) {
  AdamWOptions o;
  o.lr = c.lr();
  o.beta1 = c.beta1();
  o.beta2 = c.beta2();
  o.eps = c.eps();
  o.weight_decay = c.weight_decay();
  o.variant = c.adamw_variant() == lathe::OptimizerConfig::HF ? kernels::AdamVariant::hf : kernels::AdamVariant::torch;
  o.state_bits = c.state_bits();
  o.block_size = c.eight_bit().block_size();
  o.min_8bit_size = c.eight_bit().min_8bit_size();
  o.f32_params =
      c.eight_bit().has_f32_params() ? c.eight_bit().f32_params() : std::string(configs::kDefaultEightBitF32Params);
  return o;
}

namespace {

std::unique_ptr<Optimizer> build_adamw(const lathe::OptimizerConfig& c, std::vector<ParamGroup> groups) {
  return std::make_unique<AdamW>(std::move(groups), adamw_options_from_config(c));
}

std::unique_ptr<Optimizer> build_sgd_sai(const lathe::OptimizerConfig& c, std::vector<ParamGroup> groups) {
  SGDSaIOptions o;
  o.lr = c.lr();
  o.eps = c.eps();
  o.momentum = c.sgd_sai().momentum();
  o.normalize = c.sgd_sai().normalize();
  return std::make_unique<SGDSaI>(std::move(groups), o);
}

std::unique_ptr<Optimizer> build_sgd(const lathe::OptimizerConfig& c, std::vector<ParamGroup> groups) {
  if (!(c.sgd_momentum() >= 0))
    throw ConfigError("config", {"optimizer.sgd_momentum: must be >= 0 (got " + std::to_string(c.sgd_momentum()) + ")"});
  if (c.nesterov() && c.sgd_momentum() == 0)
    throw ConfigError("config", {"optimizer.nesterov: needs optimizer.sgd_momentum > 0"});
  SGDOptions o;
  o.lr = c.lr();
  o.momentum = c.sgd_momentum();
  o.nesterov = c.nesterov();
  return std::make_unique<SGD>(std::move(groups), o);
}

// GALORE and FIRA: optimizer.galore (and optimizer.fira); eps defaults to the reference
// code's 1e-6 unless optimizer.eps is set (configs::resolve writes that default into a
// resolved config); an empty galore.target means the default target.
std::unique_ptr<Optimizer> build_galore_family(const lathe::OptimizerConfig& c, std::vector<ParamGroup> groups,
                                               bool fira) {
  const std::string type = fira ? "FIRA" : "GALORE";
  std::vector<std::string> errs;
  if (c.has_adamw_variant() && c.adamw_variant() != lathe::OptimizerConfig::HF)
    errs.push_back("optimizer.adamw_variant: " + type +
                   " runs the HF-style AdamW of its reference code; leave it unset or set HF");
  const lathe::GaLoreConfig& gc = c.galore();
  GaLoreOptions o;
  o.lr = c.lr();
  o.beta1 = c.beta1();
  o.beta2 = c.beta2();
  o.eps = c.has_eps() ? c.eps() : 1e-6;
  o.weight_decay = c.weight_decay();
  o.rank = gc.rank();
  o.update_proj_gap = gc.update_proj_gap();
  o.scale = gc.scale();
  switch (gc.proj_type()) {
    case lathe::GaLoreConfig::STD: o.proj_type = ProjType::std_; break;
    case lathe::GaLoreConfig::REVERSE_STD: o.proj_type = ProjType::reverse_std; break;
    case lathe::GaLoreConfig::LEFT: o.proj_type = ProjType::left; break;
    case lathe::GaLoreConfig::RIGHT: o.proj_type = ProjType::right; break;
    case lathe::GaLoreConfig::FULL: o.proj_type = ProjType::full; break;
  }
  o.svd = gc.svd() == lathe::GaLoreConfig::RANDOMIZED ? SvdMethod::randomized : SvdMethod::exact;
  o.svd_oversample = gc.svd_oversample();
  o.svd_power_iters = gc.svd_power_iters();
  o.target = gc.target();
  // 8-bit moments and their exemptions as AdamW reads them (the embeddings keep f32 by default).
  const AdamWOptions a = adamw_options_from_config(c);
  o.state_bits = a.state_bits;
  o.block_size = a.block_size;
  o.min_8bit_size = a.min_8bit_size;
  o.f32_params = a.f32_params;
  o.fira = fira;
  o.fira_form = c.fira().form() == lathe::FiraConfig::PAPER ? FiraForm::paper : FiraForm::code;
  o.fira_gamma = c.fira().gamma();
  o.natural = gc.natural();
  o.natural_history = gc.natural_history();
  o.natural_lambda = gc.natural_lambda();
  for (const std::string& p : GaLore::check_options(groups, o))
    errs.push_back(p.rfind("group ", 0) == 0 ? "optimizer.groups: " + p : "optimizer." + p);
  if (!errs.empty()) throw ConfigError("config", errs);
  return std::make_unique<GaLore>(std::move(groups), o);
}

// Built-ins are put in here rather than by static registrars in their own files: a static
// library drops object files nothing refers to, and their registrars with them.
struct Registry {
  std::mutex mu;
  std::map<lathe::OptimizerConfig::Type, OptimizerFactory> factories{
      {lathe::OptimizerConfig::ADAMW, build_adamw},
      {lathe::OptimizerConfig::SGD, build_sgd},
      {lathe::OptimizerConfig::SGD_SAI, build_sgd_sai},
      {lathe::OptimizerConfig::GALORE,
       [](const lathe::OptimizerConfig& c, std::vector<ParamGroup> g) { return build_galore_family(c, std::move(g), false); }},
      {lathe::OptimizerConfig::FIRA,
       [](const lathe::OptimizerConfig& c, std::vector<ParamGroup> g) { return build_galore_family(c, std::move(g), true); }},
  };
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

std::vector<GroupSpec> group_specs_from_config(const lathe::OptimizerConfig& cfg) {
  std::vector<GroupSpec> out;
  for (int i = 0; i < cfg.groups_size(); ++i) {
    const lathe::ParamGroupConfig& g = cfg.groups(i);
    const std::string where = "optimizer.groups[" + std::to_string(i) + "]";
    if (!g.has_pattern() || g.pattern().empty())
      throw ConfigError("config", {where + ".pattern: required (a regex over parameter names)"});
    try {
      std::regex re(g.pattern(), std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw ConfigError("config", {where + ".pattern: \"" + g.pattern() + "\" is not a valid regex (" + e.what() + ")"});
    }
    if (!(g.lr_scale() >= 0) || !std::isfinite(g.lr_scale()))
      throw ConfigError("config", {where + ".lr_scale: must be a finite number >= 0 (got " + std::to_string(g.lr_scale()) + ")"});
    if (g.has_weight_decay() && (!(g.weight_decay() >= 0) || !std::isfinite(g.weight_decay())))
      throw ConfigError("config", {where + ".weight_decay: must be a finite number >= 0 (got " +
                                   std::to_string(g.weight_decay()) + ")"});
    GroupSpec s;
    s.name = g.has_name() && !g.name().empty() ? g.name() : "group" + std::to_string(i);
    s.pattern = g.pattern();
    s.lr_scale = g.lr_scale();
    if (g.has_weight_decay()) s.weight_decay = g.weight_decay();
    // Options arrive as text; keep the narrowest type that reads back exactly, so the typed
    // getters (option_int, option_double, option_bool) accept them.
    for (const auto& [key, text] : g.options()) {
      char* end = nullptr;
      const long long iv = std::strtoll(text.c_str(), &end, 10);
      if (!text.empty() && *end == '\0') {
        s.options[key] = static_cast<int64_t>(iv);
        continue;
      }
      const double dv = std::strtod(text.c_str(), &end);
      if (!text.empty() && *end == '\0') {
        s.options[key] = dv;
      } else if (text == "true" || text == "false") {
        s.options[key] = text == "true";
      } else {
        s.options[key] = text;
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

OptimizerFactory register_optimizer(lathe::OptimizerConfig::Type type, OptimizerFactory factory) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  OptimizerFactory prev;
  auto it = r.factories.find(type);
  if (it != r.factories.end()) {
    prev = std::move(it->second);
    r.factories.erase(it);
  }
  if (factory) r.factories[type] = std::move(factory);
  return prev;
}

bool optimizer_registered(lathe::OptimizerConfig::Type type) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.factories.count(type) > 0;
}

std::unique_ptr<Optimizer> make_optimizer_for_groups(const lathe::OptimizerConfig& cfg, std::vector<ParamGroup> groups) {
  OptimizerFactory factory;
  std::string known;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(cfg.type());
    if (it != r.factories.end()) factory = it->second;
    for (const auto& [t, f] : r.factories)
      known += (known.empty() ? "" : ", ") + lathe::OptimizerConfig::Type_Name(t);
  }
  if (!factory) {
    const std::string& type_name = lathe::OptimizerConfig::Type_Name(cfg.type());
    throw ConfigError("config", {"optimizer.type: " + (type_name.empty() ? std::to_string(cfg.type()) : type_name) +
                                 " is not implemented in this build (implemented: " + known + ")"});
  }
  // The optimizer section's rules (configs/validate.cpp), for callers that did not validate the
  // whole config: errors name the field.
  {
    lathe::RunConfig only;
    *only.mutable_optimizer() = cfg;
    // Rules that tie the optimizer to other sections (layer-wise updates need train.grad_clip 0)
    // belong to the whole config's validation, which the trainer runs; here the other sections
    // are defaults and must not make them fire.
    only.mutable_train()->set_grad_clip(0);
    std::vector<std::string> errs;
    for (const std::string& e : configs::validate(only))
      if (e.rfind("optimizer", 0) == 0) errs.push_back(e);
    if (!errs.empty()) throw ConfigError("config", errs);
  }
  std::unique_ptr<Optimizer> opt = factory(cfg, std::move(groups));
  opt->set_paging(paging_from_config(cfg));
  return opt;
}

std::unique_ptr<Optimizer> make_optimizer(const lathe::OptimizerConfig& cfg, const NamedParams& named,
                                          const std::vector<GroupSpec>& specs) {
  GroupLayout layout = decay_layout(cfg.weight_decay(), cfg.decay_1d_params());
  std::vector<GroupSpec> all = specs;
  const std::vector<GroupSpec> from_config = group_specs_from_config(cfg);
  all.insert(all.end(), from_config.begin(), from_config.end());
  all.insert(all.end(), layout.specs.begin(), layout.specs.end());
  return make_optimizer_for_groups(cfg, assign_groups(named, all, layout.fallback));
}

}  // namespace lathe::optim
