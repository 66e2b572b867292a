// The fused ops on the CPU: kernels::linear (+ linear_backward) and kernels::adamw_step_multi.
// linear is checked against plain loops in f64 (the formula, with GELU written out in its
// tanh form), and bit for bit against the separate matmul / add / gelu ops it replaced in
// the models (so CPU training runs keep their exact numbers); adamw_step_multi bit for bit
// against adamw_step on each tensor.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"

using namespace lathe;
using namespace lathe::kernels;

namespace {

Tensor randn(const Shape& s, DType dt, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  Tensor x = Tensor::randn(s, g, DType::f64);
  if (scale != 1.0) x = affine(x, scale, 0.0);
  return x.to(dt);
}

std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }

::testing::AssertionResult bits_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  if (!got.defined() || !want.defined())
    return ::testing::AssertionFailure() << what << ": undefined (got " << got.defined() << ", want "
                                         << want.defined() << ")";
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << what << ": " << got.shape_str() << " " << dtype_name(got.dtype())
                                         << " vs " << want.shape_str() << " " << dtype_name(want.dtype());
  Tensor g = got.contiguous(), w = want.contiguous();
  const size_t es = w.element_size();
  const auto* gp = static_cast<const unsigned char*>(g.raw_data());
  const auto* wp = static_cast<const unsigned char*>(w.raw_data());
  for (size_t i = 0; i < w.nbytes(); i += es)
    if (std::memcmp(gp + i, wp + i, es) != 0)
      return ::testing::AssertionFailure() << what << ": element " << i / es << " differs: " << vals(got)[i / es]
                                           << " vs " << vals(want)[i / es];
  return ::testing::AssertionSuccess();
}

double gelu_tanh_ref(double v) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * v * (1.0 + std::tanh(k * (v + 0.044715 * v * v * v)));
}
double gelu_tanh_grad_ref(double v) {
  const double k = std::sqrt(2.0 / M_PI);
  const double u = k * (v + 0.044715 * v * v * v), t = std::tanh(u);
  return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * v * v);
}

// The separate ops the models used before the fused op: matmul, + bias, gelu.
Tensor unfused(const Tensor& x, const Tensor& w, const Tensor& b, Activation act, Tensor* pre) {
  Tensor y = x.dim() == 1 ? matmul(x.unsqueeze(0), w, false, true).view({w.size(0)}) : matmul(x, w, false, true);
  if (b.defined()) y = binary(BinaryOp::add, y, b);
  if (pre) *pre = y;
  if (act == Activation::gelu_tanh) y = unary(UnaryOp::gelu_tanh, y);
  return y;
}

struct Case {
  Shape x;
  bool transposed;  // x is a transposed view (2-D only)
};
// {4, 300, 67}: enough rows for the CPU epilogue to split them over threads.
const Case kCases[] = {{{37, 67}, false}, {{2, 3, 67}, false}, {{67}, false}, {{37, 67}, true}, {{1, 67}, false},
                       {{4, 300, 67}, false}};
constexpr int64_t kN = 29, kK = 67;

Tensor make_x(const Case& c, DType dt, uint64_t seed) {
  if (!c.transposed) return randn(c.x, dt, seed);
  return randn({c.x[1], c.x[0]}, dt, seed).transpose(0, 1);
}

}  // namespace

TEST(LinearFused, ForwardMatchesFormulaInF64) {
  for (const Case& c : kCases) {
    Tensor x = make_x(c, DType::f64, 1), w = randn({kN, kK}, DType::f64, 2), b = randn({kN}, DType::f64, 3);
    for (bool with_bias : {false, true}) {
      for (Activation act : {Activation::none, Activation::gelu_tanh}) {
        Tensor pre;
        Tensor y = linear(x, w, with_bias ? b : Tensor(), act, &pre);
        Shape ys = c.x;
        ys.back() = kN;
        ASSERT_EQ(y.shape(), ys);
        const std::vector<double> xv = vals(x.contiguous()), wv = vals(w), bv = vals(b), yv = vals(y);
        const std::vector<double> pv = pre.defined() ? vals(pre) : std::vector<double>();
        const int64_t rows = x.numel() / kK;
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t n = 0; n < kN; ++n) {
            double z = with_bias ? bv[n] : 0.0;
            for (int64_t k = 0; k < kK; ++k) z += xv[i * kK + k] * wv[n * kK + k];
            const double want = act == Activation::gelu_tanh ? gelu_tanh_ref(z) : z;
            ASSERT_NEAR(yv[i * kN + n], want, 1e-12 * (1 + std::abs(want)))
                << shape_str(c.x) << " bias " << with_bias << " " << activation_name(act) << " at " << i << "," << n;
            if (act != Activation::none) {
              ASSERT_NEAR(pv[i * kN + n], z, 1e-12 * (1 + std::abs(z)));
            }
          }
        }
        if (act == Activation::none) {
          EXPECT_FALSE(pre.defined()) << "no pre-activation without an activation";
        }
      }
    }
  }
}

TEST(LinearFused, ForwardBitIdenticalToSeparateOps) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
    for (const Case& c : kCases) {
      Tensor x = make_x(c, dt, 11), w = randn({kN, kK}, dt, 12), b = randn({kN}, dt, 13);
      for (bool with_bias : {false, true}) {
        for (Activation act : {Activation::none, Activation::gelu_tanh}) {
          const std::string what = std::string(dtype_name(dt)) + " " + shape_str(c.x) + (c.transposed ? " (T)" : "") +
                                   (with_bias ? " bias " : " ") + activation_name(act);
          Tensor bb = with_bias ? b : Tensor();
          Tensor pre, pre_ref;
          Tensor y = linear(x, w, bb, act, &pre);
          EXPECT_TRUE(bits_equal(y, unfused(x, w, bb, act, &pre_ref), what));
          if (act != Activation::none) {
            EXPECT_TRUE(bits_equal(pre, pre_ref, what + " pre-activation"));
          }
          // Without asking for the pre-activation: same output.
          EXPECT_TRUE(bits_equal(linear(x, w, bb, act), y, what + " (no pre)"));
        }
      }
    }
  }
}

TEST(LinearFused, BackwardMatchesFormulaInF64) {
  for (const Case& c : kCases) {
    Tensor x = make_x(c, DType::f64, 21), w = randn({kN, kK}, DType::f64, 22), b = randn({kN}, DType::f64, 23);
    Shape ys = c.x;
    ys.back() = kN;
    Tensor dy = randn(ys, DType::f64, 24);
    for (Activation act : {Activation::none, Activation::gelu_tanh}) {
      Tensor pre;
      linear(x, w, b, act, &pre);
      LinearGrads g = linear_backward(dy, x, w, pre, act, true, true, true);
      ASSERT_EQ(g.dx.shape(), c.x);
      ASSERT_EQ(g.dw.shape(), w.shape());
      ASSERT_EQ(g.db.shape(), b.shape());
      const int64_t rows = x.numel() / kK;
      const std::vector<double> xv = vals(x.contiguous()), wv = vals(w), dyv = vals(dy), bv = vals(b);
      // dy' = dy * act'(z), z recomputed here from the formula
      std::vector<double> gp(rows * kN);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t n = 0; n < kN; ++n) {
          double z = bv[n];
          for (int64_t k = 0; k < kK; ++k) z += xv[i * kK + k] * wv[n * kK + k];
          gp[i * kN + n] = dyv[i * kN + n] * (act == Activation::gelu_tanh ? gelu_tanh_grad_ref(z) : 1.0);
        }
      const std::vector<double> dx = vals(g.dx), dw = vals(g.dw), db = vals(g.db);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t k = 0; k < kK; ++k) {
          double s = 0;
          for (int64_t n = 0; n < kN; ++n) s += gp[i * kN + n] * wv[n * kK + k];
          ASSERT_NEAR(dx[i * kK + k], s, 1e-11 * (1 + std::abs(s))) << "dx " << shape_str(c.x);
        }
      for (int64_t n = 0; n < kN; ++n) {
        double sb = 0;
        for (int64_t i = 0; i < rows; ++i) sb += gp[i * kN + n];
        ASSERT_NEAR(db[n], sb, 1e-11 * (1 + std::abs(sb))) << "db " << shape_str(c.x);
        for (int64_t k = 0; k < kK; ++k) {
          double s = 0;
          for (int64_t i = 0; i < rows; ++i) s += gp[i * kN + n] * xv[i * kK + k];
          ASSERT_NEAR(dw[n * kK + k], s, 1e-11 * (1 + std::abs(s))) << "dw " << shape_str(c.x);
        }
      }
      // Only what is asked for.
      LinearGrads only_dw = linear_backward(dy, x, w, pre, act, false, true, false);
      EXPECT_FALSE(only_dw.dx.defined());
      EXPECT_FALSE(only_dw.db.defined());
      EXPECT_TRUE(bits_equal(only_dw.dw, g.dw, "dw alone"));
    }
  }
}

// The activation's gradient and the bias gradient come from one fused pass on the CPU; they
// must keep the bits of the separate ops (unary backward, sum_to_shape) and of the products
// built on them, for any thread count. N = 200 spans several 64-column blocks (one partial).
TEST(LinearFused, BackwardBitIdenticalToSeparateOps) {
  const int saved = omp_get_max_threads();
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    for (int64_t N : {kN, int64_t(200)}) {
      for (const Shape& xs : {Shape{37, kK}, Shape{4, 300, kK}}) {
        Tensor x = randn(xs, dt, 41), w = randn({N, kK}, dt, 42), b = randn({N}, dt, 43);
        Shape ys = xs;
        ys.back() = N;
        Tensor dy = randn(ys, dt, 44);
        Tensor pre;
        linear(x, w, b, Activation::gelu_tanh, &pre);
        const std::string what = std::string(dtype_name(dt)) + " " + shape_str(xs) + " N " + std::to_string(N);
        const Tensor g = unary_backward(UnaryOp::gelu_tanh, pre, Tensor(), dy);
        const Tensor db_ref = sum_to_shape(g, {N});
        for (int threads : {1, 2, 3}) {
          omp_set_num_threads(threads);
          // The products at the same thread count: the OpenMP OpenBLAS splits them by it.
          const Tensor dx_ref = matmul(g, w, false, false);
          const Tensor dw_ref = matmul(g.reshape({-1, N}), x.reshape({-1, kK}), true, false);
          const LinearGrads r = linear_backward(dy, x, w, pre, Activation::gelu_tanh, true, true, true);
          const std::string wt = what + " threads " + std::to_string(threads);
          EXPECT_TRUE(bits_equal(r.db, db_ref, wt + " db"));
          EXPECT_TRUE(bits_equal(r.dx, dx_ref, wt + " dx"));
          EXPECT_TRUE(bits_equal(r.dw, dw_ref, wt + " dw"));
          // Without the bias gradient: the same dx.
          const LinearGrads nb = linear_backward(dy, x, w, pre, Activation::gelu_tanh, true, false, false);
          EXPECT_FALSE(nb.db.defined());
          EXPECT_TRUE(bits_equal(nb.dx, dx_ref, wt + " dx without db"));
        }
        omp_set_num_threads(saved);
        // A strided dy (the general path) gives the same bits too.
        if (xs.size() == 2) {
          Tensor dyt = randn({N, xs[0]}, dt, 44).transpose(0, 1);
          const Tensor gt = unary_backward(UnaryOp::gelu_tanh, pre, Tensor(), dyt);
          const LinearGrads r = linear_backward(dyt, x, w, pre, Activation::gelu_tanh, true, true, true);
          EXPECT_TRUE(bits_equal(r.db, sum_to_shape(gt, {N}), what + " strided dy, db"));
        }
      }
    }
  }
}

TEST(LinearFused, EmptyAndErrors) {
  Tensor w = randn({kN, kK}, DType::f32, 31), b = randn({kN}, DType::f32, 32);
  EXPECT_EQ(linear(Tensor::zeros({0, kK}), w, b, Activation::gelu_tanh).shape(), (Shape{0, kN}));
  // K = 0: the bias alone (an empty sum), through the activation.
  Tensor y0 = linear(Tensor::zeros({3, 0}), Tensor::zeros({kN, 0}), b, Activation::gelu_tanh);
  EXPECT_TRUE(bits_equal(y0, unary(UnaryOp::gelu_tanh, b.unsqueeze(0).expand({3, kN}).contiguous()), "K = 0"));
  auto msg = [](auto f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  const std::string bad_k = msg([&] { linear(Tensor::zeros({4, kK + 1}), w, b); });
  EXPECT_NE(bad_k.find("linear"), std::string::npos) << bad_k;
  EXPECT_NE(bad_k.find("[4, 68]"), std::string::npos) << bad_k;
  EXPECT_NE(msg([&] { linear(Tensor::zeros({4, kK}), w, Tensor::zeros({kN + 1})); }).find("bias"), std::string::npos);
  EXPECT_NE(msg([&] { linear(Tensor::zeros({4, kK}, DType::f64), w, b); }).find("dtype"), std::string::npos);
  EXPECT_NE(msg([&] { linear_backward(Tensor::zeros({4, kN}), Tensor::zeros({4, kK}), w, Tensor(),
                                      Activation::gelu_tanh, true, true, true); })
                .find("pre-activation"),
            std::string::npos);
}

// ---- adamw_step_multi ---------------------------------------------------------------------------

TEST(AdamWStepMulti, BitIdenticalToPerTensorSteps) {
  const std::vector<Shape> shapes{{37, 67}, {129}, {0}, {1}, {5, 3, 7}};
  std::vector<Tensor> p1, p2, g1, g2, m1, m2, v1, v2;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor p = randn(shapes[i], DType::f32, 100 + i), m = randn(shapes[i], DType::f32, 200 + i, 0.01);
    Tensor v = unary(UnaryOp::abs, randn(shapes[i], DType::f32, 300 + i, 1e-3));
    p1.push_back(p.clone());
    p2.push_back(p.clone());
    m1.push_back(m.clone());
    m2.push_back(m.clone());
    v1.push_back(v.clone());
    v2.push_back(v.clone());
  }
  for (int64_t step = 1; step <= 3; ++step) {
    g1.clear();
    g2.clear();
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor g = randn(shapes[i], DType::f32, 1000 * step + i, 0.1);
      if (i == 1) g = g.to(DType::bf16);  // a bf16 gradient, widened exactly
      if (i == 4) g = randn({7, 3, 5}, DType::f32, 77 + step, 0.1).permute({2, 1, 0});  // strided
      g1.push_back(g);
      g2.push_back(g);
    }
    for (size_t i = 0; i < shapes.size(); ++i)
      adamw_step(p1[i], g1[i].to(DType::f32), m1[i], v1[i], 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
    adamw_step_multi(p2, g2, m2, v2, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string n = "tensor " + std::to_string(i) + " " + shape_str(shapes[i]);
    EXPECT_TRUE(bits_equal(p2[i], p1[i], n + " param"));
    EXPECT_TRUE(bits_equal(m2[i], m1[i], n + " m"));
    EXPECT_TRUE(bits_equal(v2[i], v1[i], n + " v"));
  }
  // The update moved the parameters (the test would pass vacuously otherwise).
  EXPECT_NE(vals(p2[0])[0], vals(randn(shapes[0], DType::f32, 100))[0]);
}

TEST(AdamWStepMulti, Errors) {
  auto msg = [](auto f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  Tensor p = Tensor::zeros({4}), g = Tensor::zeros({4}), m = Tensor::zeros({4}), v = Tensor::zeros({4});
  const std::string len = msg([&] { adamw_step_multi({p, p}, {g}, {m, m}, {v, v}, 1e-3, 0.9, 0.99, 1e-8, 0, 1); });
  EXPECT_NE(len.find("adamw_step_multi: list lengths differ"), std::string::npos) << len;
  const std::string shp =
      msg([&] { adamw_step_multi({p}, {Tensor::zeros({5})}, {m}, {v}, 1e-3, 0.9, 0.99, 1e-8, 0, 1); });
  EXPECT_NE(shp.find("grad 0 [5] does not match param [4]"), std::string::npos) << shp;
  const std::string dt = msg(
      [&] { adamw_step_multi({p}, {g}, {Tensor::zeros({4}, DType::f64)}, {v}, 1e-3, 0.9, 0.99, 1e-8, 0, 1); });
  EXPECT_NE(dt.find("m 0 must be f32"), std::string::npos) << dt;
  EXPECT_NE(msg([&] { adamw_step_multi({p}, {g}, {m}, {v}, 1e-3, 0.9, 0.99, 1e-8, 0, 0); }).find("step must be >= 1"),
            std::string::npos);
}
