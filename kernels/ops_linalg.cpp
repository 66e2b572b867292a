// matmul: shape rules (trans flags, broadcast batch dims) and output allocation; the
// product itself is the Backend's (OpenBLAS on the CPU, kernels/cpu/matmul.cpp).
#include <algorithm>

#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

namespace {
// Checks a matmul's operands and gives the output shape and a and b expanded to the
// broadcast batch dims.
struct MatmulShapes {
  Shape as, bs, os;
};
MatmulShapes matmul_shapes(const char* op, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  LATHE_CHECK(a.defined() && b.defined()) << op << ": undefined input tensor";
  auto shapes = [&]() {
    return std::string("a ") + a.shape_str() + (trans_a ? " (transposed)" : "") + ", b " + b.shape_str() +
           (trans_b ? " (transposed)" : "");
  };
  LATHE_CHECK(a.dim() >= 2 && b.dim() >= 2) << op << ": inputs need at least 2 dims: " << shapes();
  LATHE_CHECK(a.dtype() == b.dtype()) << op << ": dtype mismatch: a is " << dtype_name(a.dtype()) << ", b is "
                                      << dtype_name(b.dtype()) << " (" << shapes() << ")";
  LATHE_CHECK(is_floating(a.dtype())) << op << ": needs a floating dtype, got " << dtype_name(a.dtype()) << " ("
                                      << shapes() << ")";
  LATHE_CHECK(a.device() == b.device()) << op << ": device mismatch: a on " << a.device().str() << ", b on "
                                        << b.device().str() << " (" << shapes() << ")";
  const int64_t M = trans_a ? a.size(-1) : a.size(-2);
  const int64_t Ka = trans_a ? a.size(-2) : a.size(-1);
  const int64_t Kb = trans_b ? b.size(-1) : b.size(-2);
  const int64_t N = trans_b ? b.size(-2) : b.size(-1);
  LATHE_CHECK(Ka == Kb) << op << ": inner dims differ (" << Ka << " vs " << Kb << "): " << shapes();
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch;
  try {
    batch = broadcast_shapes(ba, bb, op);
  } catch (const Error&) {
    LATHE_FAIL() << op << ": batch dims " << shape_str(ba) << " and " << shape_str(bb)
                 << " cannot be broadcast together: " << shapes();
  }
  MatmulShapes r{batch, batch, batch};
  r.as.insert(r.as.end(), a.shape().end() - 2, a.shape().end());
  r.bs.insert(r.bs.end(), b.shape().end() - 2, b.shape().end());
  r.os.push_back(M);
  r.os.push_back(N);
  return r;
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const MatmulShapes s = matmul_shapes("matmul", a, b, trans_a, trans_b);
  Tensor out = Tensor::empty(s.os, a.dtype(), a.device());
  backend(a.device()).matmul(a.expand(s.as), b.expand(s.bs), trans_a, trans_b, out);
  return out;
}

void matmul_acc_(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha) {
  const MatmulShapes s = matmul_shapes("matmul_acc_", a, b, trans_a, trans_b);
  LATHE_CHECK(out.defined() && out.shape() == s.os && out.dtype() == a.dtype() && out.device() == a.device())
      << "matmul_acc_: out must be " << shape_str(s.os) << " " << dtype_name(a.dtype()) << " on " << a.device().str()
      << " (a " << a.shape_str() << ", b " << b.shape_str() << "), got "
      << (out.defined() ? out.shape_str() + " " + dtype_name(out.dtype()) + " on " + out.device().str()
                        : std::string("undefined"));
  LATHE_CHECK(out.is_contiguous()) << "matmul_acc_: out " << out.shape_str() << " must be contiguous";
  if (out.numel() == 0) return;
  backend(a.device()).matmul_acc(a.expand(s.as), b.expand(s.bs), trans_a, trans_b, alpha, out);
}

}  // namespace lathe::kernels

// ---- fused linear --------------------------------------------------------------------------
namespace lathe::kernels {

const char* activation_name(Activation act) {
  switch (act) {
    case Activation::none: return "none";
    case Activation::gelu_tanh: return "gelu_tanh";
  }
  return "?";
}

namespace {
void check_linear_operands(const char* op, const Tensor& x, const Tensor& w, const Tensor& bias) {
  LATHE_CHECK(x.defined() && w.defined()) << op << ": undefined " << (x.defined() ? "weight" : "input");
  auto shapes = [&]() {
    return std::string("x ") + x.shape_str() + ", w " + w.shape_str() +
           (bias.defined() ? ", bias " + bias.shape_str() : std::string());
  };
  LATHE_CHECK(w.dim() == 2) << op << ": weight must be [out, in], got " << shapes();
  LATHE_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << op << ": input features (last dim of x) must equal the weight's in = " << w.size(1) << ": " << shapes();
  LATHE_CHECK(is_floating(x.dtype())) << op << ": needs a floating dtype, got " << dtype_name(x.dtype()) << " ("
                                      << shapes() << ")";
  LATHE_CHECK(w.dtype() == x.dtype()) << op << ": dtype mismatch: x is " << dtype_name(x.dtype()) << ", w is "
                                      << dtype_name(w.dtype()) << " (" << shapes() << ")";
  LATHE_CHECK(w.device() == x.device()) << op << ": device mismatch: x on " << x.device().str() << ", w on "
                                        << w.device().str() << " (" << shapes() << ")";
  if (bias.defined()) {
    LATHE_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0))
        << op << ": bias must be [out] = [" << w.size(0) << "]: " << shapes();
    LATHE_CHECK(bias.dtype() == x.dtype()) << op << ": dtype mismatch: x is " << dtype_name(x.dtype())
                                           << ", bias is " << dtype_name(bias.dtype()) << " (" << shapes() << ")";
    LATHE_CHECK(bias.device() == x.device()) << op << ": device mismatch: x on " << x.device().str()
                                             << ", bias on " << bias.device().str();
  }
}
}  // namespace

Tensor linear(const Tensor& x_in, const Tensor& w, const Tensor& bias, Activation act, Tensor* pre_activation_out) {
  check_linear_operands("linear", x_in, w, bias);
  const int64_t N = w.size(0);
  // A vector is a one-row matrix (as matmul would need it), viewed back at the end.
  const bool vec = x_in.dim() == 1;
  const Tensor x = vec ? x_in.unsqueeze(0) : x_in;
  Shape os = x.shape();
  os.back() = N;
  Tensor out = Tensor::empty(os, x.dtype(), x.device());
  const bool want_pre = pre_activation_out != nullptr && act != Activation::none;
  Tensor pre = want_pre ? Tensor::empty(os, x.dtype(), x.device()) : Tensor();
  if (out.numel() > 0) backend(x.device()).linear(x, w, bias, act, out, pre);
  if (want_pre) *pre_activation_out = vec ? pre.view({N}) : pre;
  return vec ? out.view({N}) : out;
}

LinearGrads linear_backward(const Tensor& dy, const Tensor& x_in, const Tensor& w, const Tensor& pre,
                            Activation act, bool need_dx, bool need_dw, bool need_db) {
  check_linear_operands("linear_backward", x_in, w, Tensor());
  Shape ys = x_in.shape();
  ys.back() = w.size(0);
  LATHE_CHECK(dy.defined() && dy.shape() == ys && dy.dtype() == x_in.dtype() && dy.device() == x_in.device())
      << "linear_backward: dy must be " << shape_str(ys) << " " << dtype_name(x_in.dtype()) << " on "
      << x_in.device().str() << ", got " << (dy.defined() ? dy.shape_str() + " " + dtype_name(dy.dtype()) + " on " +
                                                                dy.device().str()
                                                          : std::string("undefined"));
  Tensor g = dy;
  LinearGrads r;
  if (act == Activation::gelu_tanh) {
    LATHE_CHECK(pre.defined() && pre.shape() == dy.shape() && pre.dtype() == dy.dtype() && pre.device() == dy.device())
        << "linear_backward: gelu_tanh needs the pre-activation " << shape_str(ys) << " "
        << dtype_name(dy.dtype()) << ", got " << (pre.defined() ? pre.shape_str() + " " + dtype_name(pre.dtype()) : std::string("undefined"));
    // The activation's gradient and the bias gradient in one call (one pass on the CPU).
    g = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
    if (need_db) r.db = Tensor::empty({w.size(0)}, dy.dtype(), dy.device());
    if (g.numel() > 0) {
      backend(dy.device()).linear_act_backward(act, pre, dy, g, need_db ? r.db : Tensor());
    } else if (need_db) {
      r.db.zero_();
    }
  }
  // The same products (and so the same roundings) as autograd's matmul + add backward.
  const bool vec = x_in.dim() == 1;
  const Tensor x = vec ? x_in.unsqueeze(0) : x_in;
  const Tensor g2 = vec ? g.unsqueeze(0) : g;
  if (need_dx) {
    r.dx = matmul(g2, w, false, false);
    if (vec) r.dx = r.dx.view({x_in.size(0)});
  }
  if (need_dw) {
    // The batch folded into the rows: one [N, K] product, not one per batch entry.
    const int64_t k = x.size(-1), n = g2.size(-1);
    r.dw = matmul(g2.reshape({-1, n}), x.reshape({-1, k}), true, false);
  }
  if (need_db && !r.db.defined()) r.db = sum_to_shape(g, {w.size(0)});
  return r;
}

}  // namespace lathe::kernels

// ---- factorizations (GaLore's basis refresh) ------------------------------------------------
namespace lathe::kernels {

namespace {
void check_factor_input(const char* op, const Tensor& a) {
  LATHE_CHECK(a.defined()) << op << ": undefined input tensor";
  LATHE_CHECK(a.dim() == 2) << op << ": needs a 2-D matrix, got " << a.shape_str();
  LATHE_CHECK(a.dtype() == DType::f32 || a.dtype() == DType::f64)
      << op << ": needs f32 or f64 (cast first), got " << dtype_name(a.dtype()) << " " << a.shape_str();
}
}  // namespace

SvdOut svd(const Tensor& a) {
  check_factor_input("svd", a);
  const int64_t m = a.size(0), n = a.size(1), k = std::min(m, n);
  SvdOut out{Tensor::empty({m, k}, a.dtype(), a.device()), Tensor::empty({k}, a.dtype(), a.device()),
             Tensor::empty({k, n}, a.dtype(), a.device())};
  if (k == 0) return out;
  backend(a.device()).svd(a.contiguous(), out);
  return out;
}

Tensor qr_q(const Tensor& a) {
  check_factor_input("qr_q", a);
  LATHE_CHECK(a.size(0) >= a.size(1)) << "qr_q: needs at least as many rows as columns, got " << a.shape_str();
  Tensor q = Tensor::empty(a.shape(), a.dtype(), a.device());
  if (a.numel() == 0) return q;
  backend(a.device()).qr_q(a.contiguous(), q);
  return q;
}

}  // namespace lathe::kernels
