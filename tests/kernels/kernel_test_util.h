// Helpers shared by the kernel tests: error capture, index iteration, closeness checks and
// central finite differences in f64.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lathe::kernel_test {

// The message of the lathe::Error that f throws, or "<no error>".
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

inline bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Calls f with every multi-index of shape, in row-major order.
inline void for_each_index(const Shape& shape, const std::function<void(const std::vector<int64_t>&)>& f) {
  int64_t n = shape_numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t e = 0; e < n; ++e) {
    f(idx);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

inline std::vector<double> vec(const Tensor& t) { return t.to_vector<double>(); }

inline void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                         const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {  // e.g. the log-sum-exp of a fully masked row
      EXPECT_EQ(got[i], want[i]) << what << " at flat index " << i;
      continue;
    }
    EXPECT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " at flat index " << i;
  }
}

inline double dot(const Tensor& a, const Tensor& b) {
  auto va = vec(a), vb = vec(b);
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
  return s;
}

// Central differences of the scalar f() with respect to every element of the f64 tensor x
// (perturbed in place and restored).
inline std::vector<double> numeric_grad(const Tensor& x, const std::function<double()>& f, double h = 1e-6) {
  double* p = x.data<double>();
  std::vector<double> g(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double keep = p[i];
    p[i] = keep + h;
    const double fp = f();
    p[i] = keep - h;
    const double fm = f();
    p[i] = keep;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

}  // namespace lathe::kernel_test
