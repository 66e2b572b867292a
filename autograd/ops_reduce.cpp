// Reductions and their gradients (broadcast the upstream gradient back over the
// reduced axes).
#include "autograd/function.h"
#include "autograd/ops.h"
#include "autograd/ops_util.h"

namespace lathe::autograd {

using namespace detail;
using kernels::BinaryOp;
using kernels::ReduceOp;

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  std::vector<int64_t> ax = norm_axes(axes, x.dim(), "sum");
  Tensor y = kernels::reduce(ReduceOp::sum, x, ax, keepdim);
  Shape xs = x.shape(), ks = keepdim_shape(x.shape(), ax);
  return record("sum", y, {x}, [xs, ks](const Grads& g, const Needs&) -> Grads {
    return {g[0].reshape(ks).expand(xs)};
  });
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  std::vector<int64_t> ax = norm_axes(axes, x.dim(), "mean");
  Tensor y = kernels::reduce(ReduceOp::mean, x, ax, keepdim);
  Shape xs = x.shape(), ks = keepdim_shape(x.shape(), ax);
  int64_t n = reduced_count(x.shape(), ax);
  return record("mean", y, {x}, [xs, ks, n](const Grads& g, const Needs&) -> Grads {
    return {kernels::affine(g[0].reshape(ks), 1.0 / static_cast<double>(n), 0.0).expand(xs)};
  });
}

Tensor max(const Tensor& x, int64_t axis, bool keepdim) {
  std::vector<int64_t> ax = norm_axes({axis}, x.dim(), "max");
  Tensor y = kernels::reduce(ReduceOp::max, x, ax, keepdim);
  if (!any_requires_grad({x})) return y;
  Tensor idx = kernels::reduce(ReduceOp::argmax, x, ax, /*keepdim=*/true);
  Shape xs = x.shape(), ks = keepdim_shape(x.shape(), ax);
  int64_t a = ax[0];
  return record("max", y, {x}, [xs, ks, idx, a](const Grads& g, const Needs&) -> Grads {
    Tensor z = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    return {kernels::scatter_add(z, a, idx, g[0].reshape(ks))};
  });
}

Tensor var(const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, bool keepdim) {
  std::vector<int64_t> ax = norm_axes(axes, x.dim(), "var");
  Tensor y = kernels::reduce(ReduceOp::var, x, ax, keepdim, correction);
  Tensor xsv = saved(x);
  Shape ks = keepdim_shape(x.shape(), ax);
  int64_t n = reduced_count(x.shape(), ax);
  return record("var", y, {x}, [xsv, ax, ks, n, correction](const Grads& g, const Needs&) -> Grads {
    // d var / dx_i = 2 (x_i - mean) / (n - correction)
    Tensor centered = ksub(xsv, kernels::reduce(ReduceOp::mean, xsv, ax, true));
    Tensor scale = kernels::affine(g[0].reshape(ks), 2.0 / static_cast<double>(n - correction), 0.0);
    return {kmul(centered, scale)};
  });
}

Tensor norm(const Tensor& x) {
  Tensor y = kernels::reduce(ReduceOp::norm, x, {}, false);
  Tensor xsv = saved(x), ys = saved(y);
  return record("norm", y, {x}, [xsv, ys](const Grads& g, const Needs&) -> Grads {
    // d ||x|| / dx = x / ||x||; at x = 0 take the zero subgradient.
    Tensor zero = scalar_like(0.0, ys);
    Tensor is_zero = kernels::binary(BinaryOp::eq, ys, zero);
    Tensor safe_y = kernels::where(is_zero, scalar_like(1.0, ys), ys);
    Tensor s = kernels::where(is_zero, zero, kdiv(g[0], safe_y));
    return {kmul(xsv, s)};
  });
}

Tensor sum_to_shape(const Tensor& x, const Shape& shape) {
  Tensor y = kernels::sum_to_shape(x, shape);
  Shape xs = x.shape();
  return record("sum_to_shape", y, {x}, [xs](const Grads& g, const Needs&) -> Grads { return {g[0].expand(xs)}; });
}

}  // namespace lathe::autograd
