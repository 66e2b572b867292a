#include "autograd/module.h"

#include <cxxabi.h>

#include <cstdlib>
#include <regex>

#include "autograd/engine.h"

namespace lathe::autograd {

static void check_name(const std::string& name, const char* what) {
  LATHE_CHECK(!name.empty() && name.find('.') == std::string::npos)
      << "Module::" << what << ": name '" << name << "' must be non-empty and contain no '.'";
}

template <typename V>
static bool has_key(const V& v, const std::string& k) {
  for (const auto& p : v)
    if (p.first == k) return true;
  return false;
}

static void check_unique(const Module& m, const std::string& name, bool taken, const char* what) {
  LATHE_CHECK(!taken) << "Module::" << what << ": '" << name << "' is already registered in this "
                      << m.type_name();
}

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_name(name, "register_parameter");
  check_unique(*this, name, has_key(params_, name) || has_key(buffers_, name) || has_key(children_, name),
               "register_parameter");
  LATHE_CHECK(t.defined()) << "Module::register_parameter: '" << name << "' is undefined";
  LATHE_CHECK(t.is_leaf()) << "Module::register_parameter: '" << name
                           << "' has autograd history; register a leaf (detach() it)";
  if (is_floating(t.dtype())) t.set_requires_grad(requires_grad);
  t.storage()->set_category(MemCategory::parameters);
  params_.emplace_back(name, t);
  return t;
}

ParamRef Module::register_param(const std::string& name, Tensor t, bool requires_grad) {
  register_parameter(name, std::move(t), requires_grad);
  return ParamRef(this, params_.size() - 1);
}

std::string Module::type_label(const std::type_info& t) {
  int status = 0;
  char* d = abi::__cxa_demangle(t.name(), nullptr, nullptr, &status);
  std::string out = (status == 0 && d) ? d : t.name();
  std::free(d);
  return out;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  check_name(name, "register_buffer");
  check_unique(*this, name, has_key(params_, name) || has_key(buffers_, name) || has_key(children_, name),
               "register_buffer");
  LATHE_CHECK(t.defined()) << "Module::register_buffer: '" << name << "' is undefined";
  buffers_.emplace_back(name, t);
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m, Accepts accepts, std::string interface) {
  check_name(name, "register_module");
  check_unique(*this, name, has_key(params_, name) || has_key(buffers_, name) || has_key(children_, name),
               "register_module");
  LATHE_CHECK(m != nullptr) << "Module::register_module: '" << name << "' is null";
  LATHE_CHECK(m.get() != this) << "Module::register_module: a module cannot contain itself";
  m->train(training_);
  children_.emplace_back(name, std::move(m));
  child_rules_.emplace_back(std::move(accepts), std::move(interface));
}

std::pair<Module*, std::string> Module::resolve(const std::string& path) const {
  Module* cur = const_cast<Module*>(this);
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    if (dot == std::string::npos) return {cur, path.substr(start)};
    std::string part = path.substr(start, dot - start);
    Module* next = nullptr;
    for (auto& c : cur->children_)
      if (c.first == part) next = c.second.get();
    LATHE_CHECK(next != nullptr) << "Module: no submodule '" << part << "' on the way to '" << path << "'";
    cur = next;
    start = dot + 1;
  }
}

void Module::replace_module(const std::string& path, std::shared_ptr<Module> m) {
  LATHE_CHECK(m != nullptr) << "Module::replace_module: null module for '" << path << "'";
  LATHE_CHECK(!path.empty()) << "Module::replace_module: empty path (a module cannot replace itself)";
  auto [owner, name] = resolve(path);
  LATHE_CHECK(m.get() != owner) << "Module::replace_module: '" << path << "' would contain itself";
  for (size_t i = 0; i < owner->children_.size(); ++i) {
    auto& c = owner->children_[i];
    if (c.first != name) continue;
    const auto& rule = owner->child_rules_[i];
    LATHE_CHECK(!rule.first || rule.first(*m))
        << "Module::replace_module: '" << path << "' is a slot for a " << rule.second << "; the replacement ("
        << m->type_name() << ", " << type_label(typeid(*m)) << ") does not implement it";
    m->train(c.second->is_training());
    c.second = std::move(m);
    return;
  }
  LATHE_FAIL() << "Module::replace_module: no module '" << path << "'";
}

void Module::replace_parameter(const std::string& path, Tensor t) {
  auto [owner, name] = resolve(path);
  for (auto& p : owner->params_) {
    if (p.first == name) {
      LATHE_CHECK(t.defined() && t.is_leaf()) << "Module::replace_parameter: '" << path
                                              << "' needs a defined leaf tensor";
      // A shard (tensor parallelism) has another shape but the same number of dimensions.
      LATHE_CHECK(t.dim() == p.second.dim())
          << "Module::replace_parameter: '" << path << "' has shape " << p.second.shape_str() << " ("
          << p.second.dim() << " dims), got " << t.shape_str() << "; a replacement keeps the number of dims";
      if (is_floating(t.dtype())) t.set_requires_grad(p.second.requires_grad());
      t.storage()->set_category(MemCategory::parameters);
      p.second = t;
      return;
    }
  }
  LATHE_FAIL() << "Module::replace_parameter: no parameter '" << path << "'";
}

void Module::collect_params(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& p : params_) out.emplace_back(prefix + p.first, p.second);
  for (const auto& c : children_) c.second->collect_params(prefix + c.first + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& b : buffers_) out.emplace_back(prefix + b.first, b.second);
  for (const auto& c : children_) c.second->collect_buffers(prefix + c.first + ".", out);
}

void Module::collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out) {
  out.emplace_back(prefix, this);
  for (auto& c : children_) c.second->collect_modules(prefix.empty() ? c.first : prefix + "." + c.first, out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect_params("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& p : named_parameters()) out.push_back(p.second);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect_buffers("", out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  collect_modules("", out);
  return out;
}

Tensor Module::parameter(const std::string& path) const {
  auto [owner, name] = resolve(path);
  for (const auto& p : owner->params_)
    if (p.first == name) return p.second;
  LATHE_FAIL() << "Module: no parameter '" << path << "'";
  return Tensor();
}

bool Module::has_parameter(const std::string& path) const {
  for (const auto& p : named_parameters())
    if (p.first == path) return true;
  return false;
}

Tensor Module::buffer(const std::string& path) const {
  auto [owner, name] = resolve(path);
  for (const auto& b : owner->buffers_)
    if (b.first == name) return b.second;
  LATHE_FAIL() << "Module: no buffer '" << path << "'";
  return Tensor();
}

std::shared_ptr<Module> Module::module(const std::string& path) const {
  auto [owner, name] = resolve(path);
  for (const auto& c : owner->children_)
    if (c.first == name) return c.second;
  LATHE_FAIL() << "Module: no submodule '" << path << "'";
  return nullptr;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->train(on);
}

int64_t Module::set_requires_grad(const std::string& pattern, bool requires_grad) {
  std::regex re;
  try {
    re = std::regex(pattern.empty() ? std::string(".*") : pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    LATHE_FAIL() << "Module::set_requires_grad: bad regex '" << pattern << "': " << e.what();
  }
  int64_t n = 0;
  for (auto& p : named_parameters()) {
    if (!std::regex_search(p.first, re)) continue;
    if (is_floating(p.second.dtype())) p.second.set_requires_grad(requires_grad);
    ++n;
  }
  return n;
}

int64_t Module::num_parameters(bool trainable_only) const {
  int64_t n = 0;
  for (const auto& p : named_parameters())
    if (!trainable_only || p.second.requires_grad()) n += p.second.numel();
  return n;
}

void Module::zero_grad(bool set_to_none) { autograd::zero_grad(parameters(), set_to_none); }

Module& Module::to(Device dev) {
  for (auto& [name, p] : named_parameters()) {
    if (p.device() == dev) continue;
    p.set_grad(Tensor());
    p.set_data(p.detach().to(dev));
  }
  for (auto& [name, b] : named_buffers()) {
    if (b.device() != dev) b.set_data(b.to(dev));
  }
  return *this;
}

Module& Module::to(DType dt) {
  for (auto& [name, p] : named_parameters()) {
    if (!is_floating(p.dtype()) || p.dtype() == dt) continue;
    p.set_grad(Tensor());
    p.set_data(p.detach().to(dt));
  }
  for (auto& [name, b] : named_buffers()) {
    if (is_floating(b.dtype()) && b.dtype() != dt) b.set_data(b.to(dt));
  }
  return *this;
}

Device Module::device() const {
  auto ps = named_parameters();
  if (!ps.empty()) return ps.front().second.device();
  auto bs = named_buffers();
  return bs.empty() ? Device::cpu() : bs.front().second.device();
}

}  // namespace lathe::autograd
