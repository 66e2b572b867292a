// SoRA: the proximal step (paper soft threshold and the reference code's rule) on small
// vectors, exact zeros, the sparsifying schedule, gates that reach zero in training, and the
// pruned export (zero ranks dropped, gate folded into B, rank/alpha patterns) == forward.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "optim/registry.h"
#include "peft/adapter_io.h"
#include "peft/inject.h"
#include "peft/methods.h"
#include "peft/sora.h"
#include "methods_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

namespace ag = lathe::autograd;
using peft::PeftOptions;

std::vector<double> prox(const std::vector<double>& g, double lambda, double lr, peft::SoraThreshold mode) {
  Tensor t = Tensor::from_vector<double>(g, {static_cast<int64_t>(g.size())}).to(DType::f32);
  peft::sora_proximal(t, lambda, lr, mode);
  return t.to(DType::f64).to_vector<double>();
}

TEST(SoraProximal, PaperSoftThreshold) {
  // T_t(g) = sign(g) max(|g| - t, 0) with t = lr * lambda = 0.1.
  const std::vector<double> got = prox({0.5, -0.05, 0.2, -0.3, 0.01, -0.1}, 2.0, 0.05, peft::SoraThreshold::paper);
  const std::vector<double> want = {0.4, 0, 0.1, -0.2, 0, 0};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-6) << i;
    if (want[i] == 0) {
      EXPECT_EQ(got[i], 0.0) << i;
      EXPECT_FALSE(std::signbit(got[i])) << i;  // +0, not -0
    }
  }
}

TEST(SoraProximal, ReferenceCodeThreshold) {
  // xi = 0.1, not scaled by lr: g > xi -> g - xi; then g < -xi -> g + xi; then |g| < xi -> 0.
  // Values in (xi, 2 xi) first shrink below xi and are then zeroed: |g| < 2 xi -> 0.
  const std::vector<double> got =
      prox({0.25, 0.15, 0.05, -0.15, -0.25, -0.5}, 0.1, 123.0, peft::SoraThreshold::code);
  const std::vector<double> want = {0.15, 0, 0, 0, -0.15, -0.4};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-6) << i;
    if (want[i] == 0) {
      EXPECT_EQ(got[i], 0.0) << i;
    }
  }
}

TEST(SoraSchedule, DenseThenLinearLevels) {
  peft::SoraOptions o;
  o.lambda = 0.0;
  EXPECT_EQ(peft::sora_lambda_at(o, 1000), 0.0);  // no schedule: lambda_max 0
  o.lambda = 1e-4;
  o.lambda_max = 7e-4;
  o.schedule_levels = 7;
  o.schedule_start = 50;
  o.schedule_interval = 10;
  EXPECT_EQ(peft::sora_lambda_at(o, 1), 1e-4);
  EXPECT_EQ(peft::sora_lambda_at(o, 49), 1e-4);
  EXPECT_NEAR(peft::sora_lambda_at(o, 50), 2e-4, 1e-12);  // level 1 of linspace(1e-4, 7e-4, 7)
  EXPECT_NEAR(peft::sora_lambda_at(o, 59), 2e-4, 1e-12);
  EXPECT_NEAR(peft::sora_lambda_at(o, 60), 3e-4, 1e-12);
  EXPECT_NEAR(peft::sora_lambda_at(o, 100), 7e-4, 1e-12);
  EXPECT_NEAR(peft::sora_lambda_at(o, 10000), 7e-4, 1e-12);
}

TEST(SoraLinear, ForwardGradcheckAndCount) {
  peft::LoraOptions lo;
  lo.r = 3;
  lo.alpha = 6;
  peft::SoraOptions so;
  Generator gen(2);
  auto base = test::method_linear(5, 4, true, 3);
  peft::SoraLinear l(base, lo, so, gen, nullptr);
  EXPECT_EQ(l.adapter_parameters(), 3 * (5 + 4) + 3);
  // B = 0 at init: a no-op.
  Generator g(1);
  const Tensor x = Tensor::randn({2, 5}, g, DType::f32);
  {
    ag::NoGradGuard ng;
    EXPECT_TRUE(test::bit_equal(l.forward(x), base->forward(x)));
  }
  test::randomize(l.lora_B(), 4, 0.5);
  // y = base + s * ((x A^T) * g) B^T, checked in f64 on the same formula's pieces.
  const Tensor A = l.lora_A().to(DType::f64), B = l.lora_B().to(DType::f64);
  auto f = [&](const std::vector<Tensor>& t) {
    Tensor h = ag::mul(ag::matmul(t[0], t[1], false, true), t[3]);
    return ag::mul(ag::matmul(h, t[2], false, true), l.scaling());
  };
  EXPECT_TRUE(ag::gradcheck(f, {x.to(DType::f64), A.clone(), B.clone(), l.gate().to(DType::f64).clone()}).ok);
  ag::NoGradGuard ng;
  const Tensor y = l.forward(x);
  const Tensor ref = kernels::binary(kernels::BinaryOp::add, base->forward(x).to(DType::f64),
                                     f({x.to(DType::f64), A, B, l.gate().to(DType::f64)}));
  EXPECT_LT(test::max_abs_diff(y, ref), 1e-5);
}

PeftOptions sora_options() {
  PeftOptions o;
  o.method = peft::Method::sora;
  o.target.names = {"all-linear"};
  o.lora.r = 4;
  o.lora.alpha = 8;
  return o;
}

TEST(SoraModel, GatesReachExactZerosInTraining) {
  const models::ModelSpec s = test::tiny_llama();
  auto model = models::build_model(s, 1);
  PeftOptions o = sora_options();
  o.sora.lambda = 0.5;  // threshold lr * lambda = 0.05 per step
  const auto res = peft::inject_lora(*model, o);
  EXPECT_EQ(model->num_parameters(true), peft::lora_parameter_count(s, o));
  OptimizerConfig oc;
  oc.set_lr(0.1);
  auto opt = optim::make_optimizer(oc, model->named_parameters());
  const Tensor ids = test::test_ids(2, 9, s.vocab_size), tg = test::test_ids(2, 9, s.vocab_size, 3);
  for (int step = 1; step <= 20; ++step) {
    model->loss(ids, tg).backward();
    opt->step();
    opt->zero_grad();
    peft::sora_after_step(*model, 0.1, step);
  }
  int64_t zeros = 0, total = 0;
  for (auto& [n, l] : peft::lora_layers(*model)) {
    auto* sl = dynamic_cast<peft::SoraLinear*>(l);
    ASSERT_NE(sl, nullptr);
    for (float v : sl->gate().to_vector<float>()) {
      zeros += v == 0.0f;
      ++total;
    }
  }
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, total);
}

class SoraExport : public ::testing::TestWithParam<bool> {};

TEST_P(SoraExport, PrunedExportEqualsForward) {
  const bool gpt2 = GetParam();
  const models::ModelSpec s = gpt2 ? test::tiny_gpt2() : test::tiny_llama();
  auto model = models::build_model(s, 1);
  const Tensor ids = test::test_ids(2, 9, s.vocab_size);
  const PeftOptions o = sora_options();
  const auto res = peft::inject_lora(*model, o);
  int64_t kept = 0;
  size_t li = 0;
  for (auto& [n, l] : peft::lora_layers(*model)) {
    auto* sl = dynamic_cast<peft::SoraLinear*>(l);
    test::randomize(sl->lora_B(), std::hash<std::string>()(n), 0.3);
    // Zero some gates: layer i keeps 4 - (i % 4) ranks (the first layer keeps all, some none).
    std::vector<float> g = sl->gate().to_vector<float>();
    for (size_t k = 0; k < li % 5 && k < g.size(); ++k) g[(k * 3 + li) % g.size()] = 0.0f;
    sl->gate().copy_(Tensor::from_vector<float>(g, {4}));
    kept += sl->active_ranks();
    ++li;
  }
  const Tensor want = test::eval_logits(*model, ids);
  test::TmpDir tmp("sora_export");
  peft::save_adapter(*model, tmp.path(), peft::save_options(o, res));
  // The exported ranks are the kept ones (a module with none keeps one zero rank for peft).
  std::ifstream f(tmp / "adapter_config.json");
  const nlohmann::json c = nlohmann::json::parse(f);
  EXPECT_FALSE(c["rank_pattern"].empty());
  auto fresh = models::build_model(s, 1);
  const auto loaded = peft::load_adapter(*fresh, tmp.path());
  int64_t loaded_ranks = 0;
  for (const auto& a : loaded.injected.adapters) loaded_ranks += a.r;
  if (!gpt2) {
    EXPECT_LE(loaded_ranks, kept + static_cast<int64_t>(res.adapters.size()));
  }
  EXPECT_LT(loaded_ranks, static_cast<int64_t>(res.adapters.size()) * 4);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*fresh, ids), want), 1e-5);
  // Merge == unmerged.
  peft::merge_adapters(*model);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Arch, SoraExport, ::testing::Values(true, false),
                         [](const auto& i) { return i.param ? "gpt2" : "llama"; });

}  // namespace
}  // namespace lathe
