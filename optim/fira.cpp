#include "optim/fira.h"

#include "core/error.h"
#include "kernels/ops.h"

namespace lathe::optim {

using kernels::BinaryOp;
using kernels::ReduceOp;

Tensor fira_residual(const Tensor& g, const Tensor& r, const Tensor& n, const Projector& p, const Tensor& scaling_grad,
                     bool first, const FiraTerm& t) {
  LATHE_CHECK(!(p.left.defined() && p.right.defined()))
      << "Fira: needs a one-sided projection (the per-row/column scale of a 'full' projection is undefined)";
  // Residual: what the projection leaves out of G.
  Tensor res = g.clone();
  kernels::add_(res, p.project_back(r), t.paper ? -1.0 : -t.scale);
  // phi per row (right projection: R is m x r, rows shared with G) or per column (left).
  const int64_t axis = p.right.defined() ? 1 : 0;
  const Tensor nn = kernels::reduce(ReduceOp::norm, n, {axis}, /*keepdim=*/true);
  const Tensor rn = kernels::reduce(ReduceOp::norm, r, {axis}, /*keepdim=*/true);
  const Tensor phi = kernels::binary(BinaryOp::div, nn, kernels::affine(rn, 1.0, t.paper ? t.eps : 1e-8));
  Tensor s = kernels::binary(BinaryOp::mul, res, phi);
  // Fira's norm-growth limiter: ||S_t|| <= gamma ||S_{t-1}||; the state keeps ||S_t|| after
  // limiting (the reference stores ||S_orig|| / limiter, the same number).
  const Tensor norm = kernels::reduce(ReduceOp::norm, s, {});
  if (first) {
    scaling_grad.copy_(norm);
    return s;
  }
  const Tensor ratio = kernels::binary(BinaryOp::div, norm, kernels::affine(scaling_grad, 1.0, 1e-8));
  const Tensor gamma = Tensor::scalar(t.gamma, DType::f32, g.device());
  const Tensor limiter = kernels::affine(kernels::binary(BinaryOp::maximum, ratio, gamma), 1.0 / t.gamma, 0.0);
  s = kernels::binary(BinaryOp::div, s, limiter);
  scaling_grad.copy_(kernels::binary(BinaryOp::div, norm, limiter));
  return s;
}

}  // namespace lathe::optim
