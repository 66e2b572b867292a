// Module: a named tree of parameters, buffers and child modules. Names are dotted paths
// in registration order (`layers.3.attn.q_proj.weight`); checkpoints, PEFT targeting,
// optimizer groups, tensor-parallel rules and Hugging Face import all key on them.
// Layers themselves live in models/; Module holds no forward (signatures differ).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lathe::autograd {

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Registers a parameter: sets requires_grad (floating dtypes) and moves its storage to
  // MemCategory::parameters. Returns the same tensor (shares its TensorImpl with the
  // registry, so flags and gradients set through either are seen by both).
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  // A tensor that is part of the state but not trained (e.g. RoPE tables, running stats).
  Tensor register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }
  // Swaps the child (or descendant, dotted path) `name` for m, e.g. a Linear for a LoRA
  // wrapper. Throws when there is no such module.
  void replace_module(const std::string& path, std::shared_ptr<Module> m);
  // Replaces the tensor of an existing parameter (same shape; e.g. after resharding).
  void replace_parameter(const std::string& path, Tensor t);

  // Recursive, in registration order; names are dotted paths relative to this module.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  // Every module under this one, depth first (pre-order), starting with this module under
  // the name "". Pointers stay valid while the tree is unchanged.
  std::vector<std::pair<std::string, Module*>> named_modules();
  // Direct children only.
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // Lookup by dotted path; throws naming the path when absent.
  Tensor parameter(const std::string& path) const;
  Tensor buffer(const std::string& path) const;
  std::shared_ptr<Module> module(const std::string& path) const;
  bool has_parameter(const std::string& path) const;

  // Training mode, applied to the whole subtree.
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // requires_grad of every parameter whose dotted name matches `pattern` (ECMAScript regex,
  // std::regex_search: "q_proj|v_proj" matches any name containing either). Returns how
  // many parameters matched. freeze() / unfreeze() with no pattern cover all parameters.
  int64_t set_requires_grad(const std::string& pattern, bool requires_grad);
  int64_t freeze(const std::string& pattern = "") { return set_requires_grad(pattern, false); }
  int64_t unfreeze(const std::string& pattern = "") { return set_requires_grad(pattern, true); }

  // Number of parameter elements (optionally only those that require grad).
  int64_t num_parameters(bool trainable_only = false) const;
  // Drops (set_to_none) or zeroes every parameter gradient.
  void zero_grad(bool set_to_none = true);

  // Short type name for printing (layers override it).
  virtual std::string type_name() const { return "Module"; }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void collect_params(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out);
  // The module holding the last component of path, and that component.
  std::pair<Module*, std::string> resolve(const std::string& path) const;

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace lathe::autograd
