// DP-SGD pieces and the RDP accountant: published values of TF-privacy's rdp_accountant
// tests (compute_rdp and get_privacy_spent), clipping bounds, noise scale sigma x C.
#include <gtest/gtest.h>

#include <cmath>

#include "federated/privacy.h"

namespace lathe::federated {
namespace {

TEST(Accountant, MatchesPublishedRdpValues) {
  // tensorflow/privacy rdp_accountant_test.py: compute_rdp(q=0.1, sigma=2, steps=10, order=5)
  // = 0.07737; compute_rdp(0.01, 2.5, 50, orders [..., 5, 50, ...]) = 0.00218075, 0.023846;
  // q = 1: the Gaussian mechanism's alpha / (2 sigma^2), compute_rdp(1, 10, 1, 20) = 0.1.
  EXPECT_NEAR(10 * rdp_sampled_gaussian(0.1, 2, 5), 0.07737, 5e-6);
  EXPECT_NEAR(50 * rdp_sampled_gaussian(0.01, 2.5, 5), 0.00218075, 1e-7);
  EXPECT_NEAR(50 * rdp_sampled_gaussian(0.01, 2.5, 50), 0.023846, 1e-6);
  EXPECT_DOUBLE_EQ(rdp_sampled_gaussian(1.0, 10, 20), 0.1);
  EXPECT_EQ(rdp_sampled_gaussian(0.0, 1, 8), 0.0);
}

TEST(Accountant, MatchesPublishedEpsilon) {
  // rdp_accountant_test.py test_get_privacy_spent_check_target_delta: q = 0.01, sigma = 4,
  // 10000 steps, orders 2..32, delta 1e-5 -> epsilon 1.258575 at order 20. Our orders extend
  // past 32, which cannot raise the minimum.
  RdpAccountant acc;
  acc.compose(0.01, 4, 10000);
  auto [eps, order] = acc.epsilon(1e-5);
  EXPECT_NEAR(eps, 1.258575, 1e-6);
  EXPECT_EQ(order, 20);
  // Composition is additive: two halves equal the whole.
  RdpAccountant halves;
  halves.compose(0.01, 4, 5000);
  halves.compose(0.01, 4, 5000);
  EXPECT_NEAR(halves.epsilon(1e-5).first, eps, 1e-12);
}

TEST(DpSgd, ClippingBoundsEachExampleAndKeepsSmallOnes) {
  // Example 1: norm 5 (3, 4 across two tensors) clipped to 1; example 2: norm 0.5 kept.
  Tensor a1 = Tensor::from_vector<float>({3.0f}, {1}), b1 = Tensor::from_vector<float>({0.0f, 4.0f}, {2});
  Tensor a2 = Tensor::from_vector<float>({0.3f}, {1}), b2 = Tensor::from_vector<float>({0.4f, 0.0f}, {2});
  std::vector<Tensor> sums = {Tensor::zeros({1}), Tensor::zeros({2})};
  EXPECT_NEAR(clip_and_accumulate({a1, b1}, sums, 1.0), 5.0, 1e-6);
  // The clipped first example alone has norm exactly C.
  const auto s0 = sums[0].to_vector<float>(), s1 = sums[1].to_vector<float>();
  EXPECT_NEAR(std::sqrt(s0[0] * s0[0] + s1[0] * s1[0] + s1[1] * s1[1]), 1.0, 1e-6);
  EXPECT_NEAR(clip_and_accumulate({a2, b2}, sums, 1.0), 0.5, 1e-6);
  EXPECT_NEAR(sums[0].to_vector<float>()[0], 0.6f + 0.3f, 1e-6);
  EXPECT_NEAR(sums[1].to_vector<float>()[0], 0.4f, 1e-6);
  EXPECT_NEAR(sums[1].to_vector<float>()[1], 0.8f, 1e-6);
}

TEST(DpSgd, NoiseStdIsSigmaTimesClipNorm) {
  // sigma = 1.3, C = 0.7, batch 4: the averaged noise has std sigma C / 4. With n = 200000
  // draws the sample std's relative error is ~1/sqrt(2n) = 0.16%; a 1% band fails for a wrong
  // scale (e.g. sigma alone, or a missing / batch) and passes by 6 standard errors otherwise.
  const double sigma = 1.3, C = 0.7;
  const int64_t batch = 4, n = 200000;
  std::vector<Tensor> sums = {Tensor::zeros({n})};
  Generator gen(123);
  noise_and_average(sums, sigma * C, batch, gen);
  const auto v = sums[0].to_vector<float>();
  double m = 0, m2 = 0;
  for (float x : v) {
    m += x;
    m2 += static_cast<double>(x) * x;
  }
  m /= n;
  const double sd = std::sqrt(m2 / n - m * m);
  EXPECT_NEAR(sd / (sigma * C / batch), 1.0, 0.01);
  EXPECT_NEAR(m, 0.0, 5 * sigma * C / batch / std::sqrt(static_cast<double>(n)));
}

}  // namespace
}  // namespace lathe::federated
