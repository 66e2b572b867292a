// Elementwise ops: checks, broadcasting and output allocation; the math is in the
// device's Backend (kernels/cpu/elementwise.cpp on the CPU).
#include <sstream>

#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

namespace {

std::string desc(const Tensor& t) {
  std::ostringstream os;
  os << dtype_name(t.dtype()) << " " << t.shape_str() << " on " << t.device().str();
  return os.str();
}

void check_defined(const char* op, const char* name, const Tensor& t) {
  LATHE_CHECK(t.defined()) << op << ": " << name << " is an undefined tensor";
}

void check_floating(const std::string& op, const Tensor& t) {
  LATHE_CHECK(is_floating(t.dtype())) << op << ": needs a floating dtype, got " << desc(t);
}

// Same dtype and device (no implicit promotion or transfer).
void check_pair(const std::string& op, const char* na, const Tensor& a, const char* nb, const Tensor& b) {
  LATHE_CHECK(a.dtype() == b.dtype()) << op << ": dtype mismatch: " << na << " is " << desc(a) << ", " << nb
                                      << " is " << desc(b);
  LATHE_CHECK(a.device() == b.device()) << op << ": device mismatch: " << na << " is " << desc(a) << ", " << nb
                                        << " is " << desc(b);
}

std::string named(const char* op, const char* which) { return std::string(op) + "(" + which + ")"; }

Tensor unary_like(const std::string& op, const Tensor& x) {
  check_floating(op, x);
  return Tensor::empty(x.shape(), x.dtype(), x.device());
}

}  // namespace

const char* unary_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::rsqrt: return "rsqrt";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::relu: return "relu";
    case UnaryOp::gelu_tanh: return "gelu_tanh";
    case UnaryOp::gelu_erf: return "gelu_erf";
    case UnaryOp::silu: return "silu";
    case UnaryOp::abs: return "abs";
    case UnaryOp::sign: return "sign";
    case UnaryOp::square: return "square";
    case UnaryOp::reciprocal: return "reciprocal";
    case UnaryOp::sin: return "sin";
    case UnaryOp::cos: return "cos";
  }
  return "unknown_unary";
}

const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::minimum: return "minimum";
    case BinaryOp::pow: return "pow";
    case BinaryOp::eq: return "eq";
    case BinaryOp::ne: return "ne";
    case BinaryOp::lt: return "lt";
    case BinaryOp::le: return "le";
    case BinaryOp::gt: return "gt";
    case BinaryOp::ge: return "ge";
  }
  return "unknown_binary";
}

Tensor unary(UnaryOp op, const Tensor& x) {
  const std::string name = named("unary", unary_name(op));
  check_defined(name.c_str(), "x", x);
  Tensor out = unary_like(name, x);
  backend(x.device()).unary(op, x, out);
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy) {
  const std::string name = named("unary_backward", unary_name(op));
  check_defined(name.c_str(), "gy", gy);
  check_floating(name, gy);
  // Rules that can use the output; the rest need x (neg and sign need neither).
  bool y_rule = op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::tanh ||
                op == UnaryOp::sigmoid || op == UnaryOp::reciprocal || op == UnaryOp::relu;
  bool no_input = op == UnaryOp::neg || op == UnaryOp::sign;
  LATHE_CHECK(no_input || x.defined() || (y_rule && y.defined()))
      << name << ": needs the input x" << (y_rule ? " or the output y" : "") << " (gy " << desc(gy) << ")";
  for (const auto& [n, t] : {std::pair<const char*, const Tensor*>{"x", &x}, {"y", &y}}) {
    if (!t->defined()) continue;
    check_pair(name, n, *t, "gy", gy);
    LATHE_CHECK(t->shape() == gy.shape())
        << name << ": shape mismatch: " << n << " is " << t->shape_str() << ", gy is " << gy.shape_str();
  }
  Tensor out = Tensor::empty(gy.shape(), gy.dtype(), gy.device());
  backend(gy.device()).unary_backward(op, x, y, gy, out);
  return out;
}

Tensor pow_scalar(const Tensor& x, double exponent) {
  check_defined("pow_scalar", "x", x);
  Tensor out = unary_like("pow_scalar", x);
  backend(x.device()).pow_scalar(x, exponent, out);
  return out;
}

Tensor affine(const Tensor& x, double scale, double shift) {
  check_defined("affine", "x", x);
  Tensor out = unary_like("affine", x);
  backend(x.device()).affine(x, scale, shift, out);
  return out;
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  check_defined("clamp", "x", x);
  LATHE_CHECK(!(lo > hi)) << "clamp: lo " << lo << " > hi " << hi << " (x " << desc(x) << ")";
  Tensor out = unary_like("clamp", x);
  backend(x.device()).clamp(x, lo, hi, out);
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const std::string name = named("binary", binary_name(op));
  check_defined(name.c_str(), "a", a);
  check_defined(name.c_str(), "b", b);
  check_pair(name, "a", a, "b", b);
  if (op == BinaryOp::div || op == BinaryOp::pow) check_floating(name, a);
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name.c_str());
  bool cmp = op == BinaryOp::eq || op == BinaryOp::ne || op == BinaryOp::lt || op == BinaryOp::le ||
             op == BinaryOp::gt || op == BinaryOp::ge;
  Tensor out = Tensor::empty(shape, cmp ? DType::u8 : a.dtype(), a.device());
  backend(a.device()).binary(op, a.expand(shape), b.expand(shape), out);
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined("where", "cond", cond);
  check_defined("where", "a", a);
  check_defined("where", "b", b);
  check_pair("where", "a", a, "b", b);
  LATHE_CHECK(cond.device() == a.device())
      << "where: device mismatch: cond is " << desc(cond) << ", a is " << desc(a);
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  backend(a.device()).where(cond.expand(shape), a.expand(shape), b.expand(shape), out);
  return out;
}

namespace {
void check_swiglu_operand(const char* op, const char* name, const Tensor& t, const Tensor& gate) {
  check_defined(op, name, t);
  check_pair(op, "gate", gate, name, t);
  LATHE_CHECK(t.shape() == gate.shape())
      << op << ": shape mismatch: gate is " << gate.shape_str() << ", " << name << " is " << t.shape_str()
      << " (the gate and up projections must have the same width)";
}
}  // namespace

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_defined("swiglu", "gate", gate);
  check_floating("swiglu", gate);
  check_swiglu_operand("swiglu", "up", up, gate);
  Tensor out = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  if (out.numel() > 0) backend(gate.device()).swiglu(gate, up, out);
  return out;
}

SwigluGrads swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up) {
  check_defined("swiglu_backward", "gate", gate);
  check_floating("swiglu_backward", gate);
  check_swiglu_operand("swiglu_backward", "up", up, gate);
  check_swiglu_operand("swiglu_backward", "gy", gy, gate);
  SwigluGrads g{Tensor::empty(gate.shape(), gate.dtype(), gate.device()),
                Tensor::empty(gate.shape(), gate.dtype(), gate.device())};
  if (gate.numel() > 0) backend(gate.device()).swiglu_backward(gy, gate, up, g.dgate, g.dup);
  return g;
}

void add_(const Tensor& y, const Tensor& x, double alpha) {
  check_defined("add_", "y", y);
  check_defined("add_", "x", x);
  check_pair("add_", "y", y, "x", x);
  for (int64_t d = 0; d < y.dim(); ++d)
    LATHE_CHECK(y.size(d) <= 1 || y.stride(d) != 0)
        << "add_: y " << desc(y) << " is a broadcast view (stride 0 in dim " << d << "); cannot write in place";
  Shape shape = broadcast_shapes(y.shape(), x.shape(), "add_");
  LATHE_CHECK(shape == y.shape()) << "add_: x " << x.shape_str() << " does not broadcast to y " << y.shape_str();
  Tensor xs = x;
  // a different view of y's own storage would be read while y is written
  if (x.storage() == y.storage() && !(x.offset() == y.offset() && x.strides() == y.strides() && x.shape() == y.shape()))
    xs = x.clone();
  backend(y.device()).add_(y, xs.expand(y.shape()), alpha);
}

void scale_(const Tensor& y, double s) {
  check_defined("scale_", "y", y);
  check_floating("scale_", y);
  for (int64_t d = 0; d < y.dim(); ++d)
    LATHE_CHECK(y.size(d) <= 1 || y.stride(d) != 0)
        << "scale_: y " << desc(y) << " is a broadcast view (stride 0 in dim " << d << "); cannot write in place";
  backend(y.device()).scale_(y, s);
}

}  // namespace lathe::kernels
