#include "autograd/meta.h"

#include <atomic>

#include "autograd/hooks.h"

namespace lathe::autograd {

AutogradMeta& meta_of(const Tensor& t) {
  TensorImpl& impl = t.impl();
  if (!impl.autograd) impl.autograd = std::make_shared<AutogradMeta>();
  return *impl.autograd;
}

AutogradMeta* meta_if(const Tensor& t) { return t.defined() ? t.impl().autograd.get() : nullptr; }

std::shared_ptr<Node> grad_fn_of(const Tensor& t) {
  AutogradMeta* m = meta_if(t);
  return m ? m->grad_fn : nullptr;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined()) return {};
  AutogradMeta* m = meta_if(t);
  if (m && m->grad_fn) return Edge{m->grad_fn, m->output_nr};
  if (!t.requires_grad()) return {};
  AutogradMeta& lm = meta_of(t);
  std::shared_ptr<AccumulateGrad> acc = lm.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t);
    lm.grad_accumulator = acc;
  }
  return Edge{acc, 0};
}

// ---- hooks ------------------------------------------------------------------------------

namespace {
std::atomic<int64_t> g_next_hook_id{1};
}

int64_t add_grad_ready_hook(const Tensor& leaf, GradReadyHook fn) {
  LATHE_CHECK(leaf.defined()) << "add_grad_ready_hook: undefined tensor";
  LATHE_CHECK(leaf.requires_grad()) << "add_grad_ready_hook: the tensor (shape " << leaf.shape_str()
                                    << ") does not require grad, so its gradient is never computed";
  LATHE_CHECK(leaf.is_leaf()) << "add_grad_ready_hook: the tensor (shape " << leaf.shape_str()
                              << ") is not a leaf; hooks go on leaves (parameters)";
  LATHE_CHECK(fn != nullptr) << "add_grad_ready_hook: empty function";
  int64_t id = g_next_hook_id.fetch_add(1);
  meta_of(leaf).hooks.emplace_back(id, std::move(fn));
  return id;
}

bool remove_grad_ready_hook(const Tensor& leaf, int64_t id) {
  AutogradMeta* m = meta_if(leaf);
  if (!m) return false;
  for (auto it = m->hooks.begin(); it != m->hooks.end(); ++it) {
    if (it->first == id) {
      m->hooks.erase(it);
      return true;
    }
  }
  return false;
}

void clear_grad_ready_hooks(const Tensor& leaf) {
  if (AutogradMeta* m = meta_if(leaf)) m->hooks.clear();
}

}  // namespace lathe::autograd
