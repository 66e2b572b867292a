// Reductions, norms, softmax, cross-entropy and GELU give the same bits for any OpenMP
// thread count and on every run (their partial sums are grouped by position, never by
// thread), and the sigmoid form of the tanh GELU keeps full relative precision where
// 1 + tanh(u) cancels.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

using namespace lathe;
using namespace lathe::kernels;

namespace {

struct ThreadsGuard {
  int saved = omp_get_max_threads();
  ~ThreadsGuard() { omp_set_num_threads(saved); }
};

std::vector<float> f32(const Tensor& t) { return t.to(DType::f32).contiguous().to_vector<float>(); }

// Every output of the ops under test, flattened in a fixed order.
std::vector<std::vector<float>> run_all() {
  Generator g(42);
  std::vector<std::vector<float>> out;
  auto add = [&](const Tensor& t) { out.push_back(f32(t)); };
  // Rows longer than one reduction chunk (16384) and many short rows; a strided view.
  Tensor lng = Tensor::randn({3, 40001}, g);
  Tensor sq = Tensor::randn({300, 203}, g);
  Tensor sq_t = sq.transpose(0, 1);
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::norm}) {
    add(reduce(op, lng, {1}));
    add(reduce(op, lng, {}));
    add(reduce(op, sq, {1}));
    add(reduce(op, sq_t, {0, 1}));
  }
  add(reduce(ReduceOp::sum, sq.to(DType::bf16), {1}));
  Tensor w = Tensor::randn({203}, g), b = Tensor::randn({203}, g), gy = Tensor::randn({300, 203}, g);
  NormOut ln = layer_norm(sq, w, b, 1e-5);
  add(ln.y);
  add(ln.mean);
  add(ln.rstd);
  NormGrads lg = layer_norm_backward(gy, sq, w, ln.mean, ln.rstd, true);
  add(lg.dx);
  add(lg.dweight);
  add(lg.dbias);
  NormOut rn = rms_norm(sq, w, 1e-6);
  add(rn.y);
  add(rn.rstd);
  NormGrads rg = rms_norm_backward(gy, sq, w, rn.rstd);
  add(rg.dx);
  add(rg.dweight);
  for (int64_t axis : {int64_t(-1), int64_t(0)}) {
    Tensor y = softmax(sq, axis), ly = log_softmax(sq, axis);
    add(y);
    add(ly);
    add(softmax_backward(y, gy, axis));
    add(log_softmax_backward(ly, gy, axis));
  }
  add(softmax(sq.to(DType::bf16), -1));
  Tensor tg = Tensor::from_vector<int64_t>(std::vector<int64_t>(300, 7), {300});
  for (double eps : {0.0, 0.1}) {
    CrossEntropyOut ce = cross_entropy(sq, tg, -100, eps);
    add(ce.loss);
    add(ce.lse);
    add(cross_entropy_backward(sq, tg, ce.lse, 1.0, ce.count, -100, eps));
  }
  add(unary(UnaryOp::gelu_tanh, sq));
  add(unary_backward(UnaryOp::gelu_tanh, sq, Tensor(), gy));
  return out;
}

}  // namespace

TEST(Reproducible, SameBitsForAnyThreadCountAndRun) {
  ThreadsGuard guard;
  omp_set_num_threads(1);
  const auto one = run_all();
  for (int threads : {2, 3, 2}) {
    omp_set_num_threads(threads);
    const auto many = run_all();
    ASSERT_EQ(many.size(), one.size());
    for (size_t k = 0; k < one.size(); ++k) {
      ASSERT_EQ(many[k].size(), one[k].size()) << "output " << k;
      // Bitwise: compare the representations, so -0/+0 or NaN payload changes would show.
      for (size_t i = 0; i < one[k].size(); ++i) {
        uint32_t a, b;
        std::memcpy(&a, &one[k][i], 4);
        std::memcpy(&b, &many[k][i], 4);
        ASSERT_EQ(a, b) << "output " << k << " element " << i << " with " << threads << " threads";
      }
    }
  }
}

TEST(Reproducible, GeluTanhKeepsRelativePrecisionInTheNegativeTail) {
  // 0.5 x (1 + tanh u) loses every digit for x << 0 in f32 (1 + tanh u rounds to a few
  // ulps of 1); x sigmoid(2u) does not. Reference: the same function in f64.
  std::vector<float> xs;
  for (int i = 0; i <= 7000; ++i) xs.push_back(-9.0f + 1e-3f * static_cast<float>(i));  // [-9, -2]
  const int64_t n = static_cast<int64_t>(xs.size());
  Tensor x = Tensor::from_vector<float>(xs, {n});
  const auto y = unary(UnaryOp::gelu_tanh, x).to_vector<float>();
  const auto d = unary_backward(UnaryOp::gelu_tanh, x, Tensor(), Tensor::ones({n})).to_vector<float>();
  const double k = std::sqrt(2.0 / M_PI), c = 0.044715;
  for (int64_t i = 0; i < n; ++i) {
    const double v = xs[i], u = k * (v + c * v * v * v);
    const double s = 1.0 / (1.0 + std::exp(-2.0 * u));
    const double ref = v * s, dref = s + 2.0 * v * s * (1.0 - s) * k * (1.0 + 3.0 * c * v * v);
    // f32 rounding of u alone is amplified by |2u| (up to ~90 here) in exp(-2u).
    ASSERT_NEAR(y[i], ref, 5e-5 * std::abs(ref)) << "gelu_tanh(" << v << ")";
    ASSERT_NEAR(d[i], dref, 5e-5 * std::abs(dref)) << "gelu_tanh'(" << v << ")";
  }
}
