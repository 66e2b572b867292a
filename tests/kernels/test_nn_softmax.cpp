// softmax / log_softmax and their backward passes on every available device: forward
// against the plain loop of reference.h on random inputs (any axis, f64/f32, transposed
// views, bf16), backward against central finite differences in f64 (taken on the device);
// error messages on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

LATHE_DEVICE_TEST_SUITE(SoftmaxNn);

TEST_P(SoftmaxNn, ForwardMatchesReferenceOnEveryAxis) {
  Generator gen(1);
  for (DType dt : {DType::f64, DType::f32}) {
    const double tl = tol(dt, dt == DType::f64 ? 1e-12 : 1e-5);
    Tensor x = Tensor::randn({3, 5, 4}, gen, dt);
    for (int64_t axis : {0, 1, 2, -1}) {
      const int64_t ax = axis < 0 ? axis + 3 : axis;
      expect_close(vback(softmax(on(x), axis)), ref_softmax(vec(x), x.shape(), ax, false), tl, "softmax");
      expect_close(vback(log_softmax(on(x), axis)), ref_softmax(vec(x), x.shape(), ax, true), tl, "log_softmax");
    }
    EXPECT_EQ(softmax(on(x)).dtype(), dt);
  }
}

TEST_P(SoftmaxNn, LargeInputsUseThreads) {
  // Big enough to take the OpenMP path (the small cases above stay on one thread).
  Generator gen(6);
  Tensor x = Tensor::randn({64, 40, 12}, gen, DType::f32);
  for (int64_t axis : {1, 2}) {
    expect_close(vback(softmax(on(x), axis)), ref_softmax(vec(x), x.shape(), axis, false), tol(DType::f32, 1e-5),
                 "threaded softmax");
    Tensor y = log_softmax(on(x), axis);
    expect_close(vback(y), ref_softmax(vec(x), x.shape(), axis, true), tol(DType::f32, 1e-5), "threaded log_softmax");
  }
}

TEST_P(SoftmaxNn, TransposedAndSlicedInputs) {
  Generator gen(2);
  Tensor base = Tensor::randn({6, 7}, gen, DType::f64);
  Tensor xt = base.transpose(0, 1);  // [7, 6], strides (1, 7)
  ASSERT_FALSE(xt.is_contiguous());
  expect_close(vback(softmax(on(xt), -1)), ref_softmax(vec(xt), xt.shape(), 1, false), tol(DType::f64, 1e-12),
               "softmax of transpose");
  expect_close(vback(log_softmax(on(xt), 0)), ref_softmax(vec(xt), xt.shape(), 0, true), tol(DType::f64, 1e-12),
               "log_softmax axis 0");
  Tensor xs = base.slice(1, 1, 7, 2);  // [6, 3] every other column
  expect_close(vback(softmax(on(xs), 1)), ref_softmax(vec(xs), xs.shape(), 1, false), tol(DType::f64, 1e-12),
               "softmax of slice");
}

TEST_P(SoftmaxNn, Bf16ComputesInF32) {
  Generator gen(3);
  Tensor x = Tensor::randn({4, 9}, gen, DType::bf16);
  Tensor y = back(softmax(on(x), -1));
  EXPECT_EQ(y.dtype(), DType::bf16);
  // x's bf16 values are exact in double, so the reference sees the same inputs.
  expect_close(vec(y), ref_softmax(vec(x), x.shape(), 1, false), tol(DType::bf16, 8e-3), "bf16 softmax");
  expect_close(vback(log_softmax(on(x), -1)), ref_softmax(vec(x), x.shape(), 1, true), tol(DType::bf16, 8e-3),
               "bf16 log_softmax");
}

TEST_P(SoftmaxNn, LargeLogitsStayFinite) {
  Tensor x = Tensor::from_vector<float>({1000.f, 1001.f, 1002.f, -1000.f}, {1, 4});
  auto y = vback(softmax(on(x)));
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0), s = 1 + e1 + e2;
  EXPECT_NEAR(y[0], e2 / s, 1e-6);
  EXPECT_NEAR(y[1], e1 / s, 1e-6);
  EXPECT_NEAR(y[2], 1 / s, 1e-6);
  EXPECT_EQ(y[3], 0.0);
  auto ly = vback(log_softmax(on(x)));
  EXPECT_NEAR(ly[2], -std::log(s), 1e-5);
  EXPECT_NEAR(ly[3], -2002 - std::log(s), 1e-2);
}

TEST_P(SoftmaxNn, FullyMaskedRowHasNoMass) {
  const float inf = INFINITY;
  Tensor x = Tensor::from_vector<float>({-inf, -inf, -inf, 0.f, -inf, 0.f}, {2, 3});
  EXPECT_EQ(vback(softmax(on(x))), (std::vector<double>{0, 0, 0, 0.5, 0, 0.5}));
  auto ly = vback(log_softmax(on(x)));
  EXPECT_EQ(ly[0], -INFINITY);
  EXPECT_NEAR(ly[3], -std::log(2.0), 1e-7);
  EXPECT_EQ(ly[4], -INFINITY);
}

TEST_P(SoftmaxNn, BackwardMatchesFiniteDifferences) {
  Generator gen(4);
  for (bool log : {false, true}) {
    for (int64_t axis : {1, -1}) {
      // x and u live on the device; numeric_grad perturbs x there
      Tensor x = on(Tensor::randn({2, 3, 4}, gen, DType::f64));
      Tensor u = on(Tensor::randn({2, 3, 4}, gen, DType::f64));
      auto f = [&] { return dot(u, log ? log_softmax(x, axis) : softmax(x, axis)); };
      Tensor y = log ? log_softmax(x, axis) : softmax(x, axis);
      Tensor gx = log ? log_softmax_backward(y, u, axis) : softmax_backward(y, u, axis);
      expect_close(vback(gx), numeric_grad(x, f), 1e-7, log ? "log_softmax grad" : "softmax grad");
    }
  }
}

TEST_P(SoftmaxNn, BackwardTakesStridedGradients) {
  Generator gen(5);
  Tensor x = Tensor::randn({5, 4}, gen, DType::f32);
  Tensor y = softmax(on(x));
  Tensor gy = Tensor::randn({4, 5}, gen, DType::f32).transpose(0, 1);
  std::vector<double> want = ref_softmax_backward(vback(y), vec(gy), 4);
  expect_close(vback(softmax_backward(y, on(gy))), want, tol(DType::f32, 1e-5), "softmax_backward strided gy");
}

TEST(SoftmaxNnCpu, ErrorsNameOpAndShape) {
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
