// Views, copies and index ops. A view's gradient is the upstream gradient mapped back
// to the input's layout; pieces taken out of a tensor scatter their gradient into zeros.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "autograd/ops_util.h"

namespace lathe::autograd {

using namespace detail;

Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape xs = x.shape();
  return record("reshape", x.reshape(shape), {x}, [xs](const Grads& g, const Needs&) -> Grads {
    return {g[0].reshape(xs)};
  });
}

Tensor view(const Tensor& x, const Shape& shape) {
  Shape xs = x.shape();
  return record("view", x.view(shape), {x}, [xs](const Grads& g, const Needs&) -> Grads {
    return {g[0].reshape(xs)};
  });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  return record("transpose", x.transpose(d0, d1), {x}, [d0, d1](const Grads& g, const Needs&) -> Grads {
    return {g[0].transpose(d0, d1)};
  });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  Tensor y = x.permute(dims);
  std::vector<int64_t> inv(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) inv[static_cast<size_t>(x.wrap_dim(dims[i]))] = static_cast<int64_t>(i);
  return record("permute", y, {x}, [inv](const Grads& g, const Needs&) -> Grads { return {g[0].permute(inv)}; });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  Tensor y = x.narrow(dim, start, length);
  Shape xs = x.shape();
  return record("narrow", y, {x}, [xs, dim, start, length](const Grads& g, const Needs&) -> Grads {
    Tensor z = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    z.narrow(dim, start, length).copy_(g[0]);
    return {z};
  });
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  Tensor y = x.slice(dim, start, end, step);
  Shape xs = x.shape();
  return record("slice", y, {x}, [xs, dim, start, end, step](const Grads& g, const Needs&) -> Grads {
    Tensor z = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    z.slice(dim, start, end, step).copy_(g[0]);
    return {z};
  });
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  Tensor y = x.select(dim, index);
  Shape xs = x.shape();
  return record("select", y, {x}, [xs, dim, index](const Grads& g, const Needs&) -> Grads {
    Tensor z = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    z.select(dim, index).copy_(g[0]);
    return {z};
  });
}

Tensor expand(const Tensor& x, const Shape& shape) {
  Shape xs = x.shape();
  return record("expand", x.expand(shape), {x}, [xs](const Grads& g, const Needs&) -> Grads {
    return {kernels::sum_to_shape(g[0], xs)};
  });
}

static Tensor reshape_like(const char* name, const Tensor& x, Tensor y) {
  Shape xs = x.shape();
  return record(name, std::move(y), {x}, [xs](const Grads& g, const Needs&) -> Grads { return {g[0].reshape(xs)}; });
}

Tensor squeeze(const Tensor& x, int64_t dim) { return reshape_like("squeeze", x, x.squeeze(dim)); }
Tensor unsqueeze(const Tensor& x, int64_t dim) { return reshape_like("unsqueeze", x, x.unsqueeze(dim)); }
Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  return reshape_like("flatten", x, x.flatten(start_dim, end_dim));
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis) {
  std::vector<Tensor> pieces = kernels::split(x, sizes, axis);
  if (!any_requires_grad({x})) return pieces;
  int64_t a = x.wrap_dim(axis);
  std::vector<Shape> shapes;
  for (const Tensor& p : pieces) shapes.push_back(p.shape());
  return record_multi("split", pieces, {x}, [shapes, a](const Grads& g, const Needs&) -> Grads {
    // Pieces that got no gradient contribute zeros.
    const Tensor* any = nullptr;
    for (const Tensor& t : g)
      if (t.defined()) any = &t;
    std::vector<Tensor> parts;
    for (size_t i = 0; i < g.size(); ++i)
      parts.push_back(g[i].defined() ? g[i] : Tensor::zeros(shapes[i], any->dtype(), any->device()));
    return {kernels::concat(parts, a)};
  });
}

Tensor contiguous(const Tensor& x) {
  return record("contiguous", x.contiguous(), {x}, [](const Grads& g, const Needs&) -> Grads { return {g[0]}; });
}

Tensor cast(const Tensor& x, DType dt) {
  Tensor y = x.to(dt);
  if (!is_floating(dt)) return y;  // an integer result carries no gradient
  DType from = x.dtype();
  return record("cast", y, {x}, [from](const Grads& g, const Needs&) -> Grads { return {g[0].to(from)}; });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t axis) {
  Tensor y = kernels::concat(xs, axis);
  int64_t a = y.wrap_dim(axis);
  std::vector<int64_t> sizes;
  for (const Tensor& t : xs) sizes.push_back(t.size(a));
  return record("concat", y, xs, [sizes, a](const Grads& g, const Needs& need) -> Grads {
    Grads out(sizes.size());
    int64_t off = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (need[i]) out[i] = g[0].narrow(a, off, sizes[i]);
      off += sizes[i];
    }
    return out;
  });
}

Tensor stack(const std::vector<Tensor>& xs, int64_t axis) {
  Tensor y = kernels::stack(xs, axis);
  int64_t a = y.wrap_dim(axis);
  size_t n = xs.size();
  return record("stack", y, xs, [n, a](const Grads& g, const Needs& need) -> Grads {
    Grads out(n);
    for (size_t i = 0; i < n; ++i)
      if (need[i]) out[i] = g[0].select(a, static_cast<int64_t>(i));
    return out;
  });
}

Tensor gather(const Tensor& x, int64_t axis, const Tensor& index) {
  Tensor y = kernels::gather(x, axis, index);
  Tensor is = saved(index);
  Shape xs = x.shape();
  return record("gather", y, {x, index}, [is, xs, axis](const Grads& g, const Needs&) -> Grads {
    Tensor z = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    return {kernels::scatter_add(z, axis, is, g[0]), Tensor()};
  });
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index) {
  Tensor y = kernels::index_select(x, axis, index);
  Tensor is = saved(index);
  Shape xs = x.shape();
  return record("index_select", y, {x, index}, [is, xs, axis](const Grads& g, const Needs&) -> Grads {
    Tensor z = Tensor::zeros(xs, g[0].dtype(), g[0].device());
    return {kernels::index_add(z, axis, is, g[0]), Tensor()};
  });
}

}  // namespace lathe::autograd
