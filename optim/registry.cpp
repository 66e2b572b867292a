#include "optim/registry.h"

#include <map>
#include <mutex>
#include <string>

#include "configs/config.h"
#include "optim/adamw.h"
#include "optim/sgd.h"

namespace lathe::optim {

namespace {

using configs::ConfigError;

std::unique_ptr<Optimizer> build_adamw(const lathe::OptimizerConfig& c, std::vector<ParamGroup> groups) {
  AdamWOptions o;
  o.lr = c.lr();
  o.beta1 = c.beta1();
  o.beta2 = c.beta2();
  o.eps = c.eps();
  o.weight_decay = c.weight_decay();
  return std::make_unique<AdamW>(std::move(groups), o);
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

// Built-ins are put in here rather than by static registrars in their own files: a static
// library drops object files nothing refers to, and their registrars with them.
struct Registry {
  std::mutex mu;
  std::map<lathe::OptimizerConfig::Type, OptimizerFactory> factories{
      {lathe::OptimizerConfig::ADAMW, build_adamw},
      {lathe::OptimizerConfig::SGD, build_sgd},
  };
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

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

std::unique_ptr<Optimizer> make_optimizer(const lathe::OptimizerConfig& cfg, const NamedParams& named,
                                          const std::vector<GroupSpec>& specs) {
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
  GroupLayout layout = decay_layout(cfg.weight_decay(), cfg.decay_1d_params());
  std::vector<GroupSpec> all = specs;
  all.insert(all.end(), layout.specs.begin(), layout.specs.end());
  return factory(cfg, assign_groups(named, all, layout.fallback));
}

}  // namespace lathe::optim
