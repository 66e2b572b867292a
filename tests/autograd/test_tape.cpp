// Tape behaviour: accumulation, shared subexpressions, grad mode, detach, hooks,
// requires_grad propagation, retain_graph and error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "core/memory.h"
#include "kernels/ops.h"
#include "test_util.h"

using namespace lathe;
using lathe::test::expect_near_vec;
using lathe::test::randn64;
using lathe::test::vec;

TEST(Tape, GradAccumulatesAcrossBackwardCalls) {
  Tensor x = randn64({3, 4}, 1).set_requires_grad();
  ag::sum(ag::mul(x, x)).backward();
  std::vector<double> xv = vec(x), want(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) want[i] = 2 * xv[i];
  expect_near_vec(vec(x.grad()), want, 1e-12);
  ag::sum(ag::mul(x, x)).backward();  // a new graph: += into the same grad
  for (double& w : want) w *= 2;
  expect_near_vec(vec(x.grad()), want, 1e-12);
  ag::zero_grad({x});
  EXPECT_FALSE(x.grad().defined());
}

TEST(Tape, LeafGradIsCountedAsGradientMemory) {
  Tensor x = randn64({16, 16}, 2).set_requires_grad();
  ag::sum(ag::exp(x)).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().storage()->category(), MemCategory::gradients);
  EXPECT_EQ(x.grad().shape(), x.shape());
  EXPECT_EQ(x.grad().dtype(), DType::f64);
}

TEST(Tape, GradientMemoryIsAccountedExactly) {
  // sum's gradient is a broadcast view, so the leaf gets a fresh copy; exp's gradient is a
  // fresh tensor nobody else holds, so the leaf takes it over. Both count as gradients.
  Tensor a = randn64({8, 4}, 30).set_requires_grad();
  Tensor b = randn64({5}, 31).set_requires_grad();
  int64_t before = memory_stats().current_of(MemCategory::gradients);
  ag::add(ag::sum(a), ag::sum(ag::exp(b))).backward();
  EXPECT_EQ(memory_stats().current_of(MemCategory::gradients) - before, (32 + 5) * 8);
  EXPECT_EQ(a.grad().storage()->category(), MemCategory::gradients);
  EXPECT_EQ(b.grad().storage()->category(), MemCategory::gradients);
  for (double g : vec(a.grad())) EXPECT_EQ(g, 1.0);
  ag::zero_grad({a, b});
  EXPECT_EQ(memory_stats().current_of(MemCategory::gradients), before);
}

TEST(Tape, SharedSubexpressionIsSummed) {
  // y = x*x + x: dy/dx = 2x + 1
  Tensor x = randn64({5}, 3).set_requires_grad();
  Tensor y = ag::add(ag::mul(x, x), x);
  ag::sum(y).backward();
  std::vector<double> xv = vec(x), want;
  for (double v : xv) want.push_back(2 * v + 1);
  expect_near_vec(vec(x.grad()), want, 1e-12);
}

TEST(Tape, DiamondGraph) {
  // z = exp(x) used twice: y = sum(3z + z*z) -> dy/dx = (3 + 2z) z
  Tensor x = randn64({4}, 4).set_requires_grad();
  Tensor z = ag::exp(x);
  ag::sum(ag::add(ag::mul(z, 3.0), ag::mul(z, z))).backward();
  std::vector<double> want;
  for (double v : vec(x)) want.push_back((3 + 2 * std::exp(v)) * std::exp(v));
  expect_near_vec(vec(x.grad()), want, 1e-12);
}

TEST(Tape, NoGradRecordsNothing) {
  Tensor x = randn64({3}, 5).set_requires_grad();
  {
    ag::NoGradGuard ng;
    EXPECT_FALSE(ag::GradMode::is_enabled());
    Tensor y = ag::mul(x, x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
    {
      ag::EnableGradGuard eg;
      EXPECT_TRUE(ag::mul(x, x).requires_grad());
    }
  }
  EXPECT_TRUE(ag::GradMode::is_enabled());
  EXPECT_TRUE(ag::mul(x, x).requires_grad());
}

TEST(Tape, RequiresGradPropagation) {
  Tensor a = randn64({3}, 6).set_requires_grad();
  Tensor b = randn64({3}, 7);
  EXPECT_TRUE(ag::add(a, b).requires_grad());
  EXPECT_TRUE(ag::add(b, a).requires_grad());
  EXPECT_FALSE(ag::add(b, b).requires_grad());
  EXPECT_FALSE(ag::add(b, b).grad().defined());
  Tensor v = ag::transpose(ag::reshape(a, {3, 1}), 0, 1);
  EXPECT_TRUE(v.requires_grad());
  EXPECT_FALSE(v.is_leaf());
  EXPECT_TRUE(a.is_leaf());
  // The output of an op on a leaf never shares the leaf's autograd state.
  Tensor c = ag::contiguous(a);  // a is contiguous: same storage, new node
  EXPECT_FALSE(c.is_same(a));
  EXPECT_FALSE(c.is_leaf());
  EXPECT_EQ(c.storage(), a.storage());
}

TEST(Tape, DetachStopsGradient) {
  Tensor x = randn64({4}, 8).set_requires_grad();
  Tensor d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_leaf());
  EXPECT_EQ(d.storage(), x.storage());
  EXPECT_FALSE(ag::mul(d, d).requires_grad());
  // z = x * detach(x): dz/dx = detach(x) only
  ag::sum(ag::mul(x, d)).backward();
  expect_near_vec(vec(x.grad()), vec(x), 1e-12);
}

TEST(Tape, NonScalarNeedsSeed) {
  Tensor x = randn64({2, 3}, 9).set_requires_grad();
  Tensor y = ag::mul(x, 2.0);
  try {
    y.backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a scalar"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
  }
  Tensor seed = randn64({2, 3}, 10);
  y.backward(seed);
  std::vector<double> want;
  for (double v : vec(seed)) want.push_back(2 * v);
  expect_near_vec(vec(x.grad()), want, 1e-12);
  // wrong seed shape
  Tensor y2 = ag::mul(x, 2.0);
  EXPECT_THROW(y2.backward(Tensor::ones({3, 2}, DType::f64)), Error);
}

TEST(Tape, BackwardWithoutGradIsAnError) {
  Tensor x = randn64({2}, 11);
  EXPECT_THROW(ag::sum(x).backward(), Error);
}

TEST(Tape, SecondBackwardThroughFreedGraphFails) {
  Tensor x = randn64({3}, 12).set_requires_grad();
  Tensor y = ag::sum(ag::exp(x));
  y.backward();
  try {
    y.backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("second time"), std::string::npos) << e.what();
  }
}

TEST(Tape, RetainGraphAllowsSecondBackward) {
  Tensor x = randn64({3}, 13).set_requires_grad();
  Tensor y = ag::sum(ag::exp(x));
  ag::backward(y, Tensor(), /*retain_graph=*/true);
  ag::backward(y, Tensor(), /*retain_graph=*/false);
  std::vector<double> want;
  for (double v : vec(x)) want.push_back(2 * std::exp(v));
  expect_near_vec(vec(x.grad()), want, 1e-12);
}

TEST(Tape, BackwardOnLeafAccumulatesSeed) {
  Tensor x = randn64({2}, 14).set_requires_grad();
  Tensor seed = Tensor::from_vector<double>({1.5, -2.0}, {2});
  x.backward(seed);
  expect_near_vec(vec(x.grad()), {1.5, -2.0}, 0);
}

TEST(Tape, MultipleRoots) {
  Tensor x = randn64({3}, 15).set_requires_grad();
  Tensor a = ag::sum(ag::mul(x, 2.0));
  Tensor b = ag::sum(ag::mul(x, x));
  ag::backward({a, b}, {Tensor(), Tensor()});
  std::vector<double> want;
  for (double v : vec(x)) want.push_back(2 + 2 * v);
  expect_near_vec(vec(x.grad()), want, 1e-12);
}

TEST(Tape, SplitWithOnePieceUsed) {
  Tensor x = randn64({5, 2}, 16).set_requires_grad();
  std::vector<Tensor> parts = ag::split(x, {2, 3}, 0);
  ASSERT_EQ(parts.size(), 2u);
  ag::sum(ag::mul(parts[1], 3.0)).backward();
  std::vector<double> g = vec(x.grad());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(g[i], i < 4 ? 0.0 : 3.0) << i;
}

TEST(Tape, WrongBackwardShapeIsReported) {
  Tensor x = randn64({3}, 17).set_requires_grad();
  Tensor y = ag::record("bad_op", kernels::affine(x, 1.0, 0.0), {x},
                        [](const std::vector<Tensor>&, const std::vector<bool>&) {
                          return std::vector<Tensor>{Tensor::ones({4}, DType::f64)};
                        });
  try {
    ag::sum(y).backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad_op"), std::string::npos) << e.what();
  }
}

// ---- gradient-ready hooks ---------------------------------------------------------------

TEST(Hooks, FireOnceWithFinalGradientForLeafUsedSeveralTimes) {
  Tensor w = randn64({4}, 20).set_requires_grad();
  Tensor x = randn64({4}, 21);
  int calls = 0;
  std::vector<double> seen;
  int64_t id = ag::add_grad_ready_hook(w, [&](const Tensor& g) {
    ++calls;
    seen = g.to_vector<double>();
  });
  // loss = sum(w*x + w*w + exp(w) * w): w reaches the loss along four paths
  Tensor a = ag::mul(w, x);
  Tensor b = ag::mul(w, w);
  Tensor c = ag::mul(ag::exp(w), w);
  ag::sum(ag::add(ag::add(a, b), c)).backward();
  EXPECT_EQ(calls, 1);
  std::vector<double> wv = vec(w), xv = vec(x), want;
  for (size_t i = 0; i < wv.size(); ++i) want.push_back(xv[i] + 2 * wv[i] + std::exp(wv[i]) * (1 + wv[i]));
  expect_near_vec(seen, want, 1e-12);
  expect_near_vec(vec(w.grad()), want, 1e-12);

  // A second backward: the hook sees the accumulated gradient, once more.
  ag::sum(ag::mul(w, x)).backward();
  EXPECT_EQ(calls, 2);
  for (size_t i = 0; i < want.size(); ++i) want[i] += xv[i];
  expect_near_vec(seen, want, 1e-12);

  EXPECT_TRUE(ag::remove_grad_ready_hook(w, id));
  EXPECT_FALSE(ag::remove_grad_ready_hook(w, id));
  ag::sum(w).backward();
  EXPECT_EQ(calls, 2);
}

TEST(Hooks, LateLayerFiresBeforeEarlyLayerGradientExists) {
  // Two "layers": w0 is used first in the forward, w1 last. w1's gradient is final as soon
  // as backward passes the last layer, before w0's gradient is computed.
  Tensor w0 = randn64({3, 3}, 22).set_requires_grad();
  Tensor w1 = randn64({3, 3}, 23).set_requires_grad();
  Tensor x = randn64({2, 3}, 24);
  std::vector<std::string> order;
  bool w0_grad_existed = true;
  ag::add_grad_ready_hook(w1, [&](const Tensor&) {
    order.push_back("w1");
    w0_grad_existed = w0.grad().defined();
  });
  ag::add_grad_ready_hook(w0, [&](const Tensor&) { order.push_back("w0"); });
  Tensor h = ag::tanh(ag::matmul(x, w0));
  Tensor y = ag::tanh(ag::matmul(h, w1));
  ag::sum(y).backward();
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], "w1");
  EXPECT_EQ(order[1], "w0");
  EXPECT_FALSE(w0_grad_existed);
}

TEST(Hooks, NotFiredForLeafOutsideGraphAndRejectedOnNonLeaf) {
  Tensor w = randn64({2}, 25).set_requires_grad();
  Tensor v = randn64({2}, 26).set_requires_grad();
  int calls = 0;
  ag::add_grad_ready_hook(v, [&](const Tensor&) { ++calls; });
  ag::sum(w).backward();
  EXPECT_EQ(calls, 0);
  EXPECT_THROW(ag::add_grad_ready_hook(ag::mul(w, 2.0), [](const Tensor&) {}), Error);
  EXPECT_THROW(ag::add_grad_ready_hook(randn64({2}, 27), [](const Tensor&) {}), Error);
}

// What layer-wise optimizer updates rely on: a hook may update its leaf in place and
// release .grad. The earlier layer's gradient was computed from the value before the
// update (the late layer's matmul backward ran before its leaf's sink), and a hook
// registered after the releasing one still receives the gradient.
TEST(Hooks, HookMayUpdateItsLeafAndReleaseTheGradient) {
  Tensor x = randn64({2, 3}, 28);
  auto forward = [&](const Tensor& w0, const Tensor& w1) {
    Tensor h = ag::tanh(ag::matmul(x, w0));
    return ag::sum(ag::tanh(ag::matmul(h, w1)));
  };
  Tensor r0 = randn64({3, 3}, 22).set_requires_grad(), r1 = randn64({3, 3}, 23).set_requires_grad();
  forward(r0, r1).backward();
  const std::vector<double> want_g0 = vec(r0.grad()), want_g1 = vec(r1.grad());

  Tensor w0 = randn64({3, 3}, 22).set_requires_grad(), w1 = randn64({3, 3}, 23).set_requires_grad();
  const std::vector<double> w1_before = vec(w1);
  std::vector<double> second_hook_saw;
  ag::add_grad_ready_hook(w1, [&](const Tensor& g) {
    kernels::add_(w1, g, -0.5);  // an SGD step, in place, in the middle of backward
    w1.set_grad(Tensor());
  });
  ag::add_grad_ready_hook(w1, [&](const Tensor& g) {
    ASSERT_TRUE(g.defined());
    second_hook_saw = g.to_vector<double>();
  });
  forward(w0, w1).backward();
  EXPECT_FALSE(w1.grad().defined());
  EXPECT_EQ(second_hook_saw, want_g1);
  EXPECT_EQ(vec(w0.grad()), want_g0);  // bit for bit: computed before w1 changed
  std::vector<double> want_w1 = w1_before;
  for (size_t i = 0; i < want_w1.size(); ++i) want_w1[i] -= 0.5 * want_g1[i];
  expect_near_vec(vec(w1), want_w1, 1e-15);
}
