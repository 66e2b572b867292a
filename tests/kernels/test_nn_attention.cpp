// rope / rope_tables and attention / attention_backward on every available device: rope
// tables and a rotation worked by hand, round trips and the adjoint identity; attention
// against the double-precision loops of reference.h (causal and not, T != S causal offset,
// empty causal rows, strided and bf16 inputs), grouped-query heads against explicitly
// repeated kv heads, the backward against central finite differences in f64 (taken on the
// device); error messages on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
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

// ---- rope -----------------------------------------------------------------------------------

LATHE_DEVICE_TEST_SUITE(RopeNn);
LATHE_DEVICE_TEST_SUITE(AttentionNn);

TEST_P(RopeNn, TablesAndTwoPositionRotationByHand) {
  // the tables are made on the CPU and moved, as the model's RoPE buffers are
  Tensor c, s;
  rope_tables(2, 4, 10000.0, 0, DType::f64, c, s);
  ASSERT_EQ(c.shape(), (Shape{2, 2}));
  // theta_0 = 1, theta_1 = 10000^(-2/4) = 0.01
  expect_close(vec(c), {1, 1, std::cos(1.0), std::cos(0.01)}, 1e-15, "cos table");
  expect_close(vec(s), {0, 0, std::sin(1.0), std::sin(0.01)}, 1e-15, "sin table");
  c = on(c);
  s = on(s);
  Tensor c5, s5;
  rope_tables(1, 4, 10000.0, 5, DType::f32, c5, s5);
  EXPECT_EQ(c5.dtype(), DType::f32);
  expect_close(vec(c5), {std::cos(5.0), std::cos(0.05)}, 1e-7, "cos at start 5");
  expect_close(vec(s5), {std::sin(5.0), std::sin(0.05)}, 1e-7, "sin at start 5");

  // x [1, 1, 2, 4]: position 0 is unchanged; position 1 rotates pairs (0, 2) by 1 rad, (1, 3) by 0.01.
  Tensor x = on(Tensor::from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8}, {1, 1, 2, 4}));
  const double c1 = std::cos(1.0), s1 = std::sin(1.0), c2 = std::cos(0.01), s2 = std::sin(0.01);
  expect_close(vback(rope(x, c, s)),
               {1, 2, 3, 4, 5 * c1 - 7 * s1, 6 * c2 - 8 * s2, 7 * c1 + 5 * s1, 8 * c2 + 6 * s2},
               tol(DType::f64, 1e-14), "rope by hand");
  expect_close(vback(rope(x, c, s, true)),
               {1, 2, 3, 4, 5 * c1 + 7 * s1, 6 * c2 + 8 * s2, 7 * c1 - 5 * s1, 8 * c2 - 6 * s2},
               tol(DType::f64, 1e-14), "inverse rope by hand");
}

TEST_P(RopeNn, RoundTripAdjointStridedAndBf16) {
  Generator gen(41);
  const int64_t B = 2, H = 3, T = 5, D = 8;
  Tensor c, s;
  rope_tables(T, D, 500.0, 3, DType::f64, c, s);
  // Strided x: made as [B, T, H, D] and viewed as [B, H, T, D].
  Tensor x = Tensor::randn({B, T, H, D}, gen, DType::f64).transpose(1, 2);
  ASSERT_FALSE(x.is_contiguous());
  const Tensor xd = on(x), cd = on(c), sd = on(s);
  Tensor y = rope(xd, cd, sd);
  expect_close(vback(rope(y, cd, sd, true)), vec(x), tol(DType::f64, 1e-14), "inverse undoes rope");
  // Reference loop on the logical values.
  expect_close(vback(y), ref_rope(vec(x), T, D, vec(c), vec(s)), tol(DType::f64, 1e-14), "rope vs loop");
  // The backward is the inverse rotation: <u, rope(x)> = <rope(u, inverse), x>.
  Tensor u = on(Tensor::randn({B, H, T, D}, gen, DType::f64));
  EXPECT_NEAR(dot(u, y), dot(rope(u, cd, sd, true), xd), 1e-12);

  Tensor xb = x.to(DType::bf16);
  Tensor cf, sf;
  rope_tables(T, D, 500.0, 3, DType::f32, cf, sf);
  Tensor yb = back(rope(on(xb), on(cf), on(sf)));
  EXPECT_EQ(yb.dtype(), DType::bf16);
  expect_close(vec(yb), vec(rope(xb.to(DType::f64), c, s)), tol(DType::bf16, 1e-2), "bf16 rope");
}

// ---- attention -----------------------------------------------------------------------------

// k [B, Hkv, S, D] -> [B, H, S, D] with each kv head repeated H / Hkv times.
Tensor repeat_heads(const Tensor& k, int64_t H) {
  const int64_t B = k.size(0), Hkv = k.size(1), S = k.size(2), D = k.size(3);
  return k.unsqueeze(2).expand({B, Hkv, H / Hkv, S, D}).reshape({B, H, S, D});
}

TEST_P(AttentionNn, ForwardMatchesReference) {
  Generator gen(51);
  struct Case {
    int64_t B, H, Hkv, T, S, D;
    bool causal;
    int64_t window = 0;
  };
  const Case cases[] = {{2, 2, 2, 5, 5, 4, false}, {2, 2, 2, 5, 5, 4, true}, {1, 4, 2, 3, 6, 8, true},
                        {1, 4, 2, 3, 6, 8, false}, {1, 2, 1, 6, 3, 4, true},  // T > S, empty rows
                        // sliding windows smaller than T, with and without a cached prefix
                        {2, 2, 2, 9, 9, 4, true, 3}, {1, 4, 2, 3, 8, 8, true, 2}, {1, 2, 1, 7, 7, 4, true, 1},
                        {1, 2, 1, 6, 3, 4, true, 2}};
  for (DType dt : {DType::f64, DType::f32}) {
    const double tl = tol(dt, dt == DType::f64 ? 1e-12 : 2e-5);
    for (const Case& cs : cases) {
      Tensor q = Tensor::randn({cs.B, cs.H, cs.T, cs.D}, gen, dt);
      Tensor k = Tensor::randn({cs.B, cs.Hkv, cs.S, cs.D}, gen, dt);
      Tensor v = Tensor::randn({cs.B, cs.Hkv, cs.S, cs.D}, gen, dt);
      const double scale = 1.0 / std::sqrt(static_cast<double>(cs.D));
      AttentionOut o = attention(on(q), on(k), on(v), cs.causal, scale, cs.window);
      RefAttention r = ref_attention(q, k, v, cs.causal, scale, cs.window);
      EXPECT_EQ(o.out.dtype(), dt);
      EXPECT_EQ(o.lse.shape(), (Shape{cs.B, cs.H, cs.T}));
      expect_close(vback(o.out), r.out, tl, "attention out");
      expect_close(vback(o.lse), r.lse, tl, "attention lse");
    }
  }
}

TEST_P(AttentionNn, GroupedQueryEqualsRepeatedKvHeads) {
  Generator gen(52);
  const int64_t B = 2, H = 4, Hkv = 2, T = 4, S = 6, D = 4;
  Tensor q = on(Tensor::randn({B, H, T, D}, gen, DType::f64));
  Tensor k = on(Tensor::randn({B, Hkv, S, D}, gen, DType::f64));
  Tensor v = on(Tensor::randn({B, Hkv, S, D}, gen, DType::f64));
  Tensor kr = repeat_heads(k, H), vr = repeat_heads(v, H);
  for (bool causal : {false, true}) {
    AttentionOut g = attention(q, k, v, causal, 0.4);
    AttentionOut f = attention(q, kr, vr, causal, 0.4);
    expect_close(vback(g.out), vback(f.out), tol(DType::f64, 1e-13), "GQA out vs repeated heads");
    expect_close(vback(g.lse), vback(f.lse), tol(DType::f64, 1e-13), "GQA lse vs repeated heads");
    // Backward: dk/dv of a kv head = the sum over the query heads reading it.
    Tensor gout = on(Tensor::randn({B, H, T, D}, gen, DType::f64));
    AttentionGrads gg = attention_backward(gout, q, k, v, g.out, g.lse, causal, 0.4);
    AttentionGrads gf = attention_backward(gout, q, kr, vr, f.out, f.lse, causal, 0.4);
    expect_close(vback(gg.dq), vback(gf.dq), tol(DType::f64, 1e-12), "GQA dq");
    auto dkr = vback(gf.dk), dvr = vback(gf.dv);
    std::vector<double> dk(B * Hkv * S * D, 0.0), dv(dk.size(), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < S * D; ++i) {
          dk[(b * Hkv + h / 2) * S * D + i] += dkr[(b * H + h) * S * D + i];
          dv[(b * Hkv + h / 2) * S * D + i] += dvr[(b * H + h) * S * D + i];
        }
    expect_close(vback(gg.dk), dk, tol(DType::f64, 1e-12), "GQA dk");
    expect_close(vback(gg.dv), dv, tol(DType::f64, 1e-12), "GQA dv");
  }
}

TEST_P(AttentionNn, StridedAndBf16Inputs) {
  Generator gen(53);
  const int64_t B = 1, H = 2, T = 5, D = 8;
  // [B, T, H, D] buffers viewed as [B, H, T, D], as a model's projections produce them.
  Tensor q = Tensor::randn({B, T, H, D}, gen, DType::f32).transpose(1, 2);
  Tensor k = Tensor::randn({B, T, H, D}, gen, DType::f32).transpose(1, 2);
  Tensor v = Tensor::randn({B, T, H, D}, gen, DType::f32).transpose(1, 2);
  ASSERT_FALSE(q.is_contiguous());
  AttentionOut o = attention(on(q), on(k), on(v), true, 0.35);
  RefAttention r = ref_attention(q, k, v, true, 0.35);
  expect_close(vback(o.out), r.out, tol(DType::f32, 2e-5), "strided attention out");

  Tensor qb = q.to(DType::bf16), kb = k.to(DType::bf16), vb = v.to(DType::bf16);
  AttentionOut ob = attention(on(qb), on(kb), on(vb), true, 0.35);
  EXPECT_EQ(ob.out.dtype(), DType::bf16);
  EXPECT_EQ(ob.lse.dtype(), DType::f32);
  RefAttention rb = ref_attention(qb, kb, vb, true, 0.35);
  expect_close(vback(ob.out), rb.out, tol(DType::bf16, 1e-2), "bf16 attention out");
  expect_close(vback(ob.lse), rb.lse, tol(DType::f32, 1e-5), "bf16 attention lse (f32)");
  AttentionGrads gb = attention_backward(ob.out, on(qb), on(kb), on(vb), ob.out, ob.lse, true, 0.35);
  EXPECT_EQ(gb.dk.dtype(), DType::bf16);
  for (double x : vback(gb.dq)) EXPECT_TRUE(std::isfinite(x));
}

TEST_P(AttentionNn, BackwardMatchesFiniteDifferences) {
  Generator gen(54);
  struct Case {
    int64_t H, Hkv, T, S;
    bool causal;
    int64_t window = 0;
  };
  const Case cases[] = {{2, 2, 3, 3, false}, {2, 2, 3, 3, true}, {4, 2, 3, 4, true}, {4, 2, 3, 4, false},
                        {2, 1, 4, 2, true},  // T > S, rows with no keys
                        {2, 2, 6, 6, true, 2}, {4, 2, 3, 7, true, 3}};  // sliding windows < T
  const int64_t B = 1, D = 3;
  for (const Case& cs : cases) {
    // all on the device; numeric_grad perturbs q, k, v there
    Tensor q = on(Tensor::randn({B, cs.H, cs.T, D}, gen, DType::f64));
    Tensor k = on(Tensor::randn({B, cs.Hkv, cs.S, D}, gen, DType::f64));
    Tensor v = on(Tensor::randn({B, cs.Hkv, cs.S, D}, gen, DType::f64));
    Tensor u = on(Tensor::randn({B, cs.H, cs.T, D}, gen, DType::f64));
    const double scale = 0.7;
    auto f = [&] { return dot(u, attention(q, k, v, cs.causal, scale, cs.window).out); };
    AttentionOut o = attention(q, k, v, cs.causal, scale, cs.window);
    AttentionGrads g = attention_backward(u, q, k, v, o.out, o.lse, cs.causal, scale, cs.window);
    expect_close(vback(g.dq), numeric_grad(q, f), 1e-7, "attention dq");
    expect_close(vback(g.dk), numeric_grad(k, f), 1e-7, "attention dk");
    expect_close(vback(g.dv), numeric_grad(v, f), 1e-7, "attention dv");
  }
}

TEST_P(AttentionNn, LargerProblemUsesThreads) {
  Generator gen(55);
  const int64_t B = 2, H = 4, Hkv = 2, T = 40, S = 48, D = 16;
  for (int64_t mode = 0; mode < 3; ++mode) {  // causal, not causal, causal with a window of 13
    const bool causal = mode != 1;
    const int64_t window = mode == 2 ? 13 : 0;
    Tensor q = Tensor::randn({B, H, T, D}, gen, DType::f32);
    Tensor k = Tensor::randn({B, Hkv, S, D}, gen, DType::f32);
    Tensor v = Tensor::randn({B, Hkv, S, D}, gen, DType::f32);
    Tensor go = Tensor::randn({B, H, T, D}, gen, DType::f32);
    AttentionOut o = attention(on(q), on(k), on(v), causal, 0.25, window);
    RefAttention r = ref_attention(q, k, v, causal, 0.25, window);
    expect_close(vback(o.out), r.out, tol(DType::f32, 2e-5), "threaded attention out");
    expect_close(vback(o.lse), r.lse, tol(DType::f32, 2e-5), "threaded attention lse");
    AttentionGrads g = attention_backward(on(go), on(q), on(k), on(v), o.out, o.lse, causal, 0.25, window);
    RefAttentionGrads rg = ref_attention_backward(go, q, k, v, causal, 0.25, window);
    expect_close(vback(g.dq), rg.dq, tol(DType::f32, 1e-4), "threaded dq");
    expect_close(vback(g.dk), rg.dk, tol(DType::f32, 1e-4), "threaded dk");
    expect_close(vback(g.dv), rg.dv, tol(DType::f32, 1e-4), "threaded dv");
  }
}

TEST(AttentionNnCpu, ErrorsNameOpAndShapes) {
  Tensor q = Tensor::zeros({1, 3, 4, 8}), k = Tensor::zeros({1, 2, 4, 8});
  try {
    attention(q, k, k, true, 1.0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("attention"), std::string::npos) << m;
    EXPECT_NE(m.find("[1, 3, 4, 8]"), std::string::npos) << m;
    EXPECT_NE(m.find("[1, 2, 4, 8]"), std::string::npos) << m;
  }
  EXPECT_THROW(attention(q, Tensor::zeros({1, 3, 4, 4}), Tensor::zeros({1, 3, 4, 4}), false, 1.0), Error);
  const Tensor kk = Tensor::zeros({1, 3, 4, 8});
  EXPECT_NO_THROW(attention(q, kk, kk, true, 1.0, 4));
  EXPECT_THROW(attention(q, kk, kk, /*causal=*/false, 1.0, /*window=*/4), Error);  // a window needs causal
  EXPECT_THROW(attention(q, kk, kk, true, 1.0, -1), Error);
  EXPECT_THROW(attention(q, q, Tensor::zeros({1, 3, 5, 8}), false, 1.0), Error);
  EXPECT_THROW(attention(Tensor::zeros({3, 4, 8}), k, k, false, 1.0), Error);
  AttentionOut o = attention(q, q, q, false, 1.0);
  EXPECT_THROW(attention_backward(q, q, q, q, o.out, o.lse.to(DType::f64), false, 1.0), Error);

  Tensor c, s;
  rope_tables(4, 8, 10000.0, 0, DType::f32, c, s);
  try {
    rope(Tensor::zeros({1, 1, 4, 7}), c, s);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[1, 1, 4, 7]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(rope(Tensor::zeros({1, 1, 5, 8}), c, s), Error);  // tables for 4 positions
  EXPECT_THROW(rope_tables(4, 7, 10000.0, 0, DType::f32, c, s), Error);
}

}  // namespace
