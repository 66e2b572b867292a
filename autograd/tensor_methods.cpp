// The autograd members of lathe::Tensor (declared in core/tensor.h).
#include "autograd/engine.h"
#include "autograd/meta.h"
#include "core/tensor.h"

namespace lathe {

Tensor Tensor::grad() const {
  autograd::AutogradMeta* m = autograd::meta_if(*this);
  return m ? m->grad : Tensor();
}

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined()) {
    LATHE_CHECK(g.shape() == shape()) << "set_grad: gradient of shape " << g.shape_str() << " for a tensor of shape "
                                      << shape_str();
    LATHE_CHECK(g.dtype() == dtype()) << "set_grad: gradient of dtype " << dtype_name(g.dtype())
                                      << " for a tensor of dtype " << dtype_name(dtype());
    LATHE_CHECK(g.device() == device()) << "set_grad: gradient on " << g.device().str() << " for a tensor on "
                                        << device().str();
  }
  autograd::meta_of(*this).grad = g;
}

void Tensor::backward(const Tensor& grad_output) const { autograd::backward(*this, grad_output, false); }

bool Tensor::is_leaf() const { return autograd::grad_fn_of(*this) == nullptr; }

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage();
  impl->shape = shape();
  impl->strides = strides();
  impl->offset = offset();
  impl->dtype = dtype();
  return Tensor(std::move(impl));
}

}  // namespace lathe
