#include "peft/lora_op.h"

#include "autograd/function.h"
#include "core/error.h"
#include "kernels/ops.h"

namespace lathe::peft {

namespace ag = lathe::autograd;
namespace k = lathe::kernels;

Tensor lora_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& xa, const Tensor& a,
                   const Tensor& b, const Tensor& rmat, double scale) {
  LATHE_CHECK(x.defined() && w.defined() && a.defined() && b.defined()) << "lora_linear: undefined operand";
  LATHE_CHECK(x.dim() >= 2 && w.dim() == 2 && a.dim() == 2 && b.dim() == 2)
      << "lora_linear: x " << x.shape_str() << " (>= 2 dims), w " << w.shape_str() << ", A " << a.shape_str()
      << ", B " << b.shape_str() << " (2-D)";
  const int64_t in = w.size(1), out = w.size(0), r = a.size(0);
  LATHE_CHECK(x.size(-1) == in && a.size(1) == in && b.size(0) == out && b.size(1) == r)
      << "lora_linear: shapes do not chain: x " << x.shape_str() << ", W " << w.shape_str() << ", A "
      << a.shape_str() << ", B " << b.shape_str();
  LATHE_CHECK(!xa.defined() || xa.shape() == x.shape())
      << "lora_linear: adapter input " << xa.shape_str() << " differs from x " << x.shape_str();
  LATHE_CHECK(!rmat.defined() || (rmat.dim() == 2 && rmat.size(0) == r && rmat.size(1) == r))
      << "lora_linear: middle factor " << rmat.shape_str() << " must be [" << r << ", " << r << "]";
  for (const Tensor* t : {&w, &bias, &xa, &a, &b, &rmat})
    LATHE_CHECK(!t->defined() || (t->dtype() == x.dtype() && t->device() == x.device()))
        << "lora_linear: every operand must be " << dtype_name(x.dtype()) << " on " << x.device().str() << ", got "
        << t->shape_str() << " " << dtype_name(t->dtype()) << " on " << t->device().str();

  const Tensor& xin = xa.defined() ? xa : x;
  Tensor y;
  if (bias.defined()) {
    // The bias is the GEMM's starting C: one pass writing it replaces BLAS clearing C
    // (beta = 0) and a bias add over y afterwards.
    Shape ys = x.shape();
    ys.back() = out;
    y = Tensor::empty(ys, x.dtype(), x.device());
    y.copy_(bias.expand(ys));
    k::matmul_acc_(y, x, w, false, true);
  } else {
    y = k::linear(x, w, Tensor());  // no bias: x W^T lands in y itself, no temporary
  }
  const Tensor h1 = k::matmul(xin, a, false, true);                 // [..., r]
  const Tensor h = rmat.defined() ? k::matmul(h1, rmat, false, true) : h1;
  k::matmul_acc_(y, h, b, false, true, scale);                      // y += s h B^T

  const bool adapter_on_x = !xa.defined();
  const Tensor xs = ag::saved(x), ws = ag::saved(w), xas = ag::saved(xa), as = ag::saved(a), bs = ag::saved(b),
               rs = ag::saved(rmat), h1s = h1, hs = h;
  return ag::record(
      "lora_linear", y, {x, w, bias, xa, a, b, rmat},
      [=](const std::vector<Tensor>& g, const std::vector<bool>& need) {
        const Tensor& gy = g[0];
        const bool need_x = need[0], need_w = need[1], need_bias = need[2], need_xa = need[3], need_a = need[4],
                   need_b = need[5], need_r = need[6];
        const Tensor& xi = adapter_on_x ? xs : xas;
        // The weight gradients fold the batch into the rows: one product each.
        auto rows = [](const Tensor& t) { return t.reshape({-1, t.size(-1)}); };
        std::vector<Tensor> grads(7);
        Tensor gh1;  // d loss / d h1 = s gy B [R]
        const bool need_gh1 = need_a || need_xa || (adapter_on_x && need_x);
        if (need_gh1 || need_r) {
          Tensor gh = k::matmul(gy, bs);  // [..., r]
          k::scale_(gh, scale);
          if (need_r) grads[6] = k::matmul(rows(gh), rows(h1s), true, false);
          if (need_gh1) gh1 = rs.defined() ? k::matmul(gh, rs) : gh;
        }
        if (need_x) {
          grads[0] = k::matmul(gy, ws);                                   // dY W
          if (adapter_on_x) k::matmul_acc_(grads[0], gh1, as);            // += (s dY B [R]) A, same buffer
        }
        if (need_xa) grads[3] = k::matmul(gh1, as);
        if (need_a) grads[4] = k::matmul(rows(gh1), rows(xi), true, false);  // [r, in]
        if (need_b) {
          grads[5] = k::matmul(rows(gy), rows(hs), true, false);           // [out, r]
          k::scale_(grads[5], scale);
        }
        if (need_w) grads[1] = k::matmul(rows(gy), rows(xs), true, false);
        if (need_bias) grads[2] = k::sum_to_shape(gy, {out});
        return grads;
      });
}

}  // namespace lathe::peft
