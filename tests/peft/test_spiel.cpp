// SpIEL sparse fine-tuning: the sparse delta's product equals the dense one, its gradient on
// the selected entries by f64 finite differences (no dense weight gradient), the budget kept
// exactly at init and through reselection, merge == unmerged.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "kernels/ops.h"
#include "peft/spiel.h"
#include "methods_test_util.h"

namespace lathe {
namespace {

namespace ag = lathe::autograd;

TEST(SparseDelta, ProductEqualsDenseDelta) {
  const int64_t out = 5, in = 7;
  const std::vector<int64_t> idx = {0, 8, 13, 20, 34};  // (0,0) (1,1) (1,6) (2,6) (4,6)
  const std::vector<double> val = {0.5, -1.0, 2.0, 0.25, -0.75};
  Generator g(3);
  const Tensor x = Tensor::randn({2, 3, in}, g, DType::f64);
  ag::NoGradGuard ng;
  const auto rc = peft::sparse_rows_cols(Tensor::from_vector<int64_t>(idx, {5}), in);
  EXPECT_EQ(rc.first.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 1, 2, 4}));
  EXPECT_EQ(rc.second.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 6, 6, 6}));
  const Tensor y = peft::sparse_delta_linear(x, Tensor::from_vector<double>(val, {5}), rc.first, rc.second, out);
  std::vector<double> dense(out * in, 0.0);
  for (size_t i = 0; i < idx.size(); ++i) dense[static_cast<size_t>(idx[i])] += val[i];
  const Tensor want = kernels::matmul(x, Tensor::from_vector<double>(dense, {out, in}), false, true);
  EXPECT_EQ(y.shape(), (Shape{2, 3, out}));
  EXPECT_LT(test::max_abs_diff(y, want), 1e-14);
}

TEST(SparseDelta, GradientOnTheSelectedEntriesByFiniteDifferences) {
  const int64_t out = 4, in = 6;
  const Tensor idx = Tensor::from_vector<int64_t>({1, 5, 6, 14, 23}, {5});
  Generator g(9);
  const auto rc = peft::sparse_rows_cols(idx, in);
  auto f = [&](const std::vector<Tensor>& t) { return peft::sparse_delta_linear(t[0], t[1], rc.first, rc.second, out); };
  const auto r = ag::gradcheck(f, {Tensor::randn({3, in}, g, DType::f64), Tensor::randn({5}, g, DType::f64)});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(SpielSchedule, PhasesAndReselectionFractions) {
  peft::SpielSchedule s;  // R = 20, S = 5, rate 0.2
  s.total_steps = 100;
  std::vector<int64_t> begins, reselects;
  std::vector<double> ps;
  for (int64_t c = 0; c <= 110; ++c) {
    const auto st = peft::spiel_schedule(s, c);
    if (st.begin_phase) begins.push_back(c);
    if (st.reselect) {
      reselects.push_back(c);
      ps.push_back(st.p);
    }
  }
  EXPECT_EQ(begins, (std::vector<int64_t>{19, 39, 59, 79, 99}));
  EXPECT_EQ(reselects, (std::vector<int64_t>{5, 25, 45, 65, 85}));  // 105 > T: skipped
  EXPECT_EQ(ps[0], 1.0);                                             // replaces the random init
  EXPECT_NEAR(ps[1], 0.2 * (1 - 0.25), 1e-15);
  EXPECT_NEAR(ps[4], 0.2 * (1 - 0.85), 1e-15);
  s.cosine = true;
  EXPECT_NEAR(peft::spiel_schedule(s, 45).p, 0.2 * (1 + std::cos(M_PI * 0.45)) / 2, 1e-15);
}

TEST(SpielBudget, ProportionalToNumel) {
  EXPECT_EQ(peft::spiel_budget({100, 300, 600}, 50), (std::vector<int64_t>{5, 15, 30}));
  EXPECT_EQ(peft::spiel_budget({3, 3, 3}, 10), (std::vector<int64_t>{3, 3, 3}));  // int() floors
}

TEST(SparseDeltaLinear, BudgetNoOpGradientsAndMerge) {
  auto base = test::method_linear(6, 5, true, 4);
  Generator gen(2);
  peft::SparseDeltaLinear l(base, 9, gen);
  const std::vector<int64_t> idx = l.indices().to_vector<int64_t>();
  ASSERT_EQ(idx.size(), 9u);
  EXPECT_TRUE(std::is_sorted(idx.begin(), idx.end()));
  EXPECT_EQ(std::set<int64_t>(idx.begin(), idx.end()).size(), 9u);
  for (int64_t i : idx) EXPECT_TRUE(i >= 0 && i < 30);
  Generator g(1);
  const Tensor x = Tensor::randn({4, 6}, g, DType::f32);
  {
    ag::NoGradGuard ng;
    EXPECT_TRUE(test::bit_equal(l.forward(x), base->forward(x)));
  }
  test::randomize(l.values(), 7, 0.5);
  ag::sum(ag::mul(l.forward(x), l.forward(x))).backward();
  EXPECT_TRUE(l.values().grad().defined());
  EXPECT_FALSE(l.base_weight().grad().defined());  // no dense weight gradient
  // The values' gradient is the dense gradient gathered at the indices: dW = dY^T X.
  {
    ag::NoGradGuard ng;
    const Tensor y = l.forward(x);
    const Tensor dy = kernels::affine(y, 2.0, 0.0);  // d/dy of sum(y * y)
    const Tensor dw = kernels::matmul(dy, x, true, false).reshape({30});
    const Tensor want = kernels::index_select(dw, 0, l.indices());
    EXPECT_LT(test::max_abs_diff(l.values().grad(), want), 1e-4);
  }
  ag::NoGradGuard ng;
  const Tensor unmerged = l.forward(x);
  const Tensor w0 = l.base_weight().clone();
  l.merge();
  EXPECT_LT(test::max_abs_diff(l.forward(x), unmerged), 1e-5);
  l.unmerge();
  EXPECT_LT(test::max_abs_diff(l.base_weight(), w0), 1e-6);
}

TEST(SparseDeltaLinear, ReselectKeepsTheBudgetDropsSmallestGrowsLargestGradient) {
  auto base = test::method_linear(4, 3, false, 4);  // 12 entries
  Generator gen(5);
  peft::SparseDeltaLinear l(base, 4, gen);
  // Active indices and values set by hand: |values| 0.1 < 0.2 < 0.3 < 0.4.
  l.indices().copy_(Tensor::from_vector<int64_t>({0, 3, 5, 9}, {4}));
  l.values().copy_(Tensor::from_vector<float>({0.3f, -0.1f, 0.4f, 0.2f}, {4}));
  // Accumulated gradient: the largest |g| at 7, then 3 (active, about to be dropped), then 11.
  std::vector<float> g(12, 0.01f);
  g[7] = -5;
  g[3] = 4;
  g[11] = 3;
  g[0] = 10;  // active and kept: not a candidate
  // p = 0.5: drop 2 (indices 3 and 9), grow 2 (7, then 3 which was dropped: it stays).
  const std::vector<int64_t> replaced = l.reselect(Tensor::from_vector<float>(g, {3, 4}), 0.5);
  EXPECT_EQ(replaced, (std::vector<int64_t>{3}));
  EXPECT_EQ(l.indices().to_vector<int64_t>(), (std::vector<int64_t>{0, 3, 5, 7}));
  EXPECT_EQ(l.values().to_vector<float>(), (std::vector<float>{0.3f, -0.1f, 0.4f, 0.0f}));
  EXPECT_EQ(l.budget(), 4);
  // p = 1 (SpIEL's first reselection): every entry replaced by the 4 largest |g| overall.
  l.reselect(Tensor::from_vector<float>(g, {3, 4}), 1.0);
  std::vector<int64_t> got = l.indices().to_vector<int64_t>();
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int64_t>{0, 3, 7, 11}));
}

}  // namespace
}  // namespace lathe
