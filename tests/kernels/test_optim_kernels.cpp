// Optimizer kernels on every available device against the spec's formulas written out in
// double (specs/optimizers.md §1, §4, §5): AdamW's HF variant, the 8-bit dynamic maps value by
// value, blockwise quantisation (nearest code, midpoints, sign fix, error bound), the 8-bit
// AdamW step (including the NaN/Inf gradient rule) and SGD-SaI's step. On CUDA each result is
// also compared bit for bit with the CPU kernel on the same inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/memory.h"
#include "core/paged.h"
#include "core/tensor.h"
#include "kernels/blockwise8.h"
#include "kernels/ops.h"
#include "kernels/optim_math.h"
#include "tests/kernels/kernel_test_util.h"

using namespace lathe;
using namespace lathe::kernels;
using namespace lathe::kernel_test;

namespace {

// transformers/GaLore AdamW on doubles: eps inside, step lr sqrt(bc2)/bc1, decay after.
void ref_adamw_hf(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v, const std::vector<double>& g,
                  double lr, double b1, double b2, double eps, double wd, int64_t t) {
  const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  for (size_t i = 0; i < p.size(); ++i) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    p[i] -= lr * std::sqrt(bc2) / bc1 * m[i] / (std::sqrt(v[i]) + eps);
    p[i] -= lr * wd * p[i];
  }
}

std::vector<float> randn_vec(int64_t n, uint64_t seed, double scale) {
  Generator g(seed);
  std::vector<float> v = Tensor::randn({n}, g).to_vector<float>();
  for (auto& x : v) x = static_cast<float>(x * scale);
  return v;
}

Tensor fvec(const std::vector<float>& v) { return Tensor::from_vector<float>(v, {static_cast<int64_t>(v.size())}); }

// Index of the entry nearest to y by a linear scan in double (ties: the higher index), then the
// sign rule for the signed map: the reference of quant8_encode.
int ref_code(const std::array<float, 256>& t, double y, bool is_signed) {
  int best = 0;
  for (int j = 1; j < 256; ++j)
    if (std::abs(y - t[j]) <= std::abs(y - t[best])) best = j;
  if (is_signed) {
    if (t[best] < 0 && y >= 0) ++best;
    else if (t[best] >= 0 && y < 0) --best;
  }
  return best;
}

}  // namespace

LATHE_DEVICE_TEST_SUITE(AdamWHf);
LATHE_DEVICE_TEST_SUITE(Quant8);
LATHE_DEVICE_TEST_SUITE(Adam8bit);
LATHE_DEVICE_TEST_SUITE(SgdSaiKernel);
LATHE_DEVICE_TEST_SUITE(PagedStorage);

// ---- AdamW, HF form ------------------------------------------------------------------------------

TEST_P(AdamWHf, MatchesFormulaOverSeveralSteps) {
  const double lr = 0.02, b1 = 0.9, b2 = 0.999, eps = 1e-6, wd = 0.1;
  std::vector<float> p0 = randn_vec(7, 1, 1.0);
  Tensor p = on(fvec(p0)), m = on(Tensor::zeros({7})), v = on(Tensor::zeros({7}));
  std::vector<double> P(p0.begin(), p0.end()), M(7, 0), V(7, 0);
  for (int64_t t = 1; t <= 5; ++t) {
    std::vector<float> g = randn_vec(7, 10 + t, 0.1);
    adamw_step(p, on(fvec(g)), m, v, lr, b1, b2, eps, wd, t, AdamVariant::hf);
    ref_adamw_hf(P, M, V, std::vector<double>(g.begin(), g.end()), lr, b1, b2, eps, wd, t);
    const auto pv = vback(p), mv = vback(m), vv = vback(v);
    for (int i = 0; i < 7; ++i) {
      EXPECT_NEAR(pv[i], P[i], 2e-6 * std::max(1.0, std::abs(P[i]))) << "step " << t << " i " << i;
      EXPECT_NEAR(mv[i], M[i], 1e-7) << i;
      EXPECT_NEAR(vv[i], V[i], 1e-8) << i;
    }
  }
}

TEST_P(AdamWHf, FirstStepAndDecayOrder) {
  // Step 1: m = (1-b1) g, v = (1-b2) g^2, so the HF step is lr g sqrt(1-b2) / (|g| sqrt(1-b2) + eps)
  // and the decay multiplies the updated weight by (1 - lr wd); torch decays the old weight. With
  // a large lr and wd the two differ by lr^2 wd u (u the unit step), which this pins down.
  const double lr = 0.5, wd = 0.4, eps = 1e-6, b1 = 0.9, b2 = 0.999;
  const float p0 = 2.0f, g = 0.3f;
  Tensor ph = on(fvec({p0})), pt = on(fvec({p0}));
  adamw_step(ph, on(fvec({g})), on(Tensor::zeros({1})), on(Tensor::zeros({1})), lr, b1, b2, eps, wd, 1,
             AdamVariant::hf);
  adamw_step(pt, on(fvec({g})), on(Tensor::zeros({1})), on(Tensor::zeros({1})), lr, b1, b2, eps, wd, 1,
             AdamVariant::torch);
  const double u_hf = g * std::sqrt(1 - b2) / (std::abs(g) * std::sqrt(1 - b2) + eps);
  const double want_hf = (p0 - lr * u_hf) * (1 - lr * wd);
  EXPECT_NEAR(back(ph).item(), want_hf, 1e-6);
  const double u_t = 1.0 / (1.0 + eps / std::abs(g));  // torch: m_hat / (sqrt(v_hat) + eps), m_hat = g
  const double want_t = p0 * (1 - lr * wd) - lr * u_t;
  EXPECT_NEAR(back(pt).item(), want_t, 1e-6);
  // The decay-order difference: HF - torch = lr^2 wd u (up to the eps placement, ~1e-5 here).
  EXPECT_NEAR(back(ph).item() - back(pt).item(), lr * lr * wd * u_hf, 2e-4);
}

// ---- dynamic maps ----------------------------------------------------------------------------------

TEST(QuantMap8, SignedValueByValue) {
  const auto& t = quant_map8(true);
  EXPECT_EQ(t[127], 0.0f);
  EXPECT_EQ(t[255], 1.0f);
  EXPECT_NEAR(t[0], -0.99296875, 1e-7);  // the largest negative magnitude: no -1
  EXPECT_NEAR(t[254], 0.99296875, 1e-7);
  // The smallest magnitudes: decade 0 has one midpoint (0.55e-6), decade 1 two (0.325e-5, 0.775e-5),
  // decade 2 four (0.2125, 0.4375, 0.6625, 0.8875 times 1e-4).
  const double want[] = {5.5e-7, 3.25e-6, 7.75e-6, 2.125e-5, 4.375e-5, 6.625e-5, 8.875e-5};
  for (int k = 0; k < 7; ++k) {
    EXPECT_NEAR(t[128 + k], want[k], want[k] * 1e-6) << "index " << 128 + k;
    EXPECT_EQ(t[126 - k], -t[128 + k]) << "the negative half mirrors the positive";
  }
  // Strictly increasing, and decade i (values in [0.1, 1) * 10^(i-6)) holds 2^i positive entries.
  for (int j = 1; j < 256; ++j) EXPECT_LT(t[j - 1], t[j]) << j;
  for (int i = 0; i < 7; ++i) {
    const double lo = 0.1 * std::pow(10.0, i - 6), hi = std::pow(10.0, i - 6);
    int count = 0;
    for (int j = 128; j < 255; ++j) count += t[j] > lo * 0.999999 && t[j] < hi;
    EXPECT_EQ(count, 1 << i) << "decade " << i;
  }
  // Decade 6, entry k: the midpoint of linspace(0.1, 1, 65) k and k+1 = 0.1 + 0.9 (2k + 1) / 128.
  for (int k = 0; k < 64; ++k) EXPECT_NEAR(t[191 + k], 0.1 + 0.9 * (2 * k + 1) / 128.0, 2e-7) << k;
}

TEST(QuantMap8, UnsignedValueByValue) {
  const auto& t = quant_map8(false);
  EXPECT_EQ(t[0], 0.0f);
  EXPECT_EQ(t[255], 1.0f);
  EXPECT_NEAR(t[1], 3.25e-7, 3.25e-13);  // decade 0: midpoints of linspace(0.1, 1, 3)
  EXPECT_NEAR(t[2], 7.75e-7, 7.75e-13);
  EXPECT_NEAR(t[254], 0.996484375, 1e-7);  // decade 6: 1 - 0.9 / 256
  for (int j = 1; j < 256; ++j) EXPECT_LT(t[j - 1], t[j]) << j;
  for (int i = 0; i < 7; ++i) {
    const double lo = 0.1 * std::pow(10.0, i - 6), hi = std::pow(10.0, i - 6);
    int count = 0;
    for (int j = 1; j < 255; ++j) count += t[j] > lo * 0.999999 && t[j] < hi;
    EXPECT_EQ(count, 2 << i) << "decade " << i;
  }
  for (int k = 0; k < 128; ++k) EXPECT_NEAR(t[127 + k], 0.1 + 0.9 * (2 * k + 1) / 256.0, 2e-7) << k;
}

// ---- blockwise quantisation ------------------------------------------------------------------------

TEST_P(Quant8, NearestCodeAbsmaxAndErrorBound) {
  for (bool is_signed : {true, false}) {
    const int64_t n = 1000, block = 256;  // a partial last block
    std::vector<float> x = randn_vec(n, 5, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      x[i] *= static_cast<float>(std::pow(10.0, -(i / block)));  // blocks of different scales
      if (!is_signed) x[i] = x[i] * x[i];
    }
    for (int64_t i = 512; i < 768; ++i) x[i] = 0.0f;  // an all-zero block
    Tensor codes = on(Tensor::zeros({n}, DType::u8)), absmax = on(Tensor::zeros({4}));
    quantize_blockwise8(on(fvec(x)), codes, absmax, block, is_signed);
    const auto c = back(codes).to_vector<uint8_t>();
    const auto a = back(absmax).to_vector<float>();
    const auto dq = back(dequantize_blockwise8(codes, absmax, block, is_signed)).to_vector<float>();
    const auto& t = quant_map8(is_signed);
    // Half the largest gap between neighbouring entries (decade 6): the nearest-rounding bound.
    const double half_gap = is_signed ? 0.9 / 128 : 0.9 / 256;
    int mismatches = 0;
    for (int64_t b = 0; b < 4; ++b) {
      float am = 0;
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) am = std::max(am, std::abs(x[i]));
      EXPECT_EQ(a[b], am) << "block " << b;
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
        const double y = am > 0 ? static_cast<double>(x[i]) / am : 0.0;
        const int want = ref_code(t, y, is_signed);
        // Only values within float rounding of a midpoint may land on the other side.
        if (c[i] != want) {
          ++mismatches;
          EXPECT_EQ(std::abs(int(c[i]) - want), 1) << i;
        }
        EXPECT_EQ(dq[i], t[c[i]] * a[b]) << i;
        EXPECT_LE(std::abs(dq[i] - x[i]), (half_gap + 1e-6) * am + 1e-30) << i;  // + f32 rounding
      }
    }
    EXPECT_LE(mismatches, 2) << (is_signed ? "signed" : "unsigned");
    for (int64_t i = 512; i < 768; ++i) EXPECT_EQ(dq[i], 0.0f);
    EXPECT_EQ(c[600], is_signed ? 127 : 0);
  }
}

// The CPU finds codes through a bucket table, CUDA by binary search (kernels/optim_math.h):
// both must give the same code for every value, including the entries themselves, their
// midpoints and the floats next to them, zeros of both signs, tiny and out-of-range values.
TEST(Quant8Search, CpuBucketSearchEqualsBinarySearch) {
  for (bool is_signed : {true, false}) {
    const auto& t = quant_map8(is_signed);
    std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-30f, 1.5f, -1.5f, 1.0f, -1.0f};
    for (int j = 0; j < 256; ++j) {
      const float mid = j < 255 ? (t[j] + t[j + 1]) * 0.5f : t[j];
      for (float v : {t[j], mid})
        for (float w : {v, std::nextafter(v, -2.0f), std::nextafter(v, 2.0f)}) xs.push_back(w);
    }
    const std::vector<float> r = randn_vec(20000, 17, 1.0);
    for (size_t i = 0; i < r.size(); ++i) xs.push_back(static_cast<float>(r[i] * std::pow(10.0, -double(i % 9))));
    // One block per value, led by 1.0 so that absmax = 1 and the code is the search's on x.
    const int64_t block = 64, nb = static_cast<int64_t>(xs.size());
    std::vector<float> data(static_cast<size_t>(nb * block), 0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      data[b * block] = 1.0f;
      data[b * block + 1] = std::max(-1.0f, std::min(1.0f, xs[b]));
    }
    Tensor codes = Tensor::zeros({nb * block}, DType::u8), absmax = Tensor::zeros({nb});
    quantize_blockwise8(fvec(data), codes, absmax, block, is_signed);
    const auto c = codes.to_vector<uint8_t>();
    for (int64_t b = 0; b < nb; ++b) {
      const float x = data[b * block + 1];
      ASSERT_EQ(int(c[b * block + 1]), int(optim_math::quant8_encode(t.data(), x, 1.0f, is_signed)))
          << "x = " << x << (is_signed ? " signed" : " unsigned");
    }
  }
}

TEST_P(Quant8, MidpointsAndSignFix) {
  const auto& t = quant_map8(true);
  // The block's absmax is 1 (its first value), so y = x. A value exactly at the f32 midpoint of
  // entries 200 and 201 takes the higher; just below it, the lower.
  const float mid = (t[200] + t[201]) * 0.5f;
  const float below = std::nextafter(mid, 0.0f);
  // A tiny negative rounds to the zero code (127) and is moved to the smallest negative (126); a
  // tiny positive stays at 127 (zero counts as positive).
  std::vector<float> x = {1.0f, mid, below, -1e-9f, 1e-9f, -1.0f};
  x.resize(64, 0.0f);
  Tensor codes = on(Tensor::zeros({64}, DType::u8)), absmax = on(Tensor::zeros({1}));
  quantize_blockwise8(on(fvec(x)), codes, absmax, 64, true);
  const auto c = back(codes).to_vector<uint8_t>();
  EXPECT_EQ(c[0], 255);
  EXPECT_EQ(c[1], 201);
  EXPECT_EQ(c[2], 200);
  EXPECT_EQ(c[3], 126);
  EXPECT_EQ(c[4], 127);
  EXPECT_EQ(c[5], 0);  // -1 clamps to the most negative entry, -0.99297
}

// ---- 8-bit AdamW step --------------------------------------------------------------------------------

TEST_P(Adam8bit, MatchesDequantisedFormulaWithNanRule) {
  for (AdamVariant variant : {AdamVariant::torch, AdamVariant::hf}) {
    const int64_t n = 700, block = 128, nb = 6;
    const double lr = 0.01, b1 = 0.9, b2 = 0.99, eps = 1e-8, wd = 0.05;
    std::vector<float> p0 = randn_vec(n, 3, 1.0);
    Tensor p = on(fvec(p0)), c1 = on(Tensor::zeros({n}, DType::u8)), c2 = on(Tensor::zeros({n}, DType::u8));
    Tensor a1 = on(Tensor::zeros({nb})), a2 = on(Tensor::zeros({nb}));
    const auto& qs = quant_map8(true);
    const auto& qu = quant_map8(false);
    for (int64_t t = 1; t <= 4; ++t) {
      std::vector<float> g = randn_vec(n, 100 + t, 0.01);
      if (t == 2) {
        g[5] = std::numeric_limits<float>::quiet_NaN();
        g[300] = std::numeric_limits<float>::infinity();
      }
      // The reference from the current (device) state, in double.
      const auto P = back(p).to_vector<double>();
      const auto C1 = back(c1).to_vector<uint8_t>(), C2 = back(c2).to_vector<uint8_t>();
      const auto A1 = back(a1).to_vector<double>(), A2 = back(a2).to_vector<double>();
      std::vector<double> Pn(P), Mn(n), Vn(n), am1(nb, 0), am2(nb, 0);
      const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = i / block;
        if (!std::isfinite(g[i])) continue;  // m = v = 0, parameter untouched
        Mn[i] = b1 * qs[C1[i]] * A1[b] + (1 - b1) * g[i];
        Vn[i] = b2 * qu[C2[i]] * A2[b] + (1 - b2) * double(g[i]) * g[i];
        if (variant == AdamVariant::torch) {
          Pn[i] = P[i] - lr * ((Mn[i] / bc1) / (std::sqrt(Vn[i] / bc2) + eps) + wd * P[i]);
        } else {
          const double p1 = P[i] - lr * std::sqrt(bc2) / bc1 * Mn[i] / (std::sqrt(Vn[i]) + eps);
          Pn[i] = p1 - lr * wd * p1;
        }
        am1[b] = std::max(am1[b], std::abs(Mn[i]));
        am2[b] = std::max(am2[b], std::abs(Vn[i]));
      }
      adamw_step_8bit(p, on(fvec(g)), c1, a1, c2, a2, lr, b1, b2, eps, wd, t, variant, block);
      const auto pv = vback(p), a1v = vback(a1), a2v = vback(a2);
      const auto c1v = back(c1).to_vector<uint8_t>(), c2v = back(c2).to_vector<uint8_t>();
      int code_diffs = 0;
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(pv[i], Pn[i], 2e-6 * std::max(1.0, std::abs(Pn[i]))) << "step " << t << " i " << i;
        const int64_t b = i / block;
        const int w1 = ref_code(qs, am1[b] > 0 ? Mn[i] / am1[b] : 0.0, true);
        const int w2 = ref_code(qu, am2[b] > 0 ? Vn[i] / am2[b] : 0.0, false);
        code_diffs += (c1v[i] != w1) + (c2v[i] != w2);
        EXPECT_LE(std::abs(int(c1v[i]) - w1), 1) << i;
        EXPECT_LE(std::abs(int(c2v[i]) - w2), 1) << i;
      }
      EXPECT_LE(code_diffs, 4) << "codes off by one only at f32-vs-f64 midpoint ties";
      for (int64_t b = 0; b < nb; ++b) {
        EXPECT_NEAR(a1v[b], am1[b], 1e-6 * am1[b]) << b;
        EXPECT_NEAR(a2v[b], am2[b], 1e-6 * am2[b] + 1e-12) << b;
      }
      if (t == 2) {
        EXPECT_EQ(pv[5], P[5]);
        EXPECT_EQ(pv[300], P[300]);
        EXPECT_EQ(c1v[5], 127);  // m = 0
        EXPECT_EQ(c2v[300], 0);  // v = 0
      }
    }
  }
}

TEST_P(Adam8bit, BitIdenticalToCpu) {
  if (on_cpu()) GTEST_SKIP() << "compares a device with the CPU";
  const int64_t n = 5000, block = 256, nb = quant_blocks(n, block);
  for (AdamVariant variant : {AdamVariant::torch, AdamVariant::hf}) {
    Tensor pc = fvec(randn_vec(n, 7, 1.0)), pd = on(pc.clone());
    Tensor c1c = Tensor::zeros({n}, DType::u8), c2c = Tensor::zeros({n}, DType::u8), a1c = Tensor::zeros({nb}),
           a2c = Tensor::zeros({nb});
    Tensor c1d = on(c1c.clone()), c2d = on(c2c.clone()), a1d = on(a1c.clone()), a2d = on(a2c.clone());
    for (int64_t t = 1; t <= 3; ++t) {
      Tensor g = fvec(randn_vec(n, 50 + t, 0.01));
      adamw_step_8bit(pc, g, c1c, a1c, c2c, a2c, 1e-3, 0.9, 0.999, 1e-8, 0.01, t, variant, block);
      adamw_step_8bit(pd, on(g), c1d, a1d, c2d, a2d, 1e-3, 0.9, 0.999, 1e-8, 0.01, t, variant, block);
    }
    EXPECT_EQ(pc.to_vector<float>(), back(pd).to_vector<float>());
    EXPECT_EQ(c1c.to_vector<uint8_t>(), back(c1d).to_vector<uint8_t>());
    EXPECT_EQ(c2c.to_vector<uint8_t>(), back(c2d).to_vector<uint8_t>());
    EXPECT_EQ(a1c.to_vector<float>(), back(a1d).to_vector<float>());
    EXPECT_EQ(a2c.to_vector<float>(), back(a2d).to_vector<float>());
    // f32 AdamW, both variants
    Tensor qc = fvec(randn_vec(n, 9, 1.0)), qd = on(qc.clone());
    Tensor mc = Tensor::zeros({n}), vc = Tensor::zeros({n}), md = on(mc.clone()), vd = on(vc.clone());
    for (int64_t t = 1; t <= 3; ++t) {
      Tensor g = fvec(randn_vec(n, 70 + t, 0.01));
      adamw_step(qc, g, mc, vc, 1e-3, 0.9, 0.999, 1e-6, 0.1, t, variant);
      adamw_step(qd, on(g), md, vd, 1e-3, 0.9, 0.999, 1e-6, 0.1, t, variant);
    }
    EXPECT_EQ(qc.to_vector<float>(), back(qd).to_vector<float>());
    EXPECT_EQ(vc.to_vector<float>(), back(vd).to_vector<float>());
  }
  // quantise / dequantise
  Tensor x = fvec(randn_vec(n, 11, 3.0));
  Tensor cc = Tensor::zeros({n}, DType::u8), ac = Tensor::zeros({nb}), cd = on(cc.clone()), ad = on(ac.clone());
  quantize_blockwise8(x, cc, ac, block, true);
  quantize_blockwise8(on(x), cd, ad, block, true);
  EXPECT_EQ(cc.to_vector<uint8_t>(), back(cd).to_vector<uint8_t>());
  EXPECT_EQ(ac.to_vector<float>(), back(ad).to_vector<float>());
  EXPECT_EQ(dequantize_blockwise8(cc, ac, block, true).to_vector<float>(),
            back(dequantize_blockwise8(cd, ad, block, true)).to_vector<float>());
}

// ---- SGD-SaI step ----------------------------------------------------------------------------------

TEST_P(SgdSaiKernel, MomentumAndNoMomentum) {
  const double lr = 0.05, mu = 0.8, wd = 0.1;
  const float s = 3.5f;
  std::vector<float> p0 = randn_vec(9, 21, 1.0);
  Tensor p = on(fvec(p0)), buf = on(Tensor::zeros({9})), q = on(fvec(p0));
  std::vector<double> P(p0.begin(), p0.end()), B(9, 0), Q(P);
  for (int t = 1; t <= 4; ++t) {
    std::vector<float> g = randn_vec(9, 30 + t, 0.2);
    sgd_sai_step(p, on(fvec(g)), buf, on(Tensor::scalar(s)), lr, mu, wd, t == 1);
    sgd_sai_step(q, on(fvec(g)), Tensor(), on(Tensor::scalar(s)), lr, 0.0, wd, t == 1);
    for (int i = 0; i < 9; ++i) {
      B[i] = t == 1 ? g[i] : mu * B[i] + (1 - mu) * g[i];  // no (1 - mu) on the first step
      P[i] = P[i] * (1 - lr * wd) - lr * s * B[i];
      Q[i] = Q[i] * (1 - lr * wd) - lr * s * g[i];
    }
    const auto pv = vback(p), bv = vback(buf), qv = vback(q);
    for (int i = 0; i < 9; ++i) {
      EXPECT_NEAR(pv[i], P[i], 1e-6 * std::max(1.0, std::abs(P[i]))) << t << " " << i;
      EXPECT_NEAR(bv[i], B[i], 1e-7) << t << " " << i;
      EXPECT_NEAR(qv[i], Q[i], 1e-6 * std::max(1.0, std::abs(Q[i]))) << t << " " << i;
    }
  }
  if (!on_cpu()) {  // bit-identical to the CPU kernel
    Tensor pc = fvec(p0), bc = Tensor::zeros({9});
    Tensor pd = on(pc.clone()), bd = on(bc.clone());
    for (int t = 1; t <= 3; ++t) {
      Tensor g = fvec(randn_vec(9, 40 + t, 0.2));
      sgd_sai_step(pc, g, bc, Tensor::scalar(s), lr, mu, wd, t == 1);
      sgd_sai_step(pd, on(g), bd, on(Tensor::scalar(s)), lr, mu, wd, t == 1);
    }
    EXPECT_EQ(pc.to_vector<float>(), back(pd).to_vector<float>());
    EXPECT_EQ(bc.to_vector<float>(), back(bd).to_vector<float>());
  }
}

// Paged storage (core/paged.h) on the device under test: file-backed on the CPU, managed memory
// on CUDA (prefetched before use). Kernels on paged tensors give the same bits as on ordinary
// ones, and the accounting counts the paged bytes while they live.
TEST_P(PagedStorage, KernelsOnPagedStateMatchOrdinaryAndAreCounted) {
  const int64_t n = 4096;
  const MemoryStats before = memory_stats(dev().type);
  Tensor pm, pv;
  {
    PagedAllocGuard guard(1000, "");
    pm = on(Tensor::zeros({n}));  // made on the CPU, then moved: the copy on the device is paged too
    pv = Tensor::zeros({n}, DType::f32, dev());
    Tensor small = Tensor::zeros({10}, DType::f32, dev());
    EXPECT_FALSE(small.storage()->paged());
  }
  EXPECT_TRUE(pv.storage()->paged());
  EXPECT_TRUE(pm.storage()->paged());
  EXPECT_EQ(memory_stats(dev().type).paged_of(MemCategory::other) - before.paged_of(MemCategory::other),
            int64_t(2 * n * 4));
  Tensor m = on(Tensor::zeros({n})), v = on(Tensor::zeros({n}));
  Tensor p1 = on(fvec(randn_vec(n, 1, 1.0))), p2 = on(back(p1).clone());
  for (int64_t t = 1; t <= 3; ++t) {
    Tensor g = on(fvec(randn_vec(n, 80 + t, 0.01)));
    pm.storage()->prefetch();
    pv.storage()->prefetch();
    adamw_step(p1, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.01, t);
    adamw_step(p2, g, pm, pv, 1e-3, 0.9, 0.999, 1e-8, 0.01, t);
  }
  EXPECT_EQ(back(p1).to_vector<float>(), back(p2).to_vector<float>());
  EXPECT_EQ(back(v).to_vector<float>(), back(pv).to_vector<float>());
  pm = Tensor();
  pv = Tensor();
  EXPECT_EQ(memory_stats(dev().type).paged_of(MemCategory::other), before.paged_of(MemCategory::other));
}

TEST(OptimKernelErrors, NameTheProblem) {
  Tensor x = Tensor::zeros({300});
  std::string e = error_of([&] {
    quantize_blockwise8(x, Tensor::zeros({300}, DType::u8), Tensor::zeros({1}), 256, true);
  });
  EXPECT_TRUE(has(e, "quantize_blockwise8") && has(e, "absmax") && has(e, "needs 2")) << e;
  e = error_of([&] { quantize_blockwise8(x, Tensor::zeros({300}, DType::u8), Tensor::zeros({3}), 100, true); });
  EXPECT_TRUE(has(e, "block size") && has(e, "100")) << e;
  e = error_of([&] {
    sgd_sai_step(x, Tensor::zeros({300}), Tensor(), Tensor::zeros({2}), 0.1, 0.0, 0.0, true);
  });
  EXPECT_TRUE(has(e, "sgd_sai_step") && has(e, "scale")) << e;
}
