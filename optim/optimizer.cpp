#include "optim/optimizer.h"

#include <cmath>
#include <regex>

#include "core/memory.h"
#include "core/paged.h"
#include "kernels/ops.h"

namespace lathe::optim {

// ---- group options ------------------------------------------------------------------------

namespace {
std::string group_label(const ParamGroup& g) { return g.name.empty() ? std::string("(unnamed)") : g.name; }

const char* option_type_name(const OptionValue& v) {
  switch (v.index()) {
    case 0: return "int";
    case 1: return "double";
    case 2: return "bool";
    default: return "string";
  }
}
}  // namespace

int64_t ParamGroup::option_int(const std::string& key, int64_t fallback) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  const auto* v = std::get_if<int64_t>(&it->second);
  LATHE_REQUIRE(v) << "optimizer group " << group_label(*this) << ": option '" << key << "' must be an int, got a "
                   << option_type_name(it->second);
  return *v;
}

double ParamGroup::option_double(const std::string& key, double fallback) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  if (const auto* i = std::get_if<int64_t>(&it->second)) return static_cast<double>(*i);
  const auto* v = std::get_if<double>(&it->second);
  LATHE_REQUIRE(v) << "optimizer group " << group_label(*this) << ": option '" << key
                   << "' must be a number, got a " << option_type_name(it->second);
  return *v;
}

bool ParamGroup::option_bool(const std::string& key, bool fallback) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  const auto* v = std::get_if<bool>(&it->second);
  LATHE_REQUIRE(v) << "optimizer group " << group_label(*this) << ": option '" << key << "' must be a bool, got a "
                   << option_type_name(it->second);
  return *v;
}

std::string ParamGroup::option_string(const std::string& key, const std::string& fallback) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  const auto* v = std::get_if<std::string>(&it->second);
  LATHE_REQUIRE(v) << "optimizer group " << group_label(*this) << ": option '" << key
                   << "' must be a string, got a " << option_type_name(it->second);
  return *v;
}

std::vector<ParamGroup> assign_groups(const NamedParams& named, const std::vector<GroupSpec>& specs,
                                      const GroupSpec& fallback) {
  std::vector<std::regex> res;
  res.reserve(specs.size());
  for (const auto& s : specs) {
    try {
      res.emplace_back(s.pattern.empty() ? std::string(".*") : s.pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      LATHE_FAIL() << "optimizer group '" << s.name << "': pattern \"" << s.pattern << "\" is not a valid regex ("
                   << e.what() << ")";
    }
  }
  const double default_wd = fallback.weight_decay.value_or(0.0);
  auto make = [&](const GroupSpec& s) {
    ParamGroup g;
    g.name = s.name;
    g.weight_decay = s.weight_decay.value_or(default_wd);
    g.lr_scale = s.lr_scale;
    g.options = s.options;
    return g;
  };
  std::vector<ParamGroup> out;
  for (const auto& s : specs) out.push_back(make(s));
  out.push_back(make(fallback));
  for (const auto& [n, p] : named) {
    if (!p.requires_grad()) continue;
    size_t k = 0;
    for (; k < specs.size(); ++k)
      if ((specs[k].max_dim < 0 || p.dim() <= specs[k].max_dim) && std::regex_match(n, res[k])) break;
    out[k].params.emplace_back(n, p);  // k == specs.size(): the fallback
  }
  std::vector<ParamGroup> kept;
  for (auto& g : out)
    if (!g.params.empty()) kept.push_back(std::move(g));
  return kept;
}

// ---- Optimizer ----------------------------------------------------------------------------

Optimizer::Optimizer(std::vector<ParamGroup> groups) : groups_(std::move(groups)) {
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const std::string& n = groups_[gi].params[i].first;
      LATHE_CHECK(slots_.emplace(n, Slot{gi, i}).second)
          << "optimizer: parameter '" << n << "' is in more than one group (or twice in one)";
    }
}

const Optimizer::Slot& Optimizer::slot_of(const std::string& name) const {
  auto it = slots_.find(name);
  LATHE_CHECK(it != slots_.end()) << this->name() << ": no parameter named '" << name << "'";
  return it->second;
}

void Optimizer::update_one(const Slot& s) {
  const ParamGroup& g = groups_[s.group];
  const auto& [n, p] = g.params[s.index];
  Tensor grad = p.grad();
  if (!grad.defined()) return;
  auto it = state_.find(n);
  if (it == state_.end()) it = state_.emplace(n, make_state(n, p, g)).first;
  const int64_t t = param_steps_[n] + 1;
  prefetch_state(it->second);
  update(n, p, grad, it->second, g, t);
  param_steps_[n] = t;  // counted once the update went through
}

void Optimizer::step() {
  ++step_;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) update_one(Slot{gi, i});
}

std::vector<Optimizer::PendingUpdate> Optimizer::pending_updates(size_t group) {
  LATHE_CHECK(group < groups_.size()) << name() << ": no parameter group " << group;
  std::vector<PendingUpdate> out;
  const ParamGroup& g = groups_[group];
  for (const auto& [n, p] : g.params) {
    Tensor grad = p.grad();
    if (!grad.defined()) continue;
    auto it = state_.find(n);
    if (it == state_.end()) it = state_.emplace(n, make_state(n, p, g)).first;
    prefetch_state(it->second);
    out.push_back(PendingUpdate{n, p, grad, &it->second, param_steps_[n] + 1});
  }
  return out;
}

void Optimizer::commit_updates(const std::vector<PendingUpdate>& done) {
  for (const auto& u : done) param_steps_[u.name] = u.step;
}

bool Optimizer::step_param(const std::string& name) {
  const Slot& s = slot_of(name);
  if (!groups_[s.group].params[s.index].second.grad().defined()) return false;
  update_one(s);
  return true;
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params) p.set_grad(Tensor());
}

void Optimizer::set_lr(double lr) {
  for (auto& g : groups_) g.lr = lr * g.lr_scale;
}

int64_t Optimizer::param_step(const std::string& name) const {
  slot_of(name);
  auto it = param_steps_.find(name);
  return it == param_steps_.end() ? 0 : it->second;
}

const StateMap& Optimizer::param_state(const std::string& name) const {
  static const StateMap empty;
  slot_of(name);
  auto it = state_.find(name);
  return it == state_.end() ? empty : it->second;
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& [pname, entries] : state_)
    for (const auto& [key, t] : entries) out[pname + "/" + key] = t;
  for (const auto& [pname, t] : param_steps_)
    out[pname + "/__step__"] = Tensor::scalar(static_cast<double>(t), DType::i64);
  out["__step__"] = Tensor::scalar(static_cast<double>(step_), DType::i64);
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& sd) {
  auto it = sd.find("__step__");
  LATHE_CHECK(it != sd.end()) << name() << ": optimizer state has no __step__ entry";
  const int64_t global_step = static_cast<int64_t>(it->second.item());
  // Split "<param>/<key>" per parameter first, so every problem is found before anything changes.
  std::map<std::string, std::map<std::string, Tensor>> loaded;
  for (const auto& [k, t] : sd) {
    if (k == "__step__") continue;
    auto slash = k.rfind('/');
    LATHE_CHECK(slash != std::string::npos) << name() << ": bad optimizer state key '" << k << "'";
    std::string pname = k.substr(0, slash);
    LATHE_CHECK(slots_.count(pname)) << name() << ": optimizer state for unknown parameter '" << pname << "'";
    loaded[pname][k.substr(slash + 1)] = t;
  }
  std::map<std::string, StateMap> next_state;
  std::map<std::string, int64_t> next_steps;
  for (auto& [pname, entries] : loaded) {
    const Slot& s = slots_.at(pname);
    const ParamGroup& g = groups_[s.group];
    const Tensor& p = g.params[s.index].second;
    auto st = entries.find("__step__");
    // Checkpoints written before per-parameter steps hold only the global count.
    int64_t t = global_step;
    if (st != entries.end()) {
      t = static_cast<int64_t>(st->second.item());
      entries.erase(st);
    }
    next_steps[pname] = t;
    // A parameter whose init_state is empty (SGD without momentum) has only its step.
    StateMap fresh = make_state(pname, p, g);
    if (fresh.empty() && entries.empty()) continue;
    for (const auto& [key, t_in] : entries) {
      auto f = fresh.find(key);
      LATHE_CHECK(f != fresh.end()) << name() << ": state '" << pname << "/" << key
                                    << "' is not a state this optimizer keeps for parameter '" << pname << "'";
      LATHE_CHECK(t_in.shape() == f->second.shape())
          << name() << ": state '" << pname << "/" << key << "' has shape " << t_in.shape_str()
          << " but parameter '" << pname << "' needs " << f->second.shape_str();
      LATHE_CHECK(t_in.dtype() == f->second.dtype())
          << name() << ": state '" << pname << "/" << key << "' is " << dtype_name(t_in.dtype()) << " but parameter '"
          << pname << "' needs " << dtype_name(f->second.dtype());
    }
    for (const auto& [key, f] : fresh)
      LATHE_CHECK(entries.count(key)) << name() << ": checkpoint lacks optimizer state '" << pname << "/" << key << "'";
    // Copy into the tensors init_state made: they are on the parameter's device and counted
    // as optimizer memory.
    for (auto& [key, f] : fresh) f.copy_(entries.at(key));
    next_state[pname] = std::move(fresh);
  }
  // Every parameter with state now must have had state in the checkpoint (a missing one would
  // silently restart its moments).
  for (const auto& [pname, steps] : param_steps_)
    LATHE_CHECK(next_steps.count(pname)) << name() << ": checkpoint lacks optimizer state for '" << pname << "'";
  for (const auto& [pname, entries] : state_)
    LATHE_CHECK(next_state.count(pname) || entries.empty())
        << name() << ": checkpoint lacks optimizer state for '" << pname << "'";
  step_ = global_step;
  state_ = std::move(next_state);
  param_steps_ = std::move(next_steps);
}

namespace {
// Bytes per group of the state tensors that `count` accepts.
template <typename Groups, typename State, typename Pred>
std::vector<int64_t> group_state_bytes(const Groups& groups, const State& state, Pred count) {
  std::vector<int64_t> out;
  for (const auto& g : groups) {
    int64_t b = 0;
    for (const auto& [n, p] : g.params) {
      auto it = state.find(n);
      if (it == state.end()) continue;
      for (const auto& [k, t] : it->second)
        if (count(t)) b += static_cast<int64_t>(t.nbytes());
    }
    out.push_back(b);
  }
  return out;
}
}  // namespace

std::vector<int64_t> Optimizer::state_bytes() const {
  return group_state_bytes(groups_, state_, [](const Tensor&) { return true; });
}

std::vector<int64_t> Optimizer::paged_state_bytes() const {
  return group_state_bytes(groups_, state_, [](const Tensor& t) { return t.storage()->paged(); });
}

StateMap Optimizer::make_state(const std::string& name, const Tensor& param, const ParamGroup& group) const {
  MemCategoryGuard guard(MemCategory::optimizer_state);
  if (!paging_.enabled) return init_state(name, param, group);
  PagedAllocGuard paged(paging_.min_numel, paging_.dir);
  return init_state(name, param, group);
}

void Optimizer::prefetch_state(const StateMap& state) {
  for (const auto& [k, t] : state)
    if (t.defined() && t.storage()->paged()) t.storage()->prefetch();
}

// ---- gradient norm ------------------------------------------------------------------------

Tensor grad_norm_squared(const std::vector<Tensor>& params) {
  std::vector<Tensor> parts;
  Device dev = Device::cpu();
  for (const auto& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (parts.empty()) dev = g.device();
    // One fused pass per gradient (the kernel accumulates in double); squaring the 0-d norm
    // instead of the gradient avoids a gradient-sized temporary.
    Tensor n = kernels::reduce(kernels::ReduceOp::norm, g, {}).to(DType::f32);
    if (n.device() != dev) n = n.to(dev);
    parts.push_back(kernels::binary(kernels::BinaryOp::mul, n, n));
  }
  if (parts.empty()) return Tensor::scalar(0.0, DType::f32);
  if (parts.size() == 1) return parts[0];
  return kernels::reduce(kernels::ReduceOp::sum, kernels::stack(parts, 0), {});
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm,
                      const std::function<void(Tensor&)>& all_reduce_sq) {
  Tensor sq = grad_norm_squared(params);
  if (all_reduce_sq) all_reduce_sq(sq);
  const double norm = std::sqrt(sq.item());  // the one host sync
  if (max_norm > 0 && norm > max_norm) {
    const double s = max_norm / (norm + 1e-6);
    for (const auto& p : params) {
      Tensor g = p.grad();
      if (g.defined()) kernels::scale_(g, s);
    }
  }
  return norm;
}

}  // namespace lathe::optim
