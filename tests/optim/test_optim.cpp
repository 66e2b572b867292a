// AdamW against the torch formula written out by hand, schedules, clipping, state round trips.
#include <gtest/gtest.h>

#include <cmath>

#include "core/memory.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

using namespace lathe;
using namespace lathe::optim;

namespace {
// torch.optim.AdamW single-tensor path on one scalar: decay first, then the moments.
struct RefAdamW {
  double p, m = 0, v = 0;
  int t = 0;
  void step(double g, double lr, double b1, double b2, double eps, double wd) {
    ++t;
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    p -= (lr / bc1) * m / (std::sqrt(v) / std::sqrt(bc2) + eps);
  }
};
}  // namespace

TEST(AdamW, MatchesTorchFormulaOverSeveralSteps) {
  Tensor w = Tensor::from_vector<float>({0.5f, -1.25f, 2.0f, 0.0f}, {2, 2}).set_requires_grad();
  Tensor b = Tensor::from_vector<float>({0.1f, -0.2f}, {2}).set_requires_grad();
  AdamWOptions o;
  o.lr = 0.01;
  o.weight_decay = 0.1;
  AdamW opt(decay_groups({{"w", w}, {"b", b}}, o.weight_decay), o);
  ASSERT_EQ(opt.groups().size(), 2u);
  EXPECT_EQ(opt.groups()[1].weight_decay, 0.0);  // vectors do not decay
  std::vector<RefAdamW> rw = {{0.5}, {-1.25}, {2.0}, {0.0}}, rb = {{0.1}, {-0.2}};
  const std::vector<std::vector<float>> gw = {{0.3f, -0.1f, 0.7f, 1e-3f}, {-0.2f, 0.4f, 0.1f, 0.0f},
                                              {0.05f, 0.05f, -0.9f, 2.0f}};
  const std::vector<std::vector<float>> gb = {{1.0f, -1.0f}, {0.5f, 0.25f}, {-0.3f, 0.0f}};
  for (int s = 0; s < 3; ++s) {
    w.set_grad(Tensor::from_vector<float>(gw[s], {2, 2}));
    b.set_grad(Tensor::from_vector<float>(gb[s], {2}));
    opt.step();
    for (int i = 0; i < 4; ++i) rw[i].step(gw[s][i], 0.01, 0.9, 0.999, 1e-8, 0.1);
    for (int i = 0; i < 2; ++i) rb[i].step(gb[s][i], 0.01, 0.9, 0.999, 1e-8, 0.0);
    auto wv = w.to_vector<float>();
    auto bv = b.to_vector<float>();
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(wv[i], rw[i].p, 2e-6) << "step " << s << " w" << i;
    for (int i = 0; i < 2; ++i) EXPECT_NEAR(bv[i], rb[i].p, 2e-6) << "step " << s << " b" << i;
  }
  EXPECT_EQ(opt.step_count(), 3);
}

TEST(AdamW, StateDictRoundTripContinuesIdentically) {
  auto make = [] { return Tensor::from_vector<float>({1.0f, 2.0f, 3.0f}, {3}).set_requires_grad(); };
  Tensor p1 = make(), p2 = make();
  AdamWOptions o;
  o.lr = 0.1;
  AdamW a({ParamGroup{{{"p", p1}}, 0, 0.0}}, o);
  p1.set_grad(Tensor::from_vector<float>({0.1f, -0.2f, 0.3f}, {3}));
  a.step();
  auto sd = a.state_dict();
  ASSERT_TRUE(sd.count("p/exp_avg"));
  ASSERT_TRUE(sd.count("p/exp_avg_sq"));
  EXPECT_EQ(sd.at("__step__").item(), 1.0);
  // A fresh optimizer on a copy of the parameter, loaded from the state, steps identically.
  p2.copy_(p1);
  AdamW b({ParamGroup{{{"p", p2}}, 0, 0.0}}, o);
  b.load_state_dict(sd);
  Tensor g = Tensor::from_vector<float>({-0.4f, 0.5f, 0.0f}, {3});
  p1.set_grad(g);
  p2.set_grad(g.clone());
  a.step();
  b.step();
  EXPECT_EQ(p1.to_vector<float>(), p2.to_vector<float>());
  // Unknown parameter and wrong shape are errors, not silent.
  auto bad = sd;
  bad["q/exp_avg"] = Tensor::zeros({3});
  EXPECT_THROW(b.load_state_dict(bad), Error);
  bad = sd;
  bad["p/exp_avg"] = Tensor::zeros({4});
  EXPECT_THROW(b.load_state_dict(bad), Error);
}

TEST(AdamW, StateIsCountedAsOptimizerMemory) {
  Tensor p = Tensor::zeros({64, 32}).set_requires_grad();
  AdamW opt({ParamGroup{{{"p", p}}, 0, 0.0}}, {});
  int64_t before = memory_stats().current_of(MemCategory::optimizer_state);
  p.set_grad(Tensor::ones({64, 32}));
  opt.step();
  EXPECT_EQ(memory_stats().current_of(MemCategory::optimizer_state) - before, 2 * 64 * 32 * 4);
  EXPECT_EQ(opt.state_bytes()[0], 2 * 64 * 32 * 4);
}

TEST(Schedule, WarmupCosineLinearConstant) {
  Schedule s{ScheduleKind::cosine, 1.0, 10, 110, 0.1};
  EXPECT_DOUBLE_EQ(s.lr_at(1), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1.0);
  EXPECT_NEAR(s.lr_at(60), 0.1 + 0.45, 1e-12);  // halfway through the decay
  EXPECT_NEAR(s.lr_at(110), 0.1, 1e-12);
  EXPECT_NEAR(s.lr_at(500), 0.1, 1e-12);
  Schedule l{ScheduleKind::linear, 2.0, 0, 100, 0.0};
  EXPECT_NEAR(l.lr_at(25), 1.5, 1e-12);
  Schedule c{ScheduleKind::constant, 3e-4, 5, 100, 0.0};
  EXPECT_NEAR(c.lr_at(3), 3e-4 * 0.6, 1e-15);
  EXPECT_EQ(c.lr_at(50), 3e-4);
}

TEST(ClipGradNorm, ScalesToMaxNorm) {
  Tensor a = Tensor::zeros({2}).set_requires_grad();
  Tensor b = Tensor::zeros({1}).set_requires_grad();
  a.set_grad(Tensor::from_vector<float>({3.0f, 0.0f}, {2}));
  b.set_grad(Tensor::from_vector<float>({4.0f}, {1}));
  double n = clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(n, 5.0, 1e-6);
  auto ga = a.grad().to_vector<float>();
  EXPECT_NEAR(ga[0], 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(b.grad().to_vector<float>()[0], 4.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(clip_grad_norm({a, b}, 0.0), 1.0, 1e-5);  // 0 = measure only
}
