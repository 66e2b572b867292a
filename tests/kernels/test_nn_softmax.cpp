// softmax / log_softmax and their backward passes: forward against a plain loop on
// random inputs (any axis, f64/f32, transposed views, bf16), backward against central
// finite differences in f64, and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

// Softmax (or log-softmax) of row-major values of `shape` along `axis`, in double.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& shape, int64_t axis, bool log) {
  int64_t outer = 1, inner = 1, n = shape[axis];
  for (int64_t i = 0; i < axis; ++i) outer *= shape[i];
  for (size_t i = axis + 1; i < shape.size(); ++i) inner *= shape[i];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t in = 0; in < inner; ++in) {
      auto at = [&](int64_t j) { return (o * n + j) * inner + in; };
      double m = -INFINITY, s = 0;
      for (int64_t j = 0; j < n; ++j) m = std::max(m, x[at(j)]);
      for (int64_t j = 0; j < n; ++j) s += std::exp(x[at(j)] - m);
      for (int64_t j = 0; j < n; ++j)
        y[at(j)] = log ? x[at(j)] - m - std::log(s) : std::exp(x[at(j)] - m) / s;
    }
  return y;
}

// Central differences of f() with respect to every element of the contiguous f64 tensor x.

TEST(SoftmaxNn, ForwardMatchesReferenceOnEveryAxis) {
  Generator gen(1);
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    Tensor x = Tensor::randn({3, 5, 4}, gen, dt);
    for (int64_t axis : {0, 1, 2, -1}) {
      const int64_t ax = axis < 0 ? axis + 3 : axis;
      expect_close(vec(softmax(x, axis)), ref_softmax(vec(x), x.shape(), ax, false), tol, "softmax");
      expect_close(vec(log_softmax(x, axis)), ref_softmax(vec(x), x.shape(), ax, true), tol, "log_softmax");
    }
    EXPECT_EQ(softmax(x).dtype(), dt);
  }
}

TEST(SoftmaxNn, LargeInputsUseThreads) {
  // Big enough to take the OpenMP path (the small cases above stay on one thread).
  Generator gen(6);
  Tensor x = Tensor::randn({64, 40, 12}, gen, DType::f32);
  for (int64_t axis : {1, 2}) {
    expect_close(vec(softmax(x, axis)), ref_softmax(vec(x), x.shape(), axis, false), 1e-5, "threaded softmax");
    Tensor y = log_softmax(x, axis);
    expect_close(vec(y), ref_softmax(vec(x), x.shape(), axis, true), 1e-5, "threaded log_softmax");
  }
}

TEST(SoftmaxNn, TransposedAndSlicedInputs) {
  Generator gen(2);
  Tensor base = Tensor::randn({6, 7}, gen, DType::f64);
  Tensor xt = base.transpose(0, 1);  // [7, 6], strides (1, 7)
  ASSERT_FALSE(xt.is_contiguous());
  expect_close(vec(softmax(xt, -1)), ref_softmax(vec(xt), xt.shape(), 1, false), 1e-12, "softmax of transpose");
  expect_close(vec(log_softmax(xt, 0)), ref_softmax(vec(xt), xt.shape(), 0, true), 1e-12, "log_softmax axis 0");
  Tensor xs = base.slice(1, 1, 7, 2);  // [6, 3] every other column
  expect_close(vec(softmax(xs, 1)), ref_softmax(vec(xs), xs.shape(), 1, false), 1e-12, "softmax of slice");
}

TEST(SoftmaxNn, Bf16ComputesInF32) {
  Generator gen(3);
  Tensor x = Tensor::randn({4, 9}, gen, DType::bf16);
  Tensor y = softmax(x, -1);
  EXPECT_EQ(y.dtype(), DType::bf16);
  // x's bf16 values are exact in double, so the reference sees the same inputs.
  expect_close(vec(y), ref_softmax(vec(x), x.shape(), 1, false), 8e-3, "bf16 softmax");
  expect_close(vec(log_softmax(x, -1)), ref_softmax(vec(x), x.shape(), 1, true), 8e-3, "bf16 log_softmax");
}

TEST(SoftmaxNn, LargeLogitsStayFinite) {
  Tensor x = Tensor::from_vector<float>({1000.f, 1001.f, 1002.f, -1000.f}, {1, 4});
  auto y = vec(softmax(x));
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0), s = 1 + e1 + e2;
  EXPECT_NEAR(y[0], e2 / s, 1e-6);
  EXPECT_NEAR(y[1], e1 / s, 1e-6);
  EXPECT_NEAR(y[2], 1 / s, 1e-6);
  EXPECT_EQ(y[3], 0.0);
  auto ly = vec(log_softmax(x));
  EXPECT_NEAR(ly[2], -std::log(s), 1e-5);
  EXPECT_NEAR(ly[3], -2002 - std::log(s), 1e-2);
}

TEST(SoftmaxNn, FullyMaskedRowHasNoMass) {
  const float inf = INFINITY;
  Tensor x = Tensor::from_vector<float>({-inf, -inf, -inf, 0.f, -inf, 0.f}, {2, 3});
  EXPECT_EQ(vec(softmax(x)), (std::vector<double>{0, 0, 0, 0.5, 0, 0.5}));
  auto ly = vec(log_softmax(x));
  EXPECT_EQ(ly[0], -INFINITY);
  EXPECT_NEAR(ly[3], -std::log(2.0), 1e-7);
  EXPECT_EQ(ly[4], -INFINITY);
}

TEST(SoftmaxNn, BackwardMatchesFiniteDifferences) {
  Generator gen(4);
  for (bool log : {false, true}) {
    for (int64_t axis : {1, -1}) {
      Tensor x = Tensor::randn({2, 3, 4}, gen, DType::f64);
      Tensor u = Tensor::randn({2, 3, 4}, gen, DType::f64);
      auto f = [&] { return dot(u, log ? log_softmax(x, axis) : softmax(x, axis)); };
      Tensor y = log ? log_softmax(x, axis) : softmax(x, axis);
      Tensor gx = log ? log_softmax_backward(y, u, axis) : softmax_backward(y, u, axis);
      expect_close(vec(gx), numeric_grad(x, f), 1e-7, log ? "log_softmax grad" : "softmax grad");
    }
  }
}

TEST(SoftmaxNn, BackwardTakesStridedGradients) {
  Generator gen(5);
  Tensor x = Tensor::randn({5, 4}, gen, DType::f32);
  Tensor y = softmax(x);
  Tensor gy = Tensor::randn({4, 5}, gen, DType::f32).transpose(0, 1);
  auto vy = vec(y), vg = vec(gy);
  std::vector<double> want(vy.size());
  for (int r = 0; r < 5; ++r) {
    double s = 0;
    for (int j = 0; j < 4; ++j) s += vg[r * 4 + j] * vy[r * 4 + j];
    for (int j = 0; j < 4; ++j) want[r * 4 + j] = vy[r * 4 + j] * (vg[r * 4 + j] - s);
  }
  expect_close(vec(softmax_backward(y, gy)), want, 1e-5, "softmax_backward strided gy");
}

TEST(SoftmaxNn, ErrorsNameOpAndShape) {
  Tensor x = Tensor::zeros({2, 3});
  try {
    softmax(x, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(log_softmax(Tensor::zeros({2, 3}, DType::i64)), Error);
  try {
    softmax_backward(x, Tensor::zeros({3, 2}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax_backward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 2]"), std::string::npos) << e.what();
  }
}

}  // namespace
