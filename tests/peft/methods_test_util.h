// Helpers shared by the tests of the LoRA family's methods (LoRA-SB, NOLA, SoRA).
#pragma once

#include <cmath>
#include <memory>
#include <vector>

#include "models/linear.h"
#include "peft_test_util.h"

namespace lathe::test {

inline std::shared_ptr<models::Linear> method_linear(int64_t in, int64_t out, bool bias, uint64_t seed) {
  auto l = std::make_shared<models::Linear>(in, out, bias);
  randomize(l->weight(), seed, 0.5);
  if (bias) randomize(l->bias(), seed + 1, 0.5);
  return l;
}

// A Householder reflection H = I - 2 v v^T / |v|^2 [n, n] (orthogonal) from a seed, f64.
inline std::vector<double> householder(int64_t n, uint64_t seed) {
  Generator g(seed);
  std::vector<double> v(static_cast<size_t>(n));
  double nn = 0;
  for (auto& x : v) {
    x = g.normal();
    nn += x * x;
  }
  std::vector<double> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      h[static_cast<size_t>(i * n + j)] = (i == j ? 1.0 : 0.0) - 2 * v[static_cast<size_t>(i)] * v[static_cast<size_t>(j)] / nn;
  return h;
}

// M = P[:, :k] diag(s) Q[:, :k]^T [m, n] with P, Q Householder matrices: a matrix whose SVD is
// known. `keep` < s.size() gives the best rank-keep approximation (Eckart-Young) instead.
inline Tensor planted(int64_t m, int64_t n, const std::vector<double>& s, size_t keep, uint64_t seed) {
  const auto P = householder(m, seed), Q = householder(n, seed + 101);
  std::vector<double> out(static_cast<size_t>(m * n), 0.0);
  for (size_t k = 0; k < keep; ++k)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        out[static_cast<size_t>(i * n + j)] +=
            P[static_cast<size_t>(i * m) + k] * s[k] * Q[static_cast<size_t>(j * n) + k];
  return Tensor::from_vector<double>(out, {m, n});
}

// max |X^T X - I| over the columns of X [m, k].
inline double orthonormality_error(const Tensor& X) {
  const std::vector<double> x = X.to(DType::f64).contiguous().to_vector<double>();
  const int64_t m = X.size(0), k = X.size(1);
  double e = 0;
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b) {
      double d = 0;
      for (int64_t i = 0; i < m; ++i) d += x[static_cast<size_t>(i * k + a)] * x[static_cast<size_t>(i * k + b)];
      e = std::max(e, std::abs(d - (a == b ? 1.0 : 0.0)));
    }
  return e;
}

}  // namespace lathe::test
