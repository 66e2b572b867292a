// Optimizers by the config's type (OptimizerConfig.type): the trainer asks for "the optimizer
// of this config" and gets AdamW, SGD, or whatever a later layer registered.
//
//   auto opt = optim::make_optimizer(cfg.optimizer(), model.named_parameters());
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "configs/lathe.pb.h"
#include "optim/optimizer.h"

namespace lathe::optim {

// Builds an optimizer of one type from the config and the already assigned groups. Problems
// with the config are configs::ConfigError naming the field ("optimizer.sgd_momentum: ...").
using OptimizerFactory =
    std::function<std::unique_ptr<Optimizer>(const lathe::OptimizerConfig&, std::vector<ParamGroup> groups)>;

// Adds or replaces the factory of `type` and returns the one it replaced (empty if none); an
// empty factory removes the type. AdamW (ADAMW) and SGD (SGD) are built in.
OptimizerFactory register_optimizer(lathe::OptimizerConfig::Type type, OptimizerFactory factory);
bool optimizer_registered(lathe::OptimizerConfig::Type type);

// The optimizer of `cfg` over the trainable parameters of `named`. Groups: `specs` first (the
// first match wins), then "no_decay" for 1-D parameters (unless decay_1d_params), then
// "decay" with cfg.weight_decay for the rest. A type without a factory is a
// configs::ConfigError naming optimizer.type.
// The groups of optimizer.groups in the config, in order (errors name the field, e.g.
// "optimizer.groups[1].pattern"); make_optimizer puts them before its default decay groups.
std::vector<GroupSpec> group_specs_from_config(const lathe::OptimizerConfig& cfg);

// The AdamW options of the config (variant, 8-bit states with their defaults: f32 moments for
// the embeddings unless eight_bit.f32_params says otherwise) and its paging options; GaLore and
// Fira read the same fields.
struct AdamWOptions;
AdamWOptions adamw_options_from_config(const lathe::OptimizerConfig& cfg);
PagingOptions paging_from_config(const lathe::OptimizerConfig& cfg);

// make_optimizer also applies the config's paging (optimizer.paged, optimizer.paging) to the
// optimizer it builds, whatever its type.
std::unique_ptr<Optimizer> make_optimizer(const lathe::OptimizerConfig& cfg, const NamedParams& named,
                                          const std::vector<GroupSpec>& specs = {});
// The optimizer of `cfg` over groups assigned by the caller (ZeRO builds one over a rank's
// shard pieces with the groups of the whole model: parallel/zero.h); same checks and paging.
std::unique_ptr<Optimizer> make_optimizer_for_groups(const lathe::OptimizerConfig& cfg, std::vector<ParamGroup> groups);

}  // namespace lathe::optim
