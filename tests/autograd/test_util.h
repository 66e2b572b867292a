// Helpers for the autograd tests.
#pragma once

#include <gtest/gtest.h>

#include "autograd/autograd.h"
#include "core/tensor.h"

namespace ag = lathe::autograd;

namespace lathe::test {

inline Tensor randn64(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return Tensor::randn(s, g, DType::f64);
}

// Uniform in [lo, hi) (f64).
inline Tensor uniform64(const Shape& s, double lo, double hi, uint64_t seed) {
  Generator g(seed);
  Tensor u = Tensor::rand(s, g, DType::f64);
  std::vector<double> v = u.to_vector<double>();
  for (double& x : v) x = lo + (hi - lo) * x;
  return Tensor::from_vector(v, s);
}

// Values in (0.2, 1.2) with a random sign: away from the kinks of relu/abs at 0.
inline Tensor away_from_zero64(const Shape& s, uint64_t seed) {
  std::vector<double> v = uniform64(s, 0.2, 1.2, seed).to_vector<double>();
  std::vector<double> sg = randn64(s, seed + 1000).to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) v[i] = sg[i] < 0 ? -v[i] : v[i];
  return Tensor::from_vector(v, s);
}

inline std::vector<double> vec(const Tensor& t) { return t.to_vector<double>(); }

inline void expect_near_vec(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], tol) << "at " << i;
}

}  // namespace lathe::test

#define EXPECT_GRADCHECK(...)                          \
  do {                                                 \
    ::lathe::autograd::GradcheckResult r_ = ::lathe::autograd::gradcheck(__VA_ARGS__); \
    EXPECT_TRUE(r_.ok) << r_.message;                  \
  } while (0)
