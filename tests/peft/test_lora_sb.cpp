// LoRA-XS / LoRA-SB: truncated SVD on planted spectra, the two inits' formulas, only R
// training, parameter counts against the spec's formula, export as plain LoRA.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "optim/registry.h"
#include "peft/adapter_io.h"
#include "peft/inject.h"
#include "peft/lora_sb.h"
#include "peft/methods.h"
#include "peft/svd.h"
#include "methods_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

using peft::PeftOptions;

Tensor product(const peft::TruncatedSvd& d) {
  const int64_t r = d.S.size(0);
  Tensor us = kernels::binary(kernels::BinaryOp::mul, d.U, d.S.reshape({1, r}));
  return kernels::matmul(us, d.V, false, true);
}

TEST(TruncatedSvd, ExactOnPlantedSpectrum) {
  // M = P diag(5, 4, 3, 2, 1) Q^T [7, 6]: rank 3 -> the top three terms (Eckart-Young).
  const std::vector<double> s = {5, 4, 3, 2, 1};
  const Tensor M = test::planted(7, 6, s, 5, 11);
  const peft::TruncatedSvd d = peft::truncated_svd(M, 3, 10, 42);
  EXPECT_EQ(d.U.shape(), (Shape{7, 3}));
  EXPECT_EQ(d.V.shape(), (Shape{6, 3}));
  const std::vector<double> got = d.S.to_vector<double>();
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got[i], s[i], 1e-10);
  EXPECT_LT(test::orthonormality_error(d.U), 1e-12);
  EXPECT_LT(test::orthonormality_error(d.V), 1e-12);
  EXPECT_LT(test::max_abs_diff(product(d), test::planted(7, 6, s, 3, 11)), 1e-10);
}

TEST(TruncatedSvd, RandomisedSubspaceOnALargerMatrix) {
  // 40 x 30 with r + oversample = 11 < 30: the randomised path. A decaying spectrum is
  // resolved to f64 accuracy by 10 subspace iterations.
  std::vector<double> s;
  for (int i = 0; i < 30; ++i) s.push_back(std::pow(0.5, i));
  const Tensor M = test::planted(40, 30, s, 30, 5);
  const peft::TruncatedSvd d = peft::truncated_svd(M, 3, 10, 42, 8);
  EXPECT_LT(test::max_abs_diff(product(d), test::planted(40, 30, s, 3, 5)), 1e-9);
  test::expect_error([&] { peft::truncated_svd(M, 31); }, {"rank 31", "[1, 30]"});
}

TEST(LoraSb, GradientInitIsTheBestRankRApproximationOfTheFirstAdamStep) {
  // G with a block sign pattern: sign(G) = blockdiag(+1 [3x3], -1 [2x2], +1 [1x1]) in a 6x7
  // matrix (zeros elsewhere), singular values 3, 2, 1. With r = 2 the best rank-2
  // approximation of -eta sign(G) is its first two blocks; magnitudes of G do not matter.
  const int64_t out = 6, in = 7;
  std::vector<double> g(static_cast<size_t>(out * in), 0.0), want(g.size(), 0.0);
  Generator mag(3);
  auto put = [&](int64_t r0, int64_t c0, int64_t n, double sign, bool kept) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const size_t k = static_cast<size_t>((r0 + i) * in + (c0 + j));
        g[k] = sign * (0.1 + mag.uniform());
        if (kept) want[k] = -0.01 * sign;
      }
  };
  put(0, 0, 3, 1.0, true);
  put(3, 3, 2, -1.0, true);
  put(5, 6, 1, 1.0, false);
  for (double alpha : {2.0, 5.0}) {  // s = alpha / r: R absorbs 1 / s
    peft::LoraOptions lo;
    lo.r = 2;
    lo.alpha = alpha;
    peft::LoraSbLinear l(test::method_linear(in, out, true, 1), lo, nullptr);
    l.init_from_gradient(Tensor::from_vector<double>(g, {out, in}).to(DType::f32), 0.01, peft::LoraSbOptions{});
    EXPECT_LT(test::max_abs_diff(l.delta_weight(), Tensor::from_vector<double>(want, {out, in})), 1e-7);
    // A has orthonormal rows, B orthonormal columns, R = diag(3 eta, 2 eta) / s.
    EXPECT_LT(test::orthonormality_error(l.lora_A().transpose(0, 1)), 1e-6);
    EXPECT_LT(test::orthonormality_error(l.lora_B()), 1e-6);
    const std::vector<double> R = l.lora_R().to(DType::f64).contiguous().to_vector<double>();
    EXPECT_NEAR(R[0], 0.03 / l.scaling(), 1e-7);
    EXPECT_NEAR(R[3], 0.02 / l.scaling(), 1e-7);
    EXPECT_EQ(R[1], 0.0);
    EXPECT_EQ(R[2], 0.0);
  }
}

TEST(LoraSb, XsInitIsTheWeightsTruncatedSvd) {
  const std::vector<double> s = {4, 3, 2, 1, 0.5};
  auto base = std::make_shared<models::Linear>(5, 6, false);
  base->weight().copy_(test::planted(6, 5, s, 5, 9).to(DType::f32));
  peft::LoraOptions lo;
  lo.r = 3;
  lo.alpha = 3;
  peft::LoraSbLinear l(base, lo, nullptr);
  Generator gen(4);
  l.init_from_weight(peft::LoraSbOptions{}, gen);
  // B A = W_3 (A = S Q^T, B = P); R ~ N(0, 1e-10).
  const Tensor ba = kernels::matmul(l.lora_B().to(DType::f64), l.lora_A().to(DType::f64));
  EXPECT_LT(test::max_abs_diff(ba, test::planted(6, 5, s, 3, 9)), 1e-5);
  const std::vector<double> R = l.lora_R().to(DType::f64).contiguous().to_vector<double>();
  double ss = 0;
  for (double v : R) {
    EXPECT_LT(std::abs(v), 1e-4);
    ss += v * v;
  }
  EXPECT_GT(ss, 0.0);
}

models::ModelSpec llama32_3b() {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 128256;
  s.n_layer = 28;
  s.n_head = 24;
  s.n_kv_head = 8;
  s.d_model = 3072;
  s.d_ff = 8192;
  s.max_seq_len = 4096;
  s.bias = false;
  s.tie_embeddings = true;
  return s;
}

// The spec's check numbers (section 2): r^2 per module.
TEST(LoraSbCount, RealModelFormulas) {
  PeftOptions o;
  o.method = peft::Method::lora_sb;
  o.target.names = {"all-linear"};
  o.lora.r = 96;
  EXPECT_EQ(peft::lora_parameter_count(llama32_3b(), o), 1806336);
  PeftOptions lora = o;
  lora.method = peft::Method::lora;
  lora.lora.r = 32;
  EXPECT_EQ(peft::lora_parameter_count(llama32_3b(), lora), 48627712);
  models::ModelSpec mistral = llama32_3b();
  mistral.n_layer = 32;
  mistral.n_head = 32;
  mistral.d_model = 4096;
  mistral.d_ff = 14336;
  mistral.vocab_size = 32000;
  EXPECT_EQ(peft::lora_parameter_count(mistral, o), 2064384);
}

class LoraSbModel : public ::testing::TestWithParam<bool> {};

TEST_P(LoraSbModel, OnlyRTrainsAndExportsAsPlainLora) {
  const bool gpt2 = GetParam();
  const models::ModelSpec s = gpt2 ? test::tiny_gpt2() : test::tiny_llama();
  auto model = models::build_model(s, 1);
  const Tensor ids = test::test_ids(2, 9, s.vocab_size);
  PeftOptions o;
  o.method = peft::Method::lora_sb;
  o.sb.gradient_init = false;  // LoRA-XS: the init needs no data
  o.target.names = {"all-linear"};
  o.lora.r = 4;
  o.lora.alpha = 4;
  const auto res = peft::inject_lora(*model, o);
  // Trainable = r^2 per module = the count from the spec alone.
  EXPECT_EQ(model->num_parameters(true), static_cast<int64_t>(res.adapters.size()) * 16);
  EXPECT_EQ(peft::lora_parameter_count(s, o), model->num_parameters(true));
  for (auto& [n, p] : model->named_parameters())
    EXPECT_EQ(p.requires_grad(), n.find("lora_R") != std::string::npos) << n;
  // Only R gets gradients and optimizer state.
  OptimizerConfig oc;
  auto opt = optim::make_optimizer(oc, model->named_parameters());
  size_t opt_params = 0;
  for (const auto& g : opt->groups()) opt_params += g.params.size();
  EXPECT_EQ(opt_params, res.adapters.size());
  model->loss(ids, test::test_ids(2, 9, s.vocab_size, 3)).backward();
  for (auto& [n, p] : model->named_parameters()) EXPECT_EQ(p.grad().defined(), p.requires_grad()) << n;
  opt->step();
  for (const auto& [k, t] : opt->state_dict()) {
    (void)t;
    if (k != "__step__") {
      EXPECT_NE(k.find("lora_R"), std::string::npos) << k;
    }
  }
  for (auto& [n, l] : peft::lora_layers(*model)) test::randomize(l->lora_R(), std::hash<std::string>()(n), 0.05);

  // Export as plain LoRA (A' = R A): a fresh base with the adapter loaded gives the same logits.
  const Tensor want = test::eval_logits(*model, ids);
  test::TmpDir tmp("lora_sb_export");
  peft::save_adapter(*model, tmp.path(), peft::save_options(o, res));
  auto fresh = models::build_model(s, 1);
  EXPECT_GT(test::max_abs_diff(test::eval_logits(*fresh, ids), want), 1e-3);
  const auto loaded = peft::load_adapter(*fresh, tmp.path());
  for (auto& [n, l] : peft::lora_layers(*fresh)) EXPECT_STREQ(l->method_name(), "LoRA") << n;
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*fresh, ids), want), 1e-5);
  // Merge == unmerged.
  peft::merge_adapters(*model);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Arch, LoraSbModel, ::testing::Values(true, false),
                         [](const auto& i) { return i.param ? "gpt2" : "llama"; });

}  // namespace
}  // namespace lathe
