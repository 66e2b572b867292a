// matmul against a naive triple loop (reference.h), on every available device: the four
// transpose combinations, small (plain loop) and large (BLAS / cuBLAS) sizes, broadcast
// batch dims, a shared 2-D b, and strided views that BLAS can take directly (row- or
// column-major with a padded leading dim) or that need a copy; bf16 rounding; errors on
// the CPU.
#include <gtest/gtest.h>

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

// matmul of the CPU tensors a, b run on `dev` (layouts kept) against naive_matmul.
void expect_matmul(Device dev, const Tensor& a, const Tensor& b, bool ta, bool tb, const std::string& what) {
  Tensor got_dev = matmul(to_device_keep_layout(a, dev), to_device_keep_layout(b, dev), ta, tb);
  ASSERT_EQ(got_dev.device(), dev) << what;
  Tensor got = got_dev.to(Device::cpu());
  Tensor want = naive_matmul(a, b, ta, tb);
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), a.dtype()) << what;
  auto g = got.to_vector<double>(), w = want.to_vector<double>();
  const int64_t K = ta ? a.size(-2) : a.size(-1);
  const double tol = kernel_test::tol(dev, a.dtype(), a.dtype() == DType::f64 ? 1e-12 : 1e-6 * std::sqrt(static_cast<double>(K)));
  int bad = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (!(std::abs(g[i] - w[i]) <= tol * std::max(1.0, std::abs(w[i]))) && bad++ < 3)
      ADD_FAILURE() << what << " at " << i << ": got " << g[i] << " want " << w[i];
}

// Stored shape of the operand for op(X) of logical shape [r, c].
Shape stored(int64_t r, int64_t c, bool t) { return t ? Shape{c, r} : Shape{r, c}; }

}  // namespace

LATHE_DEVICE_TEST_SUITE(Matmul);

TEST_P(Matmul, AllTransposeCombinationsSmallAndLarge) {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(1);
    for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{5, 7, 3}, {40, 50, 30}, {1, 9, 4}, {6, 1, 5}}) {
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          Tensor a = Tensor::randn(stored(M, K, ta), g, dt), b = Tensor::randn(stored(K, N, tb), g, dt);
          expect_matmul(dev(), a, b, ta, tb,
                        std::string(dtype_name(dt)) + " M" + std::to_string(M) + " ta" + std::to_string(ta) + " tb" +
                            std::to_string(tb));
          // batched (batch > 1: small sizes take the parallel plain loop)
          Shape sa = stored(M, K, ta), sb = stored(K, N, tb);
          sa.insert(sa.begin(), 3);
          sb.insert(sb.begin(), 3);
          expect_matmul(dev(), Tensor::randn(sa, g, dt), Tensor::randn(sb, g, dt), ta, tb, "batched");
        }
    }
  }
}

TEST_P(Matmul, BroadcastBatchDimsAndShared2dB) {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(2);
    for (int64_t n : {4, 36}) {  // plain-loop and BLAS sizes
      Tensor a = Tensor::randn({2, 1, n, n + 1}, g, dt), b = Tensor::randn({3, n + 1, n + 2}, g, dt);
      Tensor y = back(matmul(on(a), on(b)));
      EXPECT_EQ(y.shape(), (Shape{2, 3, n, n + 2}));
      expect_matmul(dev(), a, b, false, false, "broadcast batch");
      Tensor w = Tensor::randn({n + 2, n + 1}, g, dt);  // shared [N, K] weight, used transposed
      expect_matmul(dev(), a, w, false, true, "shared 2-D b");
      expect_matmul(dev(), Tensor::randn({4, 5, n, n + 1}, g, dt), Tensor::randn({5, n + 1, 3}, g, dt), false, false,
                    "rank 4 vs 3");
    }
  }
}

// A weight shared by the batch with a's entries stacked row-major is one product of the
// stacked rows on the CPU; the layouts around that fold (padded rows, entries apart, a
// size-1 batch dim, a column-major a, a broadcast a) must give the same numbers.
TEST_P(Matmul, SharedWeightOverStackedBatchEntries) {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(5);
    const int64_t M = 37, K = 41, N = 35;  // odd, above the plain-loop size
    Tensor w = Tensor::randn({N, K}, g, dt), wk = Tensor::randn({K, N}, g, dt);
    Tensor a = Tensor::randn({3, 2, M, K}, g, dt);
    expect_matmul(dev(), a, w, false, true, "stacked, w transposed");
    expect_matmul(dev(), a, wk, false, false, "stacked, w plain");
    expect_matmul(dev(), Tensor::randn({3, 1, M, K}, g, dt), w, false, true, "size-1 batch dim");
    // rows padded (leading dim K+4): entries still follow at M * ld, so they fold
    expect_matmul(dev(), Tensor::randn({4, M, K + 4}, g, dt).narrow(2, 2, K), w, false, true, "padded rows");
    // entries M+3 rows apart: they do not stack, one product per entry
    expect_matmul(dev(), Tensor::randn({4, M + 3, K}, g, dt).narrow(1, 1, M), wk, false, false, "entries apart");
    // batch dims in swapped order: the inner batch dim's stride is not M * ld
    expect_matmul(dev(), Tensor::randn({2, 3, M, K}, g, dt).transpose(0, 1), w, false, true, "swapped batch dims");
    // a column-major and a transposed by flag
    expect_matmul(dev(), Tensor::randn({3, K, M}, g, dt).transpose(1, 2), w, false, true, "column-major a");
    expect_matmul(dev(), Tensor::randn({3, K, M}, g, dt), w, true, true, "ta");
    // a itself broadcast over a batch dim
    expect_matmul(dev(), Tensor::randn({1, M, K}, g, dt).expand({3, M, K}), w, false, true, "broadcast a");
  }
}

TEST_P(Matmul, StridedViews) {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(3);
    for (int64_t s : {5, 40}) {
      Tensor big = Tensor::randn({2, s + 7, s + 9}, g, dt);
      // row-major with leading dim larger than the row: a column slice
      Tensor a_rows = big.narrow(2, 3, s);                // [2, s+7, s]
      // column-major: a transposed contiguous matrix
      Tensor a_cols = Tensor::randn({2, s, s + 7}, g, dt).transpose(1, 2);  // [2, s+7, s]
      // neither unit stride: stepped slices in both dims
      Tensor a_none = Tensor::randn({2, 2 * s + 14, 2 * s}, g, dt).slice(1, 0, 2 * s + 14, 2).slice(2, 0, 2 * s, 2);
      Tensor b = Tensor::randn({s, 6}, g, dt);
      Tensor b_cols = Tensor::randn({6, s}, g, dt).transpose(0, 1);  // [s, 6] column-major
      // a zero stride inside the matrix: one row repeated
      Tensor b_rep = Tensor::randn({1, 6}, g, dt).expand({s, 6});
      for (const Tensor& a : {a_rows, a_cols, a_none})
        for (const Tensor& bb : {b, b_cols, b_rep}) expect_matmul(dev(), a, bb, false, false, "strided");
      // transposed flags on strided views
      expect_matmul(dev(), a_cols, big.narrow(2, 0, s + 1), true, false, "ta on column-major view");
      expect_matmul(dev(), big.narrow(1, 0, 3).narrow(2, 0, s), a_rows, false, true, "tb on row slice");
      // a batch dim that is itself strided (every other batch)
      Tensor sel = Tensor::randn({4, s, s}, g, dt).slice(0, 0, 4, 2);
      expect_matmul(dev(), sel, b, false, false, "strided batch");
    }
  }
}

TEST_P(Matmul, Bf16RoundsTheF32Product) {
  Generator g(4);
  for (int64_t n : {6, 48}) {
    Tensor a = Tensor::randn({2, n, n + 3}, g, DType::bf16), b = Tensor::randn({n + 3, n}, g, DType::bf16);
    Tensor y = back(matmul(on(a), on(b)));
    ASSERT_EQ(y.dtype(), DType::bf16);
    // the f32 product on the same device, rounded once, is what the bf16 product must be
    Tensor ref = back(matmul(on(a.to(DType::f32)), on(b.to(DType::f32))));
    Tensor exact = naive_matmul(a, b, false, false);
    auto yv = y.to_vector<float>(), rv = ref.to_vector<float>();
    auto ev = exact.to_vector<double>();
    for (size_t i = 0; i < yv.size(); ++i) {
      if (on_cpu()) {
        EXPECT_EQ(float_to_bits(yv[i]), float_to_bits(bf16_to_float(float_to_bf16(rv[i])))) << i;
      } else {  // cuBLAS's bf16 and f32 GEMMs may sum in another order: one bf16 step apart at most
        EXPECT_LE(std::abs(int{float_to_bf16(yv[i]).bits} - int{float_to_bf16(rv[i]).bits}), 1) << i;
      }
      EXPECT_NEAR(yv[i], ev[i], 1e-2 * std::max(1.0, std::abs(ev[i])));  // bf16 has 8 bits of mantissa
    }
  }
}

TEST_P(Matmul, EmptyInnerDimGivesZeros) {
  Tensor y = back(matmul(on(Tensor::zeros({3, 0})), on(Tensor::zeros({0, 4}))));
  EXPECT_EQ(y.shape(), (Shape{3, 4}));
  for (float v : y.to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

TEST(MatmulCpu, Errors) {
  std::string e = error_of([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})); });
  EXPECT_TRUE(has(e, "matmul") && has(e, "[2, 3]") && has(e, "[4, 5]")) << e;
  e = error_of([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({2, 5}), true, true); });
  EXPECT_TRUE(has(e, "matmul") && has(e, "transposed")) << e;
  e = error_of([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 5}, DType::f64)); });
  EXPECT_TRUE(has(e, "matmul") && has(e, "f32") && has(e, "f64")) << e;
  e = error_of([] { matmul(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 3, 5})); });
  EXPECT_TRUE(has(e, "matmul") && has(e, "[2]") && has(e, "[3]") && has(e, "[2, 2, 3]")) << e;
  e = error_of([] { matmul(Tensor::zeros({3}), Tensor::zeros({3, 5})); });
  EXPECT_TRUE(has(e, "matmul") && has(e, "2 dims")) << e;
  e = error_of([] { matmul(Tensor::zeros({2, 3}, DType::i64), Tensor::zeros({3, 5}, DType::i64)); });
  EXPECT_TRUE(has(e, "matmul") && has(e, "i64")) << e;
}

// matmul_acc_ adds alpha op(a) op(b) to what out holds, over the paths matmul takes: the
// plain loop (small batched products), one folded GEMM (a weight shared by the batch),
// per-entry GEMMs, strided and transposed operands; bf16 accumulates in f32 and rounds once.
TEST_P(Matmul, AccumulateAddsTheScaledProductInPlace) {
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    Generator g(6);
    auto rn = [&](const Shape& s) { return Tensor::randn(s, g, dt); };
    struct Case {
      Tensor a, b;
      bool ta, tb;
      const char* what;
    };
    const std::vector<Case> cases = {
        {rn({5, 7}), rn({7, 3}), false, false, "small 2-D"},
        {rn({40, 50}), rn({30, 50}), false, true, "2-D, b transposed"},
        {rn({3, 4, 6}), rn({3, 6, 5}), false, false, "small batched (plain loop)"},
        {rn({3, 2, 37, 41}), rn({35, 41}), false, true, "shared weight, batch folded"},
        {rn({4, 40, 41}).narrow(1, 1, 37), rn({41, 35}), false, false, "entries apart (one GEMM each)"},
        {rn({3, 41, 37}), rn({35, 41}), true, true, "both transposed"},
        {rn({2, 45, 49}).narrow(2, 3, 40), rn({6, 40}).transpose(0, 1), false, false, "strided a, column-major b"},
    };
    for (const Case& c : cases)
      for (double alpha : {1.0, -0.37}) {
        const std::string what = std::string(dtype_name(dt)) + " " + c.what + " alpha " + std::to_string(alpha);
        const Tensor prod = naive_matmul(c.a, c.b, c.ta, c.tb);
        const Tensor out0 = Tensor::randn(prod.shape(), g, dt);
        Tensor out = on(out0.clone());
        matmul_acc_(out, to_device_keep_layout(c.a, dev()), to_device_keep_layout(c.b, dev()), c.ta, c.tb, alpha);
        const auto got = back(out).to_vector<double>(), o = out0.to_vector<double>(), p = prod.to_vector<double>();
        const int64_t K = c.ta ? c.a.size(-2) : c.a.size(-1);
        const double t =
            dt == DType::bf16 ? 1e-2 : tol(dt, dt == DType::f64 ? 1e-12 : 1e-6 * std::sqrt(static_cast<double>(K)));
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          const double want = o[i] + alpha * p[i];
          if (!(std::abs(got[i] - want) <= t * std::max(1.0, std::abs(want))) && bad++ < 3)
            ADD_FAILURE() << what << " at " << i << ": got " << got[i] << " want " << want;
        }
      }
  }
}

TEST_P(Matmul, AccumulateWithEmptyInnerDimKeepsOut) {
  Tensor out = on(Tensor::full({3, 4}, 2.5));
  matmul_acc_(out, on(Tensor::zeros({3, 0})), on(Tensor::zeros({0, 4})), false, false, 3.0);
  for (float v : back(out).to_vector<float>()) EXPECT_EQ(v, 2.5f);
}

TEST(MatmulCpu, AccumulateErrors) {
  std::string e = error_of([] { matmul_acc_(Tensor::zeros({2, 4}), Tensor::zeros({2, 3}), Tensor::zeros({3, 5})); });
  EXPECT_TRUE(has(e, "matmul_acc_") && has(e, "[2, 5]") && has(e, "[2, 4]")) << e;
  e = error_of([] { matmul_acc_(Tensor::zeros({5, 2}).transpose(0, 1), Tensor::zeros({2, 3}), Tensor::zeros({3, 5})); });
  EXPECT_TRUE(has(e, "matmul_acc_") && has(e, "contiguous")) << e;
  e = error_of([] {
    matmul_acc_(Tensor::zeros({2, 5}, DType::f64), Tensor::zeros({2, 3}), Tensor::zeros({3, 5}));
  });
  EXPECT_TRUE(has(e, "matmul_acc_") && has(e, "f64") && has(e, "f32")) << e;
  e = error_of([] { matmul_acc_(Tensor::zeros({2, 5}), Tensor::zeros({2, 3}), Tensor::zeros({4, 5})); });
  EXPECT_TRUE(has(e, "matmul_acc_") && has(e, "inner dims")) << e;
}
