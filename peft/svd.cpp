#include "peft/svd.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/ops.h"

namespace lathe::peft {

namespace {

// Orthonormalises the columns of Y [m, q] in place (modified Gram-Schmidt, twice for
// stability); a column that vanishes is replaced by a unit vector orthogonal to the others.
void orthonormalize(Tensor& Y) {
  const int64_t m = Y.size(0), q = Y.size(1);
  std::vector<double> y = Y.contiguous().to_vector<double>();
  auto col = [&](int64_t i, int64_t j) -> double& { return y[static_cast<size_t>(i * q + j)]; };
  for (int64_t j = 0; j < q; ++j) {
    double before = 0;
    for (int64_t i = 0; i < m; ++i) before += col(i, j) * col(i, j);
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t k = 0; k < j; ++k) {
        double d = 0;
        for (int64_t i = 0; i < m; ++i) d += col(i, k) * col(i, j);
        for (int64_t i = 0; i < m; ++i) col(i, j) -= d * col(i, k);
      }
    }
    double nrm = 0;
    for (int64_t i = 0; i < m; ++i) nrm += col(i, j) * col(i, j);
    nrm = std::sqrt(nrm);
    // What is left is rounding noise when the column lay in the span of the previous ones.
    if (nrm <= 1e-10 * std::sqrt(before) || nrm < 1e-300) {
      nrm = 0;
      // A rank-deficient input: any direction orthogonal to the previous columns will do.
      for (int64_t e = 0; e < m && nrm < 1e-6; ++e) {
        for (int64_t i = 0; i < m; ++i) col(i, j) = i == e ? 1.0 : 0.0;
        for (int pass = 0; pass < 2; ++pass)
          for (int64_t k = 0; k < j; ++k) {
            double d = 0;
            for (int64_t i = 0; i < m; ++i) d += col(i, k) * col(i, j);
            for (int64_t i = 0; i < m; ++i) col(i, j) -= d * col(i, k);
          }
        nrm = 0;
        for (int64_t i = 0; i < m; ++i) nrm += col(i, j) * col(i, j);
        nrm = std::sqrt(nrm);
      }
    }
    for (int64_t i = 0; i < m; ++i) col(i, j) /= nrm;
  }
  Y = Tensor::from_vector<double>(y, {m, q});
}

}  // namespace

TruncatedSvd truncated_svd(const Tensor& Min, int64_t r, int64_t niter, uint64_t seed, int64_t oversample) {
  LATHE_REQUIRE(Min.dim() == 2) << "truncated_svd: a matrix is needed (got " << Min.shape_str() << ")";
  const int64_t m = Min.size(0), n = Min.size(1);
  LATHE_REQUIRE(r > 0 && r <= std::min(m, n))
      << "truncated_svd: rank " << r << " must be in [1, " << std::min(m, n) << "] for a " << Min.shape_str()
      << " matrix";
  autograd::NoGradGuard no_grad;
  const Tensor M = Min.to(Device::cpu()).to(DType::f64).contiguous();
  const int64_t q = std::min(r + std::max<int64_t>(oversample, 0), std::min(m, n));

  // Range finder: Q spans (M M^T)^niter M Omega.
  Generator gen(seed);
  Tensor Y = kernels::matmul(M, Tensor::randn({n, q}, gen, DType::f64));
  orthonormalize(Y);
  for (int64_t it = 0; it < niter; ++it) {
    Tensor Z = kernels::matmul(M, Y, /*trans_a=*/true);  // [n, q]
    orthonormalize(Z);
    Y = kernels::matmul(M, Z);
    orthonormalize(Y);
  }
  // X = (Q^T M)^T = M^T Q [n, q]; one-sided Jacobi: X J has orthogonal columns u_j s_j, so
  // Q^T M = J diag(s) U~^T and M ~= (Q J) diag(s) U~^T.
  const Tensor X0 = kernels::matmul(M, Y, /*trans_a=*/true).contiguous();
  std::vector<double> x = X0.to_vector<double>();
  std::vector<double> J(static_cast<size_t>(q * q), 0.0);
  for (int64_t i = 0; i < q; ++i) J[static_cast<size_t>(i * q + i)] = 1.0;
  auto X = [&](int64_t i, int64_t j) -> double& { return x[static_cast<size_t>(i * q + j)]; };
  auto Jm = [&](int64_t i, int64_t j) -> double& { return J[static_cast<size_t>(i * q + j)]; };
  for (int sweep = 0; sweep < 60; ++sweep) {
    double off = 0;
    for (int64_t a = 0; a < q; ++a) {
      for (int64_t b = a + 1; b < q; ++b) {
        double alpha = 0, beta = 0, gamma = 0;
        for (int64_t i = 0; i < n; ++i) {
          alpha += X(i, a) * X(i, a);
          beta += X(i, b) * X(i, b);
          gamma += X(i, a) * X(i, b);
        }
        if (gamma == 0 || std::abs(gamma) <= 1e-15 * std::sqrt(alpha * beta)) continue;
        off = std::max(off, std::abs(gamma) / std::sqrt(alpha * beta));
        const double zeta = (beta - alpha) / (2 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1 + zeta * zeta));
        const double c = 1 / std::sqrt(1 + t * t), s = c * t;
        for (int64_t i = 0; i < n; ++i) {
          const double u = X(i, a), v = X(i, b);
          X(i, a) = c * u - s * v;
          X(i, b) = s * u + c * v;
        }
        for (int64_t i = 0; i < q; ++i) {
          const double u = Jm(i, a), v = Jm(i, b);
          Jm(i, a) = c * u - s * v;
          Jm(i, b) = s * u + c * v;
        }
      }
    }
    if (off < 1e-15) break;
  }
  std::vector<double> sv(static_cast<size_t>(q));
  for (int64_t j = 0; j < q; ++j) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += X(i, j) * X(i, j);
    sv[static_cast<size_t>(j)] = std::sqrt(s);
  }
  std::vector<int64_t> order(static_cast<size_t>(q));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sv[a] > sv[b]; });
  order.resize(static_cast<size_t>(r));

  std::vector<double> vv(static_cast<size_t>(n * r)), jj(static_cast<size_t>(q * r)), ss(static_cast<size_t>(r));
  for (int64_t k = 0; k < r; ++k) {
    const int64_t j = order[static_cast<size_t>(k)];
    const double s = sv[static_cast<size_t>(j)];
    ss[static_cast<size_t>(k)] = s;
    for (int64_t i = 0; i < n; ++i) vv[static_cast<size_t>(i * r + k)] = s > 0 ? X(i, j) / s : 0.0;
    for (int64_t i = 0; i < q; ++i) jj[static_cast<size_t>(i * r + k)] = Jm(i, j);
  }
  TruncatedSvd out;
  out.U = kernels::matmul(Y, Tensor::from_vector<double>(jj, {q, r})).contiguous();
  out.S = Tensor::from_vector<double>(ss, {r});
  Tensor V = Tensor::from_vector<double>(vv, {n, r});
  // A zero singular value leaves its V column zero: complete it to an orthonormal set.
  bool zero = false;
  for (double s : ss) zero = zero || s == 0;
  if (zero) orthonormalize(V);
  out.V = V;
  return out;
}

}  // namespace lathe::peft
