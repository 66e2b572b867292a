// Module: a named tree of parameters, buffers and child modules. Names are dotted paths
// in registration order (`layers.3.attn.q_proj.weight`); checkpoints, PEFT targeting,
// optimizer groups, tensor-parallel rules and Hugging Face import all key on them.
// Layers themselves live in models/; Module holds no forward (signatures differ).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lathe::autograd {

class Module;

// A handle to a parameter registered in a module. It reads the registry on every use, so
// replace_parameter (a resharded or re-typed tensor) changes what a layer's forward sees;
// a Tensor member copied at construction would keep the old one.
class ParamRef {
 public:
  ParamRef() = default;
  // The registry's current tensor (an undefined Tensor for a default handle).
  const Tensor& get() const;
  const Tensor& operator*() const { return get(); }
  const Tensor* operator->() const { return &get(); }
  operator const Tensor&() const { return get(); }  // NOLINT: reads like the Tensor it names
  bool defined() const { return owner_ != nullptr && get().defined(); }

 private:
  friend class Module;
  ParamRef(const Module* owner, size_t index) : owner_(owner), index_(index) {}
  const Module* owner_ = nullptr;
  size_t index_ = 0;
};

// A typed handle to a child module (a slot): it reads the parent's child registry on
// every use, so replace_module("layers.0.attn.q_proj", m) rebinds what the parent's
// forward calls. replace_module checks that the new module is a T.
template <typename T>
class Slot {
 public:
  Slot() = default;
  T* get() const;
  T* operator->() const { return get(); }
  T& operator*() const { return *get(); }
  std::shared_ptr<T> shared() const;
  explicit operator bool() const { return owner_ != nullptr; }

 private:
  friend class Module;
  Slot(const Module* owner, size_t index) : owner_(owner), index_(index) {}
  const Module* owner_ = nullptr;
  size_t index_ = 0;
};

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
  // Like register_parameter, but returns a handle that always reads the registry (for
  // layers whose forward must see replace_parameter).
  ParamRef register_param(const std::string& name, Tensor t, bool requires_grad = true);
  // Registers a child of any type. The returned pointer is the object registered now; a
  // parent whose forward must follow replace_module holds a Slot instead (register_slot).
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m, nullptr, std::string());
    return m;
  }
  // Registers a child that only a T (or a subclass) may replace, and returns its slot.
  template <typename T, typename M>
  Slot<T> register_slot(const std::string& name, std::shared_ptr<M> m) {
    static_assert(std::is_base_of<T, M>::value, "register_slot<T>: the module must be a T");
    add_child(name, std::shared_ptr<Module>(std::move(m)),
              [](const Module& c) { return dynamic_cast<const T*>(&c) != nullptr; }, type_label(typeid(T)));
    return Slot<T>(this, children_.size() - 1);
  }
  // Swaps the child (or descendant, dotted path) `name` for m, e.g. a Linear for a LoRA
  // wrapper; a parent's slot then calls m. Throws when there is no such module, or when the
  // slot needs an interface m does not implement.
  void replace_module(const std::string& path, std::shared_ptr<Module> m);
  // Replaces the tensor of an existing parameter; layers that read it through a ParamRef
  // use the new one. The shape may change (a tensor-parallel shard) but not the number of
  // dimensions; requires_grad is carried over for floating tensors.
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

  // Moves every parameter and buffer of the subtree to dev in place (their TensorImpls are
  // kept, so handles held elsewhere follow; gradients are dropped). Returns *this.
  Module& to(Device dev);
  // Casts every floating parameter and buffer of the subtree to dt in place.
  Module& to(DType dt);
  // The device of the first parameter (or buffer); the CPU for an empty module.
  Device device() const;

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
  template <typename T>
  friend class Slot;
  friend class ParamRef;
  using Accepts = std::function<bool(const Module&)>;
  void add_child(const std::string& name, std::shared_ptr<Module> m, Accepts accepts, std::string interface);
  static std::string type_label(const std::type_info& t);  // readable C++ type name for errors
  void collect_params(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out);
  // The module holding the last component of path, and that component.
  std::pair<Module*, std::string> resolve(const std::string& path) const;

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  // Per child (same index): what a replacement must be (empty: any module) and its name.
  std::vector<std::pair<Accepts, std::string>> child_rules_;
  bool training_ = true;
};

inline const Tensor& ParamRef::get() const {
  static const Tensor kNone;
  return owner_ ? owner_->params_[index_].second : kNone;
}

template <typename T>
T* Slot<T>::get() const {
  // The registry only holds a T here: register_slot and replace_module check it.
  return owner_ ? static_cast<T*>(owner_->children_[index_].second.get()) : nullptr;
}

template <typename T>
std::shared_ptr<T> Slot<T>::shared() const {
  return owner_ ? std::static_pointer_cast<T>(owner_->children_[index_].second) : nullptr;
}

}  // namespace lathe::autograd
