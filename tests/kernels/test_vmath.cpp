// kernels/cpu/vmath.h: the vectorizable float exp against double-precision std::exp over a
// dense sweep of its whole finite domain (every 31st float in [-104, 88.72], which covers all
// exponents and mantissa patterns), special values, and exact points.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/vmath.h"

namespace {

using lathe::kernels::cpu::vmath::exp;

// Error of got against the exact value in units of the last place of the correctly rounded
// f32 result (for subnormal results the ulp is the smallest subnormal).
double ulp_error(float got, double want) {
  const float wf = static_cast<float>(want);
  const double ulp = wf == 0.0f ? std::numeric_limits<float>::denorm_min()
                                : std::nextafter(std::fabs(wf), std::numeric_limits<float>::infinity()) - std::fabs(wf);
  return std::fabs(static_cast<double>(got) - want) / ulp;
}

TEST(Vmath, ExpWithinTwoUlpOverTheDomain) {
  double worst = 0;
  float worst_x = 0;
  int64_t checked = 0;
  uint32_t lo, hi;
  const float flo = -104.0f, fhi = 88.72f;
  std::memcpy(&lo, &flo, 4);
  std::memcpy(&hi, &fhi, 4);
  // negative floats: bits from 0x80000000 (-0) up to -104; positive: 0 up to 88.72
  auto sweep = [&](uint32_t from, uint32_t to) {
    for (uint64_t b = from; b <= to; b += 31) {
      const uint32_t u = static_cast<uint32_t>(b);
      float x;
      std::memcpy(&x, &u, 4);
      const double want = std::exp(static_cast<double>(x));
      if (want > std::numeric_limits<float>::max()) continue;
      const double e = ulp_error(exp(x), want);
      ++checked;
      if (e > worst) {
        worst = e;
        worst_x = x;
      }
    }
  };
  sweep(0x80000000u, lo);
  sweep(0u, hi);
  EXPECT_GT(checked, 60000000);
  EXPECT_LE(worst, 2.0) << "worst at x = " << worst_x;
}

TEST(Vmath, SpecialValuesAndExactPoints) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(exp(0.0f), 1.0f);
  EXPECT_EQ(exp(-0.0f), 1.0f);
  EXPECT_EQ(exp(-inf), 0.0f);
  EXPECT_EQ(exp(inf), inf);
  EXPECT_TRUE(std::isnan(exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(exp(-std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(exp(89.0f), inf);   // overflow
  EXPECT_EQ(exp(1e30f), inf);
  EXPECT_EQ(exp(-200.0f), 0.0f);  // underflow
  EXPECT_EQ(exp(-1e30f), 0.0f);
  EXPECT_GT(exp(-100.0f), 0.0f);  // subnormal result, not flushed
  EXPECT_NEAR(exp(-100.0f), std::exp(-100.0), 2 * std::numeric_limits<float>::denorm_min());
  EXPECT_NEAR(exp(1.0f), 2.718281828459045, 2.4e-7);
}

TEST(Vmath, SigmoidLimits) {
  using lathe::kernels::cpu::vmath::sigmoid;
  EXPECT_EQ(sigmoid(0.0f), 0.5f);
  EXPECT_EQ(sigmoid(-200.0f), 0.0f);
  EXPECT_EQ(sigmoid(200.0f), 1.0f);
  EXPECT_NEAR(sigmoid(2.0f), 1.0 / (1.0 + std::exp(-2.0)), 1e-7);
  EXPECT_EQ(sigmoid(2.0), 1.0 / (1.0 + std::exp(-2.0)));  // double: libm
}

}  // namespace
