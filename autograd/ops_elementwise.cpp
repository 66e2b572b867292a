// Elementwise differentiable ops. Broadcast gradients are summed back to each
// input's shape with kernels::sum_to_shape.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "autograd/ops_util.h"

namespace lathe::autograd {

using namespace detail;
using kernels::BinaryOp;
using kernels::UnaryOp;

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(BinaryOp::add, a, b);
  Shape sa = a.shape(), sb = b.shape();
  return record("add", y, {a, b}, [sa, sb](const Grads& g, const Needs& need) -> Grads {
    return {need[0] ? kernels::sum_to_shape(g[0], sa) : Tensor(), need[1] ? kernels::sum_to_shape(g[0], sb) : Tensor()};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(BinaryOp::sub, a, b);
  Shape sa = a.shape(), sb = b.shape();
  return record("sub", y, {a, b}, [sa, sb](const Grads& g, const Needs& need) -> Grads {
    return {need[0] ? kernels::sum_to_shape(g[0], sa) : Tensor(),
            need[1] ? kernels::sum_to_shape(kneg(g[0]), sb) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(BinaryOp::mul, a, b);
  Tensor as = saved(a), bs = saved(b);
  return record("mul", y, {a, b}, [as, bs](const Grads& g, const Needs& need) -> Grads {
    return {need[0] ? kernels::sum_to_shape(kmul(g[0], bs), as.shape()) : Tensor(),
            need[1] ? kernels::sum_to_shape(kmul(g[0], as), bs.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(BinaryOp::div, a, b);
  Tensor bs = saved(b), ys = saved(y);
  Shape sa = a.shape();
  return record("div", y, {a, b}, [bs, ys, sa](const Grads& g, const Needs& need) -> Grads {
    Tensor ga, gb;
    Tensor gdb = kdiv(g[0], bs);  // g / b
    if (need[0]) ga = kernels::sum_to_shape(gdb, sa);
    // d(a/b)/db = -a/b^2 = -y/b
    if (need[1]) gb = kernels::sum_to_shape(kneg(kmul(gdb, ys)), bs.shape());
    return {ga, gb};
  });
}

Tensor affine(const Tensor& x, double scale, double shift) {
  Tensor y = kernels::affine(x, scale, shift);
  return record("affine", y, {x}, [scale](const Grads& g, const Needs&) -> Grads {
    return {kernels::affine(g[0], scale, 0.0)};
  });
}

Tensor add(const Tensor& x, double s) { return affine(x, 1.0, s); }
Tensor mul(const Tensor& x, double s) { return affine(x, s, 0.0); }

Tensor unary(UnaryOp op, const Tensor& x) {
  Tensor y = kernels::unary(op, x);
  Tensor xs = saved(x), ys = saved(y);
  return record(kernels::unary_name(op), y, {x}, [op, xs, ys](const Grads& g, const Needs&) -> Grads {
    switch (op) {
      case UnaryOp::neg:
        return {kneg(g[0])};
      case UnaryOp::sign:
        return {Tensor()};  // zero almost everywhere
      default:
        return {kernels::unary_backward(op, xs, ys, g[0])};
    }
  });
}

Tensor neg(const Tensor& x) { return autograd::unary(UnaryOp::neg, x); }
Tensor exp(const Tensor& x) { return autograd::unary(UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return autograd::unary(UnaryOp::log, x); }
Tensor sqrt(const Tensor& x) { return autograd::unary(UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return autograd::unary(UnaryOp::rsqrt, x); }
Tensor tanh(const Tensor& x) { return autograd::unary(UnaryOp::tanh, x); }
Tensor sigmoid(const Tensor& x) { return autograd::unary(UnaryOp::sigmoid, x); }
Tensor relu(const Tensor& x) { return autograd::unary(UnaryOp::relu, x); }
Tensor gelu(const Tensor& x, bool tanh_approx) {
  return autograd::unary(tanh_approx ? UnaryOp::gelu_tanh : UnaryOp::gelu_erf, x);
}
Tensor silu(const Tensor& x) { return autograd::unary(UnaryOp::silu, x); }

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  Tensor y = kernels::swiglu(gate, up);
  Tensor gs = saved(gate), us = saved(up);
  return record("swiglu", y, {gate, up}, [gs, us](const Grads& g, const Needs& need) -> Grads {
    kernels::SwigluGrads r = kernels::swiglu_backward(g[0], gs, us);
    return {need[0] ? r.dgate : Tensor(), need[1] ? r.dup : Tensor()};
  });
}
Tensor abs(const Tensor& x) { return autograd::unary(UnaryOp::abs, x); }
Tensor square(const Tensor& x) { return autograd::unary(UnaryOp::square, x); }
Tensor reciprocal(const Tensor& x) { return autograd::unary(UnaryOp::reciprocal, x); }

Tensor pow(const Tensor& x, double p) {
  Tensor y = kernels::pow_scalar(x, p);
  Tensor xs = saved(x);
  return record("pow", y, {x}, [xs, p](const Grads& g, const Needs&) -> Grads {
    // d x^p / dx = p x^(p-1)
    return {kmul(g[0], kernels::affine(kernels::pow_scalar(xs, p - 1.0), p, 0.0))};
  });
}

// Shared by maximum/minimum: `first_op` is gt (maximum) or lt (minimum).
static Tensor extremum(const char* name, BinaryOp op, BinaryOp first_op, const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(op, a, b);
  Tensor as = saved(a), bs = saved(b);
  return record(name, y, {a, b}, [as, bs, first_op](const Grads& g, const Needs& need) -> Grads {
    DType dt = g[0].dtype();
    // weight of a: 1 where a wins, 1/2 on ties, 0 where b wins
    Tensor wa = kernels::affine(kernels::binary(BinaryOp::eq, as, bs).to(dt), 0.5, 0.0);
    wa = kadd(wa, kernels::binary(first_op, as, bs).to(dt));
    Tensor ga_full = kmul(g[0], wa);
    Tensor ga, gb;
    if (need[0]) ga = kernels::sum_to_shape(ga_full, as.shape());
    if (need[1]) gb = kernels::sum_to_shape(ksub(g[0], ga_full), bs.shape());
    return {ga, gb};
  });
}

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum("maximum", BinaryOp::maximum, BinaryOp::gt, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum("minimum", BinaryOp::minimum, BinaryOp::lt, a, b); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Tensor y = kernels::where(cond, a, b);
  Tensor cs = saved(cond);
  Shape sa = a.shape(), sb = b.shape();
  return record("where", y, {Tensor(), a, b}, [cs, sa, sb](const Grads& g, const Needs& need) -> Grads {
    Tensor zero = scalar_like(0.0, g[0]);
    Tensor ga, gb;
    if (need[1]) ga = kernels::sum_to_shape(kernels::where(cs, g[0], zero), sa);
    if (need[2]) gb = kernels::sum_to_shape(kernels::where(cs, zero, g[0]), sb);
    return {Tensor(), ga, gb};
  });
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  Tensor y = kernels::clamp(x, lo, hi);
  Tensor xs = saved(x);
  return record("clamp", y, {x}, [xs, lo, hi](const Grads& g, const Needs&) -> Grads {
    Tensor zero = scalar_like(0.0, g[0]);
    Tensor below = kernels::binary(BinaryOp::lt, xs, scalar_like(lo, xs));
    Tensor above = kernels::binary(BinaryOp::gt, xs, scalar_like(hi, xs));
    return {kernels::where(below, zero, kernels::where(above, zero, g[0]))};
  });
}

}  // namespace lathe::autograd
