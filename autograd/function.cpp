#include "autograd/function.h"

#include "autograd/grad_mode.h"
#include "autograd/meta.h"

namespace lathe::autograd {

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// A new TensorImpl over the same storage and layout, without autograd state.
static Tensor rewrap(const Tensor& t) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.storage();
  impl->shape = t.shape();
  impl->strides = t.strides();
  impl->offset = t.offset();
  impl->dtype = t.dtype();
  return Tensor(std::move(impl));
}

std::vector<Tensor> record_multi(const std::string& name, std::vector<Tensor> outs, const std::vector<Tensor>& inputs,
                                 BackwardFn fn) {
  if (!any_requires_grad(inputs)) return outs;
  std::vector<Edge> edges;
  std::vector<InputMeta> metas;
  edges.reserve(inputs.size());
  metas.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    if (t.defined() && t.requires_grad()) {
      LATHE_CHECK(is_floating(t.dtype())) << "op '" << name << "': an input of dtype " << dtype_name(t.dtype())
                                          << " cannot require grad";
      edges.push_back(gradient_edge(t));
      metas.push_back(InputMeta{t.shape(), t.dtype(), t.device()});
    } else {
      edges.push_back(Edge{});
      metas.push_back(t.defined() ? InputMeta{t.shape(), t.dtype(), t.device()} : InputMeta{});
    }
  }
  auto node = std::make_shared<FunctionNode>(name, std::move(edges), std::move(metas),
                                             static_cast<uint32_t>(outs.size()), std::move(fn));
  for (size_t i = 0; i < outs.size(); ++i) {
    Tensor& o = outs[i];
    LATHE_CHECK(o.defined()) << "op '" << name << "': output " << i << " is undefined";
    bool shared = o.impl().autograd != nullptr || o.requires_grad();
    for (const Tensor& t : inputs) shared = shared || (t.defined() && o.is_same(t));
    for (size_t j = 0; j < i; ++j) shared = shared || o.is_same(outs[j]);
    if (shared) o = rewrap(o);
    LATHE_CHECK(is_floating(o.dtype())) << "op '" << name << "': output " << i << " of dtype "
                                        << dtype_name(o.dtype()) << " cannot carry a gradient";
    o.impl().requires_grad = true;
    AutogradMeta& m = meta_of(o);
    m.grad_fn = node;
    m.output_nr = static_cast<uint32_t>(i);
  }
  return outs;
}

Tensor record(const std::string& name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!any_requires_grad(inputs)) return out;
  return record_multi(name, {std::move(out)}, inputs, std::move(fn))[0];
}

}  // namespace lathe::autograd
