// matmul and linear. With A = op(a), B = op(b), Y = A B:  dA = dY B^T, dB = A^T dY,
// written as matmuls with transpose flags so no transposed copy is made; batch
// broadcasting is undone with sum_to_shape.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "autograd/ops_util.h"

namespace lathe::autograd {

using namespace detail;

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor y = kernels::matmul(a, b, trans_a, trans_b);
  Tensor as = saved(a), bs = saved(b);
  return record("matmul", y, {a, b}, [as, bs, trans_a, trans_b](const Grads& g, const Needs& need) -> Grads {
    const Tensor& gy = g[0];
    Tensor ga, gb;
    if (need[0]) {
      // !ta: dA = gy op(b)^T ;  ta: da = dA^T = op(b) gy^T
      ga = trans_a ? kernels::matmul(bs, gy, trans_b, true) : kernels::matmul(gy, bs, false, !trans_b);
      ga = kernels::sum_to_shape(ga, as.shape());
    }
    if (need[1]) {
      if (bs.dim() == 2 && as.dim() > 2 && !trans_a) {
        // A weight shared by every batch: fold the batch into the rows instead of
        // materializing one [K, N] product per batch and summing them.
        int64_t k = as.size(-1), n = gy.size(-1);
        Tensor a2 = as.reshape({-1, k}), g2 = gy.reshape({-1, n});
        gb = trans_b ? kernels::matmul(g2, a2, true, false) : kernels::matmul(a2, g2, true, false);
      } else {
        // !tb: dB = op(a)^T gy ;  tb: db = dB^T = gy^T op(a)
        gb = trans_b ? kernels::matmul(gy, as, true, trans_a) : kernels::matmul(as, gy, !trans_a, false);
        gb = kernels::sum_to_shape(gb, bs.shape());
      }
    }
    return {ga, gb};
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, kernels::Activation act) {
  LATHE_CHECK(w.dim() == 2) << "linear: weight must be [out, in], got " << w.shape_str();
  LATHE_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << "linear: input " << x.shape_str() << " does not match weight " << w.shape_str() << " (in = " << w.size(1)
      << ")";
  if (b.defined()) {
    LATHE_CHECK(b.dim() == 1 && b.size(0) == w.size(0))
        << "linear: bias " << b.shape_str() << " does not match weight " << w.shape_str();
  }
  const bool has_act = act != kernels::Activation::none;
  // The pre-activation is only worth keeping when a backward will run.
  const bool recording = any_requires_grad({x, w, b});
  Tensor pre;
  Tensor y = kernels::linear(x, w, b, act, recording && has_act ? &pre : nullptr);
  Tensor xs = saved(x), ws = saved(w), ps = saved(pre);
  const bool has_bias = b.defined();
  return record("linear", y, {x, w, b}, [xs, ws, ps, act, has_bias](const Grads& g, const Needs& need) -> Grads {
    kernels::LinearGrads r =
        kernels::linear_backward(g[0], xs, ws, ps, act, need[0], need[1], has_bias && need[2]);
    return {r.dx, r.dw, r.db};
  });
}

}  // namespace lathe::autograd
