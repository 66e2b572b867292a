#include "optim/natural_galore.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace lathe::optim {

using kernels::BinaryOp;
using kernels::matmul;

Tensor natural_gradient(const Tensor& r, const Tensor& history, int64_t step, double lambda) {
  LATHE_CHECK(step >= 1) << "natural_gradient: step must be >= 1, got " << step;
  LATHE_CHECK(lambda > 0) << "natural_gradient: lambda must be > 0, got " << lambda;
  const int64_t s = history.size(0), k = history.size(1);
  LATHE_CHECK(r.numel() == k) << "natural_gradient: the projected gradient has " << r.numel()
                              << " elements, the history rows " << k;
  const Tensor g = r.to(history.dtype()).contiguous().reshape({1, k});
  history.narrow(0, (step - 1) % s, 1).copy_(g);
  // Rows stored so far; their order does not matter (H H^T sums over them).
  const Tensor h = history.narrow(0, 0, std::min(step, s));                          // c x k
  const Tensor a = kernels::affine(matmul(h, h, false, /*trans_b=*/true), 1.0 / lambda, 0.0);  // H^T H / lambda
  const Tensor y = matmul(h, g, false, /*trans_b=*/true);                           // c x 1: H^T g
  const kernels::SvdOut e = kernels::svd(a);  // a is symmetric PSD: a = U diag(sigma) U^T
  const Tensor w = kernels::binary(BinaryOp::div, matmul(e.u, y, /*trans_a=*/true),
                                   kernels::affine(e.s, 1.0, 1.0).reshape({e.s.numel(), 1}));  // diag(1/(1+sigma)) U^T y
  const Tensor z = matmul(e.u, w);                                                  // c x 1: S^{-1} H^T g
  // g~ = g / lambda - H z / lambda^2
  Tensor out = kernels::affine(g, 1.0 / lambda, 0.0);
  kernels::add_(out, matmul(z, h, /*trans_a=*/true), -1.0 / (lambda * lambda));
  return out.reshape(r.shape());
}

}  // namespace lathe::optim
