// The CPU attention kernels work on 64 x 64 tiles (kernels/cpu/attention.cpp). These cases
// span several query and key blocks, with the causal limit falling inside blocks, a
// causal offset S - T of either sign (T > S leaves whole blocks of rows with no key), GQA,
// and head dims that are not a multiple of the vector width; outputs and gradients are
// checked against the double-precision loops of reference.h, and the bits against other
// thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/memory.h"
#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

struct Case {
  int64_t B, H, Hkv, T, S, D;
  bool causal;
  int64_t window = 0;  // sliding window (0 = none)
};

const Case kCases[] = {
    {1, 4, 2, 150, 200, 24, true},   // S > T: offset 50, last key block partial
    {1, 2, 1, 200, 130, 16, true},   // T > S: rows t < 70 see no key
    {2, 2, 2, 70, 129, 8, false},    // two query blocks, three key blocks
    {1, 1, 1, 129, 129, 33, true},   // odd head dim, one-row last block
    // Sliding windows: not a multiple of the 64-key tile, so the window's start falls inside
    // a block and whole blocks before it are skipped (rows 134+ of a 200-row query skip key
    // block 0 and start inside block 1).
    {1, 2, 1, 200, 200, 16, true, 70},
    {1, 4, 2, 150, 230, 8, true, 37},   // S > T: the window starts before the queries' first position
    {1, 2, 2, 200, 130, 8, true, 50},   // T > S: empty rows and windowed rows together
    {1, 2, 1, 192, 192, 8, true, 64},   // window == the tile: each row's keys span at most 2 blocks
    {1, 1, 1, 100, 100, 8, true, 1},    // each row sees only itself
    {1, 1, 1, 80, 80, 8, true, 500},    // a window longer than the sequence: plain causal
};

TEST(AttentionTilesCpu, ManyBlocksMatchReference) {
  Generator gen(61);
  for (DType dt : {DType::f64, DType::f32}) {
    const double ftol = dt == DType::f64 ? 1e-11 : 3e-5, btol = dt == DType::f64 ? 1e-10 : 2e-4;
    for (const Case& cs : kCases) {
      Tensor q = Tensor::randn({cs.B, cs.H, cs.T, cs.D}, gen, dt);
      Tensor k = Tensor::randn({cs.B, cs.Hkv, cs.S, cs.D}, gen, dt);
      Tensor v = Tensor::randn({cs.B, cs.Hkv, cs.S, cs.D}, gen, dt);
      Tensor go = Tensor::randn({cs.B, cs.H, cs.T, cs.D}, gen, dt);
      const double scale = 1.0 / std::sqrt(static_cast<double>(cs.D));
      AttentionOut o = attention(q, k, v, cs.causal, scale, cs.window);
      RefAttention r = ref_attention(q, k, v, cs.causal, scale, cs.window);
      const std::string what =
          "T=" + std::to_string(cs.T) + " S=" + std::to_string(cs.S) + " window=" + std::to_string(cs.window);
      expect_close(vec(o.out), r.out, ftol, ("out " + what).c_str());
      auto lse = vec(o.lse);
      for (size_t i = 0; i < lse.size(); ++i) {
        if (std::isinf(r.lse[i])) {
          EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "row " << i << " " << what;
          lse[i] = r.lse[i] = 0;
        }
      }
      expect_close(lse, r.lse, ftol, ("lse " + what).c_str());
      AttentionGrads g = attention_backward(go, q, k, v, o.out, o.lse, cs.causal, scale, cs.window);
      RefAttentionGrads rg = ref_attention_backward(go, q, k, v, cs.causal, scale, cs.window);
      expect_close(vec(g.dq), rg.dq, btol, ("dq " + what).c_str());
      expect_close(vec(g.dk), rg.dk, btol, ("dk " + what).c_str());
      expect_close(vec(g.dv), rg.dv, btol, ("dv " + what).c_str());
    }
  }
}

// Row 0 of causal self-attention sees one key: P = 1, O = v_0, and its dq is exactly zero.
TEST(AttentionTilesCpu, SingleKeyRowHasExactlyZeroDq) {
  Generator gen(62);
  const int64_t T = 100, D = 16;
  Tensor q = Tensor::randn({1, 2, T, D}, gen), k = Tensor::randn({1, 2, T, D}, gen);
  Tensor v = Tensor::randn({1, 2, T, D}, gen), go = Tensor::randn({1, 2, T, D}, gen);
  AttentionOut o = attention(q, k, v, true, 0.25);
  AttentionGrads g = attention_backward(go, q, k, v, o.out, o.lse, true, 0.25);
  const auto dq = vec(g.dq), out = vec(o.out), vv = vec(v);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < D; ++i) {
      EXPECT_EQ(dq[h * T * D + i], 0.0) << "head " << h << " dim " << i;
      EXPECT_EQ(out[h * T * D + i], vv[h * T * D + i]) << "head " << h << " dim " << i;
    }
}

// With window 1 every row sees only its own key: O = V exactly and dq is exactly zero, in
// every block (the one-key rule must find the key wherever it falls in the tile).
TEST(AttentionTilesCpu, WindowOfOneIsIdentityOnValues) {
  Generator gen(64);
  const int64_t T = 150, D = 8;
  Tensor q = Tensor::randn({1, 1, T, D}, gen), k = Tensor::randn({1, 1, T, D}, gen);
  Tensor v = Tensor::randn({1, 1, T, D}, gen), go = Tensor::randn({1, 1, T, D}, gen);
  AttentionOut o = attention(q, k, v, true, 0.3, 1);
  AttentionGrads g = attention_backward(go, q, k, v, o.out, o.lse, true, 0.3, 1);
  const auto dq = vec(g.dq), dk = vec(g.dk), out = vec(o.out), vv = vec(v), gv = vec(go), dv = vec(g.dv);
  for (int64_t i = 0; i < T * D; ++i) {
    ASSERT_EQ(dq[i], 0.0) << "element " << i;
    ASSERT_EQ(dk[i], 0.0) << "element " << i;
    ASSERT_EQ(out[i], vv[i]) << "element " << i;
    ASSERT_EQ(dv[i], gv[i]) << "element " << i;
  }
}

TEST(AttentionTilesCpu, SameBitsForAnyThreadCount) {
  Generator gen(63);
  const int64_t B = 2, H = 4, Hkv = 2, T = 160, S = 160, D = 32;
  Tensor q = Tensor::randn({B, H, T, D}, gen), k = Tensor::randn({B, Hkv, S, D}, gen);
  Tensor v = Tensor::randn({B, Hkv, S, D}, gen), go = Tensor::randn({B, H, T, D}, gen);
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    AttentionOut o = attention(q, k, v, true, 0.2);
    AttentionGrads g = attention_backward(go, q, k, v, o.out, o.lse, true, 0.2);
    AttentionOut ow = attention(q, k, v, true, 0.2, 45);  // and with a sliding window
    AttentionGrads gw = attention_backward(go, q, k, v, ow.out, ow.lse, true, 0.2, 45);
    std::vector<float> all;
    for (const Tensor& t : {o.out, o.lse, g.dq, g.dk, g.dv, ow.out, ow.lse, gw.dq, gw.dk, gw.dv}) {
      auto x = t.to_vector<float>();
      all.insert(all.end(), x.begin(), x.end());
    }
    runs.push_back(all);
  }
  omp_set_num_threads(saved);
  for (size_t r = 1; r < runs.size(); ++r) {
    ASSERT_EQ(runs[r].size(), runs[0].size());
    size_t diff = 0;
    for (size_t i = 0; i < runs[0].size(); ++i) diff += std::memcmp(&runs[r][i], &runs[0][i], sizeof(float)) != 0;
    EXPECT_EQ(diff, 0u) << "thread count " << r + 1 << " changed " << diff << " values";
  }
}

// The heads of [B, T, H * D] projections, read in place (transposed views, row stride H * D),
// give the same bits as contiguous copies, and the results come back in the same
// [B, T, H, D] memory order (so merging the heads is a view). f32 and f64, MHA and GQA,
// causal and windowed, with gout strided too.
TEST(AttentionTilesCpu, HeadViewsOfProjectionsGiveTheSameBitsInPlace) {
  Generator gen(64);
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t Hkv : {int64_t(4), int64_t(2)})
      for (int64_t window : {int64_t(0), int64_t(37)}) {
        const int64_t B = 2, H = 4, T = 130, D = 24;
        auto heads = [&](int64_t h) {  // [B, T, h*D] -> [B, h, T, D] view
          return Tensor::randn({B, T, h * D}, gen, dt).view({B, T, h, D}).transpose(1, 2);
        };
        const Tensor q = heads(H), k = heads(Hkv), v = heads(Hkv), go = heads(H);
        ASSERT_FALSE(q.is_contiguous());
        AttentionOut os = attention(q, k, v, true, 0.3, window);
        AttentionGrads gs = attention_backward(go, q, k, v, os.out, os.lse, true, 0.3, window);
        AttentionOut oc = attention(q.contiguous(), k.contiguous(), v.contiguous(), true, 0.3, window);
        AttentionGrads gc = attention_backward(go.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
                                               oc.out, oc.lse, true, 0.3, window);
        const std::string what = std::string(dtype_name(dt)) + " Hkv " + std::to_string(Hkv) + " window " +
                                 std::to_string(window);
        // Results in the inputs' [B, T, H, D] order: transposing back is contiguous.
        for (const Tensor* t : {&os.out, &gs.dq, &gs.dk, &gs.dv})
          EXPECT_TRUE(t->transpose(1, 2).is_contiguous()) << what;
        EXPECT_TRUE(oc.out.is_contiguous()) << what;
        const std::pair<const Tensor*, const Tensor*> pairs[] = {
            {&os.out, &oc.out}, {&os.lse, &oc.lse}, {&gs.dq, &gc.dq}, {&gs.dk, &gc.dk}, {&gs.dv, &gc.dv}};
        for (const auto& [a, b] : pairs) {
          const auto x = a->to(DType::f64).to_vector<double>(), y = b->to(DType::f64).to_vector<double>();
          ASSERT_EQ(x.size(), y.size());
          size_t diff = 0;
          for (size_t i = 0; i < x.size(); ++i) diff += std::memcmp(&x[i], &y[i], sizeof(double)) != 0;
          EXPECT_EQ(diff, 0u) << what << ": " << diff << " values differ";
        }
      }
}

// The same case through the allocator's accounting: reading the head views in place means
// the forward allocates exactly its results (out, lse) and the backward exactly dq, dk, dv
// (plus, with GQA, the per-query-head dK/dV it sums per group): no copy of any operand.
TEST(AttentionTilesCpu, HeadViewsAllocateOnlyTheResults) {
  Generator gen(65);
  const int64_t B = 2, H = 4, T = 70, D = 16;
  for (int64_t Hkv : {int64_t(4), int64_t(2)}) {
    auto heads = [&](int64_t h) {
      return Tensor::randn({B, T, h * D}, gen).view({B, T, h, D}).transpose(1, 2);
    };
    const Tensor q = heads(H), k = heads(Hkv), v = heads(Hkv), go = heads(H);
    const int64_t f = sizeof(float), q_bytes = B * H * T * D * f, kv_bytes = B * Hkv * T * D * f;
    reset_peak_memory();
    int64_t base = memory_stats().total_current;
    AttentionOut o = attention(q, k, v, true, 0.25);
    EXPECT_EQ(memory_stats().total_peak - base, q_bytes + B * H * T * f) << "forward, Hkv " << Hkv;
    reset_peak_memory();
    base = memory_stats().total_current;
    AttentionGrads g = attention_backward(go, q, k, v, o.out, o.lse, true, 0.25);
    const int64_t per_head_scratch = Hkv == H ? 0 : 2 * q_bytes;
    EXPECT_EQ(memory_stats().total_peak - base, q_bytes + 2 * kv_bytes + per_head_scratch) << "backward, Hkv " << Hkv;
  }
}

}  // namespace
