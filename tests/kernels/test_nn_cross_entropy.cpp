// Fused cross-entropy on every available device: loss, lse and count against the hand
// formula of reference.h (ignore_index, label smoothing, strided and bf16 logits), the
// backward against central finite differences of the loss in f64 (taken on the device),
// huge logits, all rows ignored; errors on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

LATHE_DEVICE_TEST_SUITE(CrossEntropyNn);

TEST_P(CrossEntropyNn, ForwardMatchesHandFormula) {
  Generator gen(31);
  const std::vector<int64_t> tg = {3, -100, 0, 6, 2, -100};
  const int64_t N = 6, V = 7;
  for (DType dt : {DType::f64, DType::f32}) {
    const double tl = tol(dt, dt == DType::f64 ? 1e-12 : 1e-5);
    Tensor x = Tensor::randn({N, V}, gen, dt);
    for (double eps : {0.0, 0.1}) {
      CrossEntropyOut o = cross_entropy(on(x), on(Tensor::from_vector<int64_t>(tg, {N})), -100, eps);
      RefCE r = ref_ce(vec(x), V, tg, -100, eps);
      EXPECT_EQ(back(o.count).item(), 4);
      EXPECT_EQ(o.loss.dim(), 0);
      EXPECT_EQ(o.loss.dtype(), dt);
      EXPECT_NEAR(back(o.loss).item(), r.loss, tl * (1 + r.loss));
      expect_close(vback(o.lse), r.lse, tl, "lse");
    }
  }
}

TEST_P(CrossEntropyNn, LargeInputsUseThreads) {
  Generator gen(35);
  const int64_t N = 64, V = 300;
  Tensor x = Tensor::randn({N, V}, gen, DType::f32);
  std::vector<int64_t> tg(N);
  for (int64_t i = 0; i < N; ++i) tg[i] = i % 5 == 0 ? -100 : (i * 37) % V;
  Tensor t = Tensor::from_vector<int64_t>(tg, {N});
  CrossEntropyOut o = cross_entropy(on(x), on(t), -100, 0.1);
  RefCE r = ref_ce(vec(x), V, tg, -100, 0.1);
  EXPECT_EQ(back(o.count).item(), r.count);
  EXPECT_NEAR(back(o.loss).item(), r.loss, tol(DType::f32, 1e-5));
  // grad_loss = count * V makes the gradient entries O(1), so the tolerance is meaningful.
  const double gl = static_cast<double>(o.count.item() * V);
  Tensor g = cross_entropy_backward(on(x), on(t), o.lse, gl, o.count, -100, 0.1);
  std::vector<double> want = ref_ce_backward(vec(x), V, tg, r, -100, 0.1, gl, static_cast<double>(r.count));
  expect_close(vback(g), want, tol(DType::f32, 1e-5), "threaded cross_entropy_backward");
}

TEST_P(CrossEntropyNn, StridedBf16AndI32Targets) {
  Generator gen(32);
  Tensor xt = Tensor::randn({9, 4}, gen, DType::f32).transpose(0, 1);  // [4, 9] strided logits
  const std::vector<int64_t> tg = {8, 0, 5, 1};
  Tensor t32 = Tensor::from_vector<int32_t>({8, 0, 5, 1}, {4});
  CrossEntropyOut o = cross_entropy(on(xt), on(t32), -1, 0.2);
  RefCE r = ref_ce(vec(xt), 9, tg, -1, 0.2);
  EXPECT_NEAR(back(o.loss).item(), r.loss, tol(DType::f32, 1e-5));
  EXPECT_EQ(back(o.count).item(), 4);

  Tensor xb = Tensor::randn({3, 11}, gen, DType::bf16);
  CrossEntropyOut ob = cross_entropy(on(xb), on(Tensor::from_vector<int64_t>({10, 4, 0}, {3})));
  EXPECT_EQ(ob.loss.dtype(), DType::f32);
  EXPECT_EQ(ob.lse.dtype(), DType::f32);
  RefCE rb = ref_ce(vec(xb), 11, {10, 4, 0}, -100, 0.0);
  EXPECT_NEAR(back(ob.loss).item(), rb.loss, tol(DType::f32, 1e-5));  // computed in f32 from exact bf16 inputs
  expect_close(vback(ob.lse), rb.lse, tol(DType::f32, 1e-5), "bf16 lse");
}

TEST_P(CrossEntropyNn, BackwardMatchesFiniteDifferences) {
  Generator gen(33);
  const int64_t N = 4, V = 5;
  const std::vector<int64_t> tg = {1, 7, 4, 0};  // row 1 ignored (ignore_index 7)
  Tensor t = on(Tensor::from_vector<int64_t>(tg, {N}));
  for (double eps : {0.0, 0.15}) {
    Tensor x = on(Tensor::randn({N, V}, gen, DType::f64));  // perturbed on the device
    CrossEntropyOut o = cross_entropy(x, t, 7, eps);
    const double grad_loss = 1.7;
    Tensor g = back(cross_entropy_backward(x, t, o.lse, grad_loss, o.count, 7, eps));
    std::vector<double> num = numeric_grad(x, [&] { return cross_entropy(x, t, 7, eps).loss.item(); });
    for (double& v : num) v *= grad_loss;
    expect_close(vec(g), num, 1e-7, "cross_entropy grad");
    for (int64_t j = 0; j < V; ++j) EXPECT_EQ(g.at({1, j}), 0.0) << "ignored row gets no gradient";
  }
}

TEST_P(CrossEntropyNn, BackwardClosedFormAndCountScaling) {
  // softmax - (1-eps) onehot - eps/V, scaled by grad_loss / count (a caller-given count).
  Generator gen(34);
  Tensor x = Tensor::randn({2, 3}, gen, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({2, 0}, {2});
  CrossEntropyOut o = cross_entropy(on(x), on(t), -100, 0.3);
  Tensor g = back(cross_entropy_backward(on(x), on(t), o.lse, 2.0, 8, -100, 0.3));
  auto vx = vec(x);
  for (int i = 0; i < 2; ++i) {
    double s = 0;
    for (int j = 0; j < 3; ++j) s += std::exp(vx[i * 3 + j]);
    for (int j = 0; j < 3; ++j) {
      const double want = 2.0 / 8 * (std::exp(vx[i * 3 + j]) / s - 0.7 * (j == (i == 0 ? 2 : 0)) - 0.1);
      EXPECT_NEAR(g.at({i, j}), want, tol(DType::f64, 1e-14));
    }
  }
}

TEST_P(CrossEntropyNn, HugeLogitsAndAllIgnored) {
  Tensor x = Tensor::from_vector<float>({1000.f, 1002.f, -1000.f, 50.f, 50.f, 50.f}, {2, 3});
  Tensor t = Tensor::from_vector<int64_t>({0, 1}, {2});
  CrossEntropyOut o = cross_entropy(on(x), on(t));
  const double l0 = std::log(1 + std::exp(2.0)), l1 = std::log(3.0);  // lse - x_t of each row
  EXPECT_NEAR(back(o.loss).item(), (l0 + l1) / 2, 1e-5);
  EXPECT_NEAR(back(o.lse).at({0}), 1002 + std::log(1 + std::exp(-2.0)), 1e-3);
  Tensor g = cross_entropy_backward(on(x), on(t), o.lse, 1.0, o.count);
  for (double v : vback(g)) EXPECT_TRUE(std::isfinite(v));

  Tensor none = Tensor::from_vector<int64_t>({-100, -100}, {2});
  CrossEntropyOut z = cross_entropy(on(x), on(none));
  EXPECT_EQ(back(z.count).item(), 0);
  EXPECT_EQ(back(z.loss).item(), 0.0);
  for (double v : vback(cross_entropy_backward(on(x), on(none), z.lse, 1.0, z.count))) EXPECT_EQ(v, 0.0);
}

TEST(CrossEntropyNnCpu, ErrorsNameRowAndValue) {
  Tensor x = Tensor::zeros({3, 4});
  try {
    cross_entropy(x, Tensor::from_vector<int64_t>({0, 9, 1}, {3}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cross_entropy"), std::string::npos) << m;
    EXPECT_NE(m.find("target 9 in row 1"), std::string::npos) << m;
  }
  EXPECT_THROW(cross_entropy(x, Tensor::from_vector<int64_t>({0, -1, 1}, {3})), Error);
  try {
    cross_entropy(x, Tensor::from_vector<int64_t>({0, 1}, {2}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 4]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cross_entropy(x, Tensor::zeros({3})), Error);  // f32 targets
  EXPECT_THROW(cross_entropy(x, Tensor::from_vector<int64_t>({0, 1, 2}, {3}), -100, 1.5), Error);
  CrossEntropyOut o = cross_entropy(x, Tensor::from_vector<int64_t>({0, 1, 2}, {3}));
  EXPECT_THROW(cross_entropy_backward(x, Tensor::from_vector<int64_t>({0, 1, 2}, {3}), o.lse.to(DType::f64), 1.0, 3),
               Error);
}

}  // namespace
