// AdamW and SGD against the torch formulas written out by hand, schedules, clipping, state
// round trips (including a state of another shape than its parameter), groups, the registry.
#include <gtest/gtest.h>

#include <cmath>

#include "configs/config.h"
#include "core/memory.h"
#include "kernels/ops.h"
#include "optim/adamw.h"
#include "optim/registry.h"
#include "optim/schedule.h"
#include "optim/sgd.h"

using namespace lathe;
using namespace lathe::optim;

namespace {
// One group holding one parameter, no weight decay.
ParamGroup one_group(const std::string& name, const Tensor& p) {
  ParamGroup g;
  g.params = {{name, p}};
  return g;
}

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
  EXPECT_EQ(opt.groups()[0].name, "no_decay");  // vectors do not decay
  EXPECT_EQ(opt.groups()[0].weight_decay, 0.0);
  EXPECT_EQ(opt.groups()[0].params.at(0).first, "b");
  EXPECT_EQ(opt.groups()[1].name, "decay");
  EXPECT_EQ(opt.groups()[1].weight_decay, 0.1);
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
  AdamW a({one_group("p", p1)}, o);
  p1.set_grad(Tensor::from_vector<float>({0.1f, -0.2f, 0.3f}, {3}));
  a.step();
  auto sd = a.state_dict();
  ASSERT_TRUE(sd.count("p/exp_avg"));
  ASSERT_TRUE(sd.count("p/exp_avg_sq"));
  EXPECT_EQ(sd.at("__step__").item(), 1.0);
  // A fresh optimizer on a copy of the parameter, loaded from the state, steps identically.
  p2.copy_(p1);
  AdamW b({one_group("p", p2)}, o);
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
  AdamW opt({one_group("p", p)}, {});
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

// ---- the optimizer API: a state of another shape than its parameter ---------------------------

namespace {
// A toy optimizer whose state looks nothing like its [rows, cols] parameter: "row_sq" is [rows]
// f32 (a running mean of each row's g^2) and "stats" is [2] f64 (sum of gradients, sum of step
// numbers). The kind of state GaLore's projected moments and 8-bit block scales need.
class RowScaled final : public Optimizer {
 public:
  using Optimizer::Optimizer;
  const char* name() const override { return "RowScaled"; }
  StateMap init_state(const std::string&, const Tensor& p, const ParamGroup&) const override {
    return {{"row_sq", Tensor::zeros({p.shape()[0]}, DType::f32, p.device())},
            {"stats", Tensor::zeros({2}, DType::f64, p.device())}};
  }
  void update(const std::string&, const Tensor& p, const Tensor& g, StateMap& st, const ParamGroup& grp,
              int64_t step) override {
    using namespace kernels;
    const Tensor& rs = st.at("row_sq");
    scale_(rs, 0.5);
    add_(rs, reduce(ReduceOp::mean, unary(UnaryOp::square, g), {1}));
    Tensor inv = unary(UnaryOp::rsqrt, affine(rs, 1.0, 1e-3)).unsqueeze(1);  // [rows, 1]
    add_(p, binary(BinaryOp::mul, g, inv), -grp.lr);
    Tensor s = Tensor::from_vector<double>({reduce(ReduceOp::sum, g.to(DType::f64), {}).item(), double(step)}, {2});
    add_(st.at("stats"), s);
  }
};

Tensor grad_at(int k, const Shape& shape) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(std::sin(0.7 * i + 1.3 * k) * (1 + k));
  return Tensor::from_vector<float>(v, shape);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lathe::Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(OptimizerApi, StateOfAnotherShapeSavesLoadsAndContinuesBitExactly) {
  Tensor w1 = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4}).set_requires_grad();
  Tensor w2 = w1.detach().clone().set_requires_grad();
  RowScaled a({one_group("w", w1)});
  a.set_lr(0.05);
  for (int k = 0; k < 3; ++k) {
    w1.set_grad(grad_at(k, {3, 4}));
    a.step();
  }
  std::map<std::string, Tensor> sd;
  for (const auto& [k, t] : a.state_dict()) sd[k] = t.clone();  // as if read back from disk
  ASSERT_EQ(sd.at("w/row_sq").shape(), Shape({3}));
  ASSERT_EQ(sd.at("w/stats").dtype(), DType::f64);
  EXPECT_EQ(sd.at("w/stats").to_vector<double>()[1], 1.0 + 2.0 + 3.0);  // the per-parameter step reached update
  EXPECT_EQ(sd.at("w/__step__").item(), 3.0);
  EXPECT_EQ(sd.at("__step__").item(), 3.0);

  w2.copy_(w1);
  RowScaled b({one_group("w", w2)});
  b.set_lr(0.05);
  b.load_state_dict(sd);
  EXPECT_EQ(b.param_step("w"), 3);
  EXPECT_EQ(b.step_count(), 3);
  for (int k = 3; k < 5; ++k) {
    w1.set_grad(grad_at(k, {3, 4}));
    w2.set_grad(grad_at(k, {3, 4}));
    a.step();
    b.step();
  }
  EXPECT_EQ(w1.to_vector<float>(), w2.to_vector<float>());
  EXPECT_EQ(a.param_state("w").at("row_sq").to_vector<float>(), b.param_state("w").at("row_sq").to_vector<float>());
  EXPECT_EQ(a.param_state("w").at("stats").to_vector<double>(), b.param_state("w").at("stats").to_vector<double>());
  EXPECT_EQ(b.param_state("w").at("stats").to_vector<double>()[1], 15.0);

  // Loading checks against what init_state makes, not against the parameter: the parameter's
  // own shape is wrong for row_sq. Every error names the parameter and the state key.
  auto bad = sd;
  bad["w/row_sq"] = Tensor::zeros({3, 4});
  std::string e = error_of([&] { b.load_state_dict(bad); });
  EXPECT_NE(e.find("'w/row_sq' has shape [3, 4]"), std::string::npos) << e;
  EXPECT_NE(e.find("parameter 'w' needs [3]"), std::string::npos) << e;
  bad = sd;
  bad["w/stats"] = Tensor::zeros({2}, DType::f32);
  e = error_of([&] { b.load_state_dict(bad); });
  EXPECT_NE(e.find("'w/stats' is f32"), std::string::npos) << e;
  EXPECT_NE(e.find("needs f64"), std::string::npos) << e;
  bad = sd;
  bad.erase("w/row_sq");
  e = error_of([&] { b.load_state_dict(bad); });
  EXPECT_NE(e.find("lacks optimizer state 'w/row_sq'"), std::string::npos) << e;
  bad = sd;
  bad["w/extra"] = Tensor::zeros({1});
  e = error_of([&] { b.load_state_dict(bad); });
  EXPECT_NE(e.find("'w/extra'"), std::string::npos) << e;
  bad = sd;
  bad["v/row_sq"] = Tensor::zeros({3});
  e = error_of([&] { b.load_state_dict(bad); });
  EXPECT_NE(e.find("unknown parameter 'v'"), std::string::npos) << e;
  // A failed load leaves the optimizer as it was.
  EXPECT_EQ(b.param_step("w"), 5);
  EXPECT_EQ(b.step_count(), 5);
}

TEST(OptimizerApi, StateIsCreatedOnFirstUpdateAndCountedAsOptimizerMemory) {
  Tensor w = Tensor::zeros({5, 7}).set_requires_grad();
  RowScaled opt({one_group("w", w)});
  EXPECT_TRUE(opt.param_state("w").empty());
  const int64_t before = memory_stats().current_of(MemCategory::optimizer_state);
  w.set_grad(Tensor::ones({5, 7}));
  opt.step();
  EXPECT_EQ(memory_stats().current_of(MemCategory::optimizer_state) - before, 5 * 4 + 2 * 8);
  EXPECT_EQ(opt.state_bytes()[0], 5 * 4 + 2 * 8);
}

TEST(OptimizerApi, StepParamUpdatesOneParameterLikeStep) {
  auto make = [](std::vector<float> v, Shape s) { return Tensor::from_vector<float>(v, s).set_requires_grad(); };
  Tensor a1 = make({1, -2, 3, 4}, {2, 2}), b1 = make({0.5f, 0.25f}, {2});
  Tensor a2 = a1.detach().clone().set_requires_grad(), b2 = b1.detach().clone().set_requires_grad();
  AdamWOptions o;
  o.lr = 0.02;
  AdamW whole(decay_groups({{"a", a1}, {"b", b1}}, 0.1), o);
  AdamW layerwise(decay_groups({{"a", a2}, {"b", b2}}, 0.1), o);
  for (int k = 0; k < 3; ++k) {
    a1.set_grad(grad_at(k, {2, 2}));
    b1.set_grad(grad_at(k + 7, {2}));
    whole.step();
    // As gradient-ready hooks would: the last layer's gradient first, each freed at once.
    b2.set_grad(grad_at(k + 7, {2}));
    EXPECT_TRUE(layerwise.step_param("b"));
    b2.set_grad(Tensor());
    a2.set_grad(grad_at(k, {2, 2}));
    EXPECT_TRUE(layerwise.step_param("a"));
    a2.set_grad(Tensor());
  }
  EXPECT_EQ(a1.to_vector<float>(), a2.to_vector<float>());
  EXPECT_EQ(b1.to_vector<float>(), b2.to_vector<float>());
  EXPECT_EQ(layerwise.param_step("a"), 3);
  EXPECT_EQ(layerwise.step_count(), 0);  // step_param does not count whole steps
  EXPECT_FALSE(layerwise.step_param("a"));  // no gradient: nothing happens
  EXPECT_EQ(layerwise.param_step("a"), 3);
  EXPECT_NE(error_of([&] { layerwise.step_param("nope"); }).find("no parameter named 'nope'"), std::string::npos);
}

TEST(OptimizerApi, EachParameterCountsItsOwnSteps) {
  // b has no gradient on the first step: its first update is a first step (t = 1), as in torch.
  Tensor w = Tensor::from_vector<float>({0.5f, -1.0f}, {1, 2}).set_requires_grad();
  Tensor b = Tensor::from_vector<float>({0.3f}, {1}).set_requires_grad();
  AdamWOptions o;
  o.lr = 0.01;
  o.weight_decay = 0;
  AdamW opt(decay_groups({{"w", w}, {"b", b}}, 0.0), o);
  RefAdamW rb{0.3};
  w.set_grad(Tensor::from_vector<float>({0.1f, 0.2f}, {1, 2}));
  opt.step();
  EXPECT_EQ(b.to_vector<float>()[0], 0.3f);
  w.set_grad(Tensor::from_vector<float>({0.1f, 0.2f}, {1, 2}));
  b.set_grad(Tensor::from_vector<float>({0.7f}, {1}));
  opt.step();
  rb.step(0.7, 0.01, 0.9, 0.999, 1e-8, 0.0);
  EXPECT_NEAR(b.to_vector<float>()[0], rb.p, 1e-7);
  EXPECT_NEAR(rb.p, 0.3 - 0.01, 1e-6);  // t = 1: the step is lr * sign(g); with t = 2 it would be ~0.0053
  EXPECT_EQ(opt.param_step("w"), 2);
  EXPECT_EQ(opt.param_step("b"), 1);
  // A checkpoint from before per-parameter steps (global __step__ only) loads with that count.
  auto sd = opt.state_dict();
  sd.erase("w/__step__");
  sd.erase("b/__step__");
  Tensor w2 = w.detach().clone().set_requires_grad(), b2 = b.detach().clone().set_requires_grad();
  AdamW old(decay_groups({{"w", w2}, {"b", b2}}, 0.0), o);
  old.load_state_dict(sd);
  EXPECT_EQ(old.param_step("w"), 2);
  EXPECT_EQ(old.param_step("b"), 2);
}

// ---- groups ----------------------------------------------------------------------------------

TEST(ParamGroups, FirstMatchingRegexWinsAndOptionsTravel) {
  NamedParams named = {{"layers.0.attn.q_proj.weight", Tensor::zeros({4, 4}).set_requires_grad()},
                       {"layers.0.attn.q_proj.bias", Tensor::zeros({4}).set_requires_grad()},
                       {"layers.0.mlp.up.weight", Tensor::zeros({4, 4}).set_requires_grad()},
                       {"embed.weight", Tensor::zeros({8, 4}).set_requires_grad()},
                       {"frozen.weight", Tensor::zeros({2, 2})}};
  GroupSpec attn_w{"attn_w", ".*attn.*weight", -1, 0.5, std::nullopt, {{"rank", int64_t{2}}}};
  GroupSpec attn_all{"attn_all", ".*attn.*", -1, 1.0, 0.3, {}};
  GroupSpec partial{"partial", "attn", -1, 1.0, 0.0, {}};  // must match the whole name: matches nothing
  GroupSpec rest{"rest", "", -1, 1.0, 0.1, {}};
  auto groups = assign_groups(named, {attn_w, attn_all, partial}, rest);
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].name, "attn_w");
  ASSERT_EQ(groups[0].params.size(), 1u);
  EXPECT_EQ(groups[0].params[0].first, "layers.0.attn.q_proj.weight");
  EXPECT_EQ(groups[0].weight_decay, 0.1);  // unset: the fallback's
  EXPECT_EQ(groups[0].option_int("rank", 0), 2);
  EXPECT_EQ(groups[0].option_double("rank", 0), 2.0);
  EXPECT_EQ(groups[0].option_int("block_size", 256), 256);
  EXPECT_NE(error_of([&] { groups[0].option_string("rank", ""); }).find("'rank' must be a string"),
            std::string::npos);
  EXPECT_EQ(groups[1].name, "attn_all");
  ASSERT_EQ(groups[1].params.size(), 1u);
  EXPECT_EQ(groups[1].params[0].first, "layers.0.attn.q_proj.bias");
  EXPECT_EQ(groups[1].weight_decay, 0.3);
  EXPECT_EQ(groups[2].name, "rest");
  ASSERT_EQ(groups[2].params.size(), 2u);  // the frozen parameter is left out
  EXPECT_EQ(groups[2].params[0].first, "layers.0.mlp.up.weight");
  EXPECT_EQ(groups[2].params[1].first, "embed.weight");

  AdamWOptions o;
  o.lr = 2.0;
  AdamW opt(groups, o);
  EXPECT_EQ(opt.groups()[0].lr, 1.0);
  EXPECT_EQ(opt.groups()[2].lr, 2.0);
  opt.set_lr(0.1);
  EXPECT_DOUBLE_EQ(opt.groups()[0].lr, 0.05);
  // The scaled lr is the one the update uses: AdamW's first step moves by lr * sign(g).
  const Tensor& q = named[0].second;
  q.set_grad(Tensor::ones({4, 4}));
  opt.groups()[0].weight_decay = 0;
  opt.step();
  EXPECT_NEAR(q.to_vector<float>()[0], -0.05, 1e-6);

  GroupSpec broken{"broken", "(", -1, 1.0, std::nullopt, {}};
  EXPECT_NE(error_of([&] { assign_groups(named, {broken}, rest); }).find("group 'broken'"), std::string::npos);
  NamedParams twice = {named[0], named[0]};
  EXPECT_NE(error_of([&] { AdamW(assign_groups(twice, {}, rest), o); }).find("more than one group"),
            std::string::npos);
}

// ---- SGD -------------------------------------------------------------------------------------

namespace {
// torch.optim.SGD on one scalar (dampening 0): decay into the gradient, then momentum.
struct RefSGD {
  double p, buf = 0;
  bool has_buf = false;
  void step(double g, double lr, double mu, double wd, bool nesterov) {
    g += wd * p;
    if (mu != 0) {
      buf = has_buf ? mu * buf + g : g;
      has_buf = true;
      g = nesterov ? g + mu * buf : buf;
    }
    p -= lr * g;
  }
};
}  // namespace

TEST(SGD, MatchesTorchFormulaWithMomentumNesterovAndDecay) {
  for (double mu : {0.0, 0.9}) {
    for (bool nesterov : {false, true}) {
      if (nesterov && mu == 0) continue;
      Tensor w = Tensor::from_vector<float>({0.5f, -1.25f, 2.0f, 0.0f}, {2, 2}).set_requires_grad();
      Tensor b = Tensor::from_vector<float>({0.1f, -0.2f}, {2}).set_requires_grad();
      SGD opt(decay_groups({{"w", w}, {"b", b}}, 0.05), {0.1, mu, nesterov});
      std::vector<RefSGD> rw = {{0.5}, {-1.25}, {2.0}, {0.0}}, rb = {{0.1}, {-0.2}};
      for (int s = 0; s < 4; ++s) {
        Tensor gw = grad_at(s, {2, 2}), gb = grad_at(s + 11, {2});
        w.set_grad(gw);
        b.set_grad(gb);
        opt.step();
        auto gwv = gw.to_vector<float>(), gbv = gb.to_vector<float>();
        EXPECT_EQ(w.grad().to_vector<float>(), gwv);  // the gradient is left as it was
        for (int i = 0; i < 4; ++i) rw[i].step(gwv[i], 0.1, mu, 0.05, nesterov);
        for (int i = 0; i < 2; ++i) rb[i].step(gbv[i], 0.1, mu, 0.0, nesterov);
        auto wv = w.to_vector<float>(), bv = b.to_vector<float>();
        for (int i = 0; i < 4; ++i) EXPECT_NEAR(wv[i], rw[i].p, 2e-6) << "mu " << mu << " nesterov " << nesterov;
        for (int i = 0; i < 2; ++i) EXPECT_NEAR(bv[i], rb[i].p, 2e-6) << "mu " << mu << " nesterov " << nesterov;
      }
      auto sd = opt.state_dict();
      EXPECT_EQ(sd.count("w/momentum_buffer"), mu != 0 ? 1u : 0u);
      EXPECT_EQ(sd.at("w/__step__").item(), 4.0);
      // Without momentum there is no state but the step; the round trip still works.
      Tensor w2 = w.detach().clone().set_requires_grad(), b2 = b.detach().clone().set_requires_grad();
      SGD again(decay_groups({{"w", w2}, {"b", b2}}, 0.05), {0.1, mu, nesterov});
      again.load_state_dict(sd);
      w.set_grad(grad_at(9, {2, 2}));
      w2.set_grad(grad_at(9, {2, 2}));
      opt.step();
      again.step();
      EXPECT_EQ(w.to_vector<float>(), w2.to_vector<float>());
    }
  }
}

// ---- the registry ----------------------------------------------------------------------------

// Groups from the config (optimizer.groups): first match wins over the default decay split,
// lr_scale and weight_decay apply, options arrive typed, and errors name the field.
TEST(Registry, ParamGroupsFromTheConfig) {
  NamedParams named = {{"layers.0.attn.q_proj.weight", Tensor::ones({2, 2}).set_requires_grad()},
                       {"layers.0.mlp.up.weight", Tensor::ones({2, 2}).set_requires_grad()},
                       {"layers.0.mlp.up.bias", Tensor::ones({2}).set_requires_grad()}};
  lathe::OptimizerConfig cfg;
  cfg.set_lr(0.1);
  cfg.set_weight_decay(0.5);
  lathe::ParamGroupConfig* g = cfg.add_groups();
  g->set_name("frozen_attn");
  g->set_pattern(R"(layers\.[0-9]+\.attn\..*)");
  g->set_lr_scale(0.0);
  g->set_weight_decay(0.0);
  (*g->mutable_options())["rank"] = "4";
  (*g->mutable_options())["scale"] = "0.25";
  (*g->mutable_options())["proj_type"] = "std";
  (*g->mutable_options())["layerwise"] = "true";
  auto opt = make_optimizer(cfg, named);
  ASSERT_EQ(opt->groups().size(), 3u);
  const ParamGroup& fg = opt->groups()[0];
  EXPECT_EQ(fg.name, "frozen_attn");
  ASSERT_EQ(fg.params.size(), 1u);
  EXPECT_EQ(fg.params[0].first, "layers.0.attn.q_proj.weight");
  EXPECT_EQ(fg.option_int("rank", 0), 4);
  EXPECT_DOUBLE_EQ(fg.option_double("scale", 0), 0.25);
  EXPECT_EQ(fg.option_string("proj_type", ""), "std");
  EXPECT_TRUE(fg.option_bool("layerwise", false));
  EXPECT_EQ(opt->groups()[1].name, "no_decay");  // the bias
  EXPECT_EQ(opt->groups()[2].name, "decay");     // the mlp weight
  // lr_scale 0 and no decay: the matched parameter stays; the others move.
  for (auto& [n, p] : named) p.set_grad(Tensor::ones(p.shape()));
  opt->set_lr(0.1);
  opt->step();
  EXPECT_EQ(named[0].second.to_vector<float>(), std::vector<float>(4, 1.0f));
  EXPECT_LT(named[1].second.to_vector<float>()[0], 0.95f);  // AdamW moved it (by lr and decay)

  auto first_error = [&](const lathe::OptimizerConfig& c) -> std::string {
    try {
      make_optimizer(c, named);
    } catch (const configs::ConfigError& e) {
      return e.errors().empty() ? "(empty)" : e.errors()[0];
    }
    return "(no ConfigError)";
  };
  lathe::OptimizerConfig bad = cfg;
  bad.mutable_groups(0)->set_pattern("(");
  EXPECT_EQ(first_error(bad).rfind("optimizer.groups[0].pattern:", 0), 0u) << first_error(bad);
  bad = cfg;
  bad.mutable_groups(0)->clear_pattern();
  EXPECT_EQ(first_error(bad).rfind("optimizer.groups[0].pattern: required", 0), 0u) << first_error(bad);
  bad = cfg;
  bad.mutable_groups(0)->set_lr_scale(-1);
  EXPECT_EQ(first_error(bad).rfind("optimizer.groups[0].lr_scale:", 0), 0u) << first_error(bad);
}

TEST(Registry, BuildsTheConfiguredTypeAndNamesTheFieldOnErrors) {
  NamedParams named = {{"w", Tensor::zeros({3, 2}).set_requires_grad()}, {"b", Tensor::zeros({3}).set_requires_grad()}};
  lathe::OptimizerConfig cfg;  // defaults: ADAMW, lr 3e-4, weight_decay 0.01
  auto opt = make_optimizer(cfg, named);
  EXPECT_STREQ(opt->name(), "AdamW");
  ASSERT_EQ(opt->groups().size(), 2u);
  EXPECT_EQ(opt->groups()[0].name, "no_decay");
  EXPECT_EQ(opt->groups()[0].params[0].first, "b");
  EXPECT_EQ(opt->groups()[0].weight_decay, 0.0);
  EXPECT_EQ(opt->groups()[1].weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(opt->groups()[1].lr, 3e-4);
  cfg.set_decay_1d_params(true);
  opt = make_optimizer(cfg, named);
  ASSERT_EQ(opt->groups().size(), 1u);
  EXPECT_EQ(opt->groups()[0].params.size(), 2u);
  EXPECT_EQ(opt->groups()[0].weight_decay, 0.01);
  // Caller specs come before the decay split.
  GroupSpec slow{"slow", "w", -1, 0.1, std::nullopt, {}};
  opt = make_optimizer(cfg, named, {slow});
  EXPECT_EQ(opt->groups()[0].name, "slow");
  EXPECT_DOUBLE_EQ(opt->groups()[0].lr, 3e-5);

  cfg.set_type(lathe::OptimizerConfig::SGD);
  cfg.set_sgd_momentum(0.9);
  cfg.set_nesterov(true);
  opt = make_optimizer(cfg, named);
  EXPECT_STREQ(opt->name(), "SGD");
  EXPECT_EQ(dynamic_cast<SGD&>(*opt).options().momentum, 0.9);

  auto config_error = [&](const lathe::OptimizerConfig& c) -> std::string {
    try {
      make_optimizer(c, named);
    } catch (const configs::ConfigError& e) {
      return e.errors().empty() ? "(empty)" : e.errors()[0];
    }
    return "(no ConfigError)";
  };
  cfg.set_sgd_momentum(0);
  EXPECT_EQ(config_error(cfg).rfind("optimizer.nesterov:", 0), 0u) << config_error(cfg);
  cfg.set_sgd_momentum(-0.5);
  cfg.set_nesterov(false);
  EXPECT_EQ(config_error(cfg).rfind("optimizer.sgd_momentum:", 0), 0u) << config_error(cfg);

  // A type without a factory (as a build that leaves one out) is an error naming the field.
  OptimizerFactory sgd = register_optimizer(lathe::OptimizerConfig::SGD, {});
  ASSERT_TRUE(sgd);
  EXPECT_FALSE(optimizer_registered(lathe::OptimizerConfig::SGD));
  const std::string e = config_error(cfg);
  register_optimizer(lathe::OptimizerConfig::SGD, sgd);
  EXPECT_EQ(e.rfind("optimizer.type: SGD is not implemented", 0), 0u) << e;
  EXPECT_NE(e.find("ADAMW"), std::string::npos) << e;
  EXPECT_TRUE(optimizer_registered(lathe::OptimizerConfig::SGD));
}

// ---- the fused gradient norm -------------------------------------------------------------------

TEST(ClipGradNorm, OneNormOverManyGradientsMatchesDoubleReference) {
  std::vector<Tensor> params;
  double ref = 0;
  for (int k = 0; k < 25; ++k) {
    Shape s = k % 3 == 0 ? Shape{k + 1} : Shape{k + 1, 3};
    Tensor p = Tensor::zeros(s).set_requires_grad();
    if (k % 7 != 6) {  // a few without a gradient
      Tensor g = grad_at(k, s);
      for (float v : g.to_vector<float>()) ref += double(v) * v;
      p.set_grad(g);
    }
    params.push_back(p);
  }
  Tensor sq = grad_norm_squared(params);
  EXPECT_EQ(sq.dim(), 0);
  EXPECT_EQ(sq.dtype(), DType::f32);
  EXPECT_NEAR(sq.item(), ref, 1e-6 * ref);
  const double n = clip_grad_norm(params, 1.0);
  EXPECT_NEAR(n, std::sqrt(ref), 1e-6 * std::sqrt(ref));
  EXPECT_NEAR(std::sqrt(grad_norm_squared(params).item()), 1.0, 1e-5);
}

TEST(ClipGradNorm, CommunicatorHookSumsShardsBeforeTheRoot) {
  Tensor a = Tensor::zeros({2}).set_requires_grad();
  Tensor b = Tensor::zeros({1}).set_requires_grad();
  a.set_grad(Tensor::from_vector<float>({3.0f, 0.0f}, {2}));
  b.set_grad(Tensor::from_vector<float>({4.0f}, {1}));
  int calls = 0;
  // Two ranks holding equal shards: the all-reduce doubles the squared norm.
  auto two_ranks = [&](Tensor& sq) {
    if (++calls == 1) {
      EXPECT_NEAR(sq.item(), 25.0, 1e-5);
    }
    kernels::scale_(sq, 2.0);
  };
  const double n = clip_grad_norm({a, b}, 1.0, two_ranks);
  EXPECT_EQ(calls, 1);
  EXPECT_NEAR(n, 5.0 * std::sqrt(2.0), 1e-5);
  EXPECT_NEAR(b.grad().to_vector<float>()[0], 4.0 / (5.0 * std::sqrt(2.0) + 1e-6), 1e-6);
  // A rank with no gradient still joins the all-reduce.
  Tensor c = Tensor::zeros({1}).set_requires_grad();
  EXPECT_NEAR(clip_grad_norm({c}, 1.0, two_ranks), 0.0, 1e-12);
  EXPECT_EQ(calls, 2);
}
