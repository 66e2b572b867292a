// dropout (mask from the Philox stream on every available device, independent of the CPU's
// thread count, exact scaling) and the fused AdamW step against the scalar update of
// reference.h, on every available device; errors on the CPU.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>

#include "core/tensor.h"
#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe;
using namespace lathe::kernels;

using namespace lathe::kernel_test;

namespace {

// Restores the OpenMP thread count when a test ends.
struct ThreadsGuard {
  int saved = omp_get_max_threads();
  ~ThreadsGuard() { omp_set_num_threads(saved); }
};

}  // namespace

LATHE_DEVICE_TEST_SUITE(Dropout);
LATHE_DEVICE_TEST_SUITE(AdamW);

TEST(DropoutCpu, MaskIgnoresThreadCount) {
  ThreadsGuard guard;
  const double p = 0.3;
  Generator g0(1234);
  Tensor x = Tensor::randn({300, 500}, g0, DType::f32);  // 150k elements: parallel
  Generator ga(77), gb(77);
  ga.reserve(5);
  gb.reserve(5);
  omp_set_num_threads(1);
  DropoutOut a = dropout(x, p, ga);
  omp_set_num_threads(2);
  DropoutOut b = dropout(x, p, gb);
  EXPECT_EQ(a.mask.to_vector<uint8_t>(), b.mask.to_vector<uint8_t>());
  EXPECT_EQ(a.y.to_vector<float>(), b.y.to_vector<float>());
}

TEST_P(Dropout, MaskIsTheStream) {
  const double p = 0.3;
  Generator g0(1234);
  Tensor x = Tensor::randn({300, 500}, g0, DType::f32);  // 150k elements: parallel
  Generator ga(77);
  ga.reserve(5);
  DropoutOut a = dropout(on(x), p, ga);
  EXPECT_EQ(ga.offset(), 5u + 150000u);
  EXPECT_EQ(a.mask.dtype(), DType::u8);

  // element i is kept iff uniform(stream value 5 + i) >= p
  Generator ref(77);
  auto m = back(a.mask).to_vector<uint8_t>();
  auto xv = x.to_vector<float>(), yv = back(a.y).to_vector<float>();
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  int64_t kept = 0;
  for (int64_t i = 0; i < 150000; ++i) {
    bool keep = uint_to_unit_float(ref.at(5 + i)) >= p;
    ASSERT_EQ(m[i], keep ? 1 : 0) << i;
    ASSERT_EQ(yv[i], keep ? xv[i] * scale : 0.0f) << i;  // exact scaling
    kept += keep;
  }
  // keep fraction: binomial sd is sqrt(0.21 / 150000) ~ 0.0012
  EXPECT_NEAR(static_cast<double>(kept) / 150000.0, 1.0 - p, 0.006);

  // a different seed gives a different mask; the next call continues the stream
  Generator gc(78);
  EXPECT_NE(back(dropout(on(x), p, gc).mask).to_vector<uint8_t>(), m);
  DropoutOut next = dropout(on(x), p, ga);
  EXPECT_NE(back(next.mask).to_vector<uint8_t>(), m);
  EXPECT_EQ(ga.offset(), 5u + 300000u);
}

TEST_P(Dropout, StridedInputF64AndBf16) {
  Generator g0(3);
  Tensor base = Tensor::randn({40, 30}, g0, DType::f64);
  Tensor xt = base.transpose(0, 1);  // [30, 40] strided
  Generator g1(9), g2(9);
  DropoutOut a = dropout(on(xt), 0.5, g1);
  DropoutOut b = dropout(on(xt.contiguous()), 0.5, g2);  // same logical values, same stream
  EXPECT_EQ(back(a.mask).to_vector<uint8_t>(), back(b.mask).to_vector<uint8_t>());
  EXPECT_EQ(back(a.y).to_vector<double>(), back(b.y).to_vector<double>());
  auto m = a.mask.to_vector<uint8_t>();
  auto y = a.y.to_vector<double>(), x = xt.to_vector<double>();
  for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], m[i] ? x[i] * 2.0 : 0.0);

  Tensor xb = base.to(DType::bf16);
  Generator g3(10);
  DropoutOut c = dropout(on(xb), 0.25, g3);
  auto mb = back(c.mask).to_vector<uint8_t>();
  Tensor cy = back(c.y);
  const bf16_t* yb = cy.data<bf16_t>();
  const bf16_t* xbp = xb.data<bf16_t>();
  const float s = static_cast<float>(1.0 / 0.75);
  for (size_t i = 0; i < mb.size(); ++i)
    EXPECT_EQ(yb[i].bits, float_to_bf16(mb[i] ? bf16_to_float(xbp[i]) * s : 0.0f).bits) << i;
}

TEST_P(Dropout, ZeroAndOne) {
  Generator g(1);
  Tensor x = Tensor::randn({7, 3}, g, DType::f32);
  const Tensor xd = on(x);
  Generator gz(2);
  DropoutOut z = dropout(xd, 0.0, gz);
  EXPECT_EQ(back(z.y).to_vector<float>(), x.to_vector<float>());
  EXPECT_FALSE(z.y.is_same(xd));
  for (uint8_t v : back(z.mask).to_vector<uint8_t>()) EXPECT_EQ(v, 1);
  EXPECT_EQ(gz.offset(), 21u);  // the stream still advances by numel
  DropoutOut one = dropout(xd, 1.0, gz);
  for (float v : back(one.y).to_vector<float>()) EXPECT_EQ(v, 0.0f);
  for (uint8_t v : back(one.mask).to_vector<uint8_t>()) EXPECT_EQ(v, 0);
}

TEST(DropoutCpu, Errors) {
  Generator g(1);
  Tensor x = Tensor::randn({7, 3}, g, DType::f32);
  Generator gz(2);
  std::string e = error_of([&] { dropout(x, 1.5, gz); });
  EXPECT_TRUE(has(e, "dropout") && has(e, "1.5")) << e;
  e = error_of([&] { dropout(Tensor::zeros({2}, DType::i64), 0.1, gz); });
  EXPECT_TRUE(has(e, "dropout") && has(e, "i64")) << e;
}

TEST_P(AdamW, TwoStepsMatchHandComputedUpdate) {
  const double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  std::vector<float> p0 = {0.5f, -1.25f, 2.0f, 0.0f, 3.5f, -0.75f};
  Tensor param = on(Tensor::from_vector(p0, {2, 3}));
  Tensor m = on(Tensor::zeros({2, 3})), v = on(Tensor::zeros({2, 3}));
  // grads given as strided (transposed) views
  std::vector<std::vector<float>> grads = {{0.1f, -0.2f, 0.3f, 0.0f, -1.5f, 0.05f},
                                           {-0.4f, 0.25f, 0.3f, 2.0f, 0.5f, -0.05f}};
  std::vector<double> P(p0.begin(), p0.end()), M(6, 0.0), V(6, 0.0);
  for (int64_t step = 1; step <= 2; ++step) {
    const auto& gv = grads[step - 1];
    // store the grad transposed so that grad_t.transpose(0, 1) has shape [2, 3], values gv
    std::vector<float> gt(6);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) gt[j * 2 + i] = gv[i * 3 + j];
    Tensor grad = on(Tensor::from_vector(gt, {3, 2})).transpose(0, 1);
    adamw_step(param, grad, m, v, lr, b1, b2, eps, wd, step);
    ref_adamw_step(P, M, V, std::vector<double>(gv.begin(), gv.end()), lr, b1, b2, eps, wd, step);
    auto pv = back(param).to_vector<float>(), mv = back(m).to_vector<float>(), vv = back(v).to_vector<float>();
    for (int i = 0; i < 6; ++i) {
      EXPECT_NEAR(pv[i], P[i], tol(DType::f32, 1e-6) * std::max(1.0, std::abs(P[i]))) << "step " << step << " i " << i;
      EXPECT_NEAR(mv[i], M[i], 1e-7) << i;
      EXPECT_NEAR(vv[i], V[i], 1e-7) << i;
    }
  }
  // step 1 with g = 0.1, p = 0.5: m_hat = g, v_hat = g^2, so p = 0.5 - lr (1 + wd 0.5) up to eps
  Tensor p1 = on(Tensor::from_vector<float>({0.5f}, {1})), m1 = on(Tensor::zeros({1})), v1 = on(Tensor::zeros({1}));
  adamw_step(p1, on(Tensor::from_vector<float>({0.1f}, {1})), m1, v1, lr, b1, b2, eps, wd, 1);
  EXPECT_NEAR(back(p1).item(), 0.5 - lr * (1.0 + wd * 0.5), 1e-6);
}

TEST(AdamWCpu, Errors) {
  Tensor p = Tensor::zeros({3}), g = Tensor::zeros({3}), m = Tensor::zeros({3}), v = Tensor::zeros({3});
  std::string e = error_of([&] { adamw_step(Tensor::zeros({3}, DType::f64), g, m, v, 1e-3, 0.9, 0.99, 1e-8, 0, 1); });
  EXPECT_TRUE(has(e, "adamw_step") && has(e, "param") && has(e, "f64")) << e;
  e = error_of([&] { adamw_step(p, Tensor::zeros({4}), m, v, 1e-3, 0.9, 0.99, 1e-8, 0, 1); });
  EXPECT_TRUE(has(e, "adamw_step") && has(e, "[4]") && has(e, "[3]")) << e;
  e = error_of([&] { adamw_step(p, g, m, v, 1e-3, 0.9, 0.99, 1e-8, 0, 0); });
  EXPECT_TRUE(has(e, "adamw_step") && has(e, "step")) << e;
  e = error_of([&] { adamw_step(p, g, Tensor::zeros({6}).slice(0, 0, 6, 2), v, 1e-3, 0.9, 0.99, 1e-8, 0, 1); });
  EXPECT_TRUE(has(e, "adamw_step") && has(e, "contiguous")) << e;
}
