// NOLA: bases regenerated bit for bit from (seed, module, factor, index) whatever the chunking,
// the coefficients' gradient by f64 finite differences, a no-op at init, parameter counts
// against the spec's formula, export as plain LoRA == forward, merge == unmerged.
#include <gtest/gtest.h>

#include <cmath>

#include <omp.h>

#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "kernels/ops.h"
#include "optim/registry.h"
#include "peft/adapter_io.h"
#include "peft/inject.h"
#include "peft/methods.h"
#include "peft/nola.h"
#include "models/autocast.h"
#include "methods_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

namespace ag = lathe::autograd;
using peft::NolaFactor;
using peft::NolaKey;
using peft::PeftOptions;

TEST(NolaBasis, DeterministicKeyedAndUniform) {
  const NolaKey k{1234, peft::nola_module_key("layers.0.attn.q_proj")};
  const Tensor a = peft::nola_basis(k, NolaFactor::A, 3, {4, 50}, 0.5, DType::f32, Device::cpu());
  const Tensor b = peft::nola_basis(k, NolaFactor::A, 3, {4, 50}, 0.5, DType::f32, Device::cpu());
  EXPECT_TRUE(test::bit_equal(a, b));
  // A basis is its own stream: another index, factor, module or seed differs.
  for (const Tensor& other :
       {peft::nola_basis(k, NolaFactor::A, 4, {4, 50}, 0.5, DType::f32, Device::cpu()),
        peft::nola_basis(k, NolaFactor::B, 3, {4, 50}, 0.5, DType::f32, Device::cpu()),
        peft::nola_basis({1234, peft::nola_module_key("layers.0.attn.v_proj")}, NolaFactor::A, 3, {4, 50}, 0.5,
                         DType::f32, Device::cpu()),
        peft::nola_basis({1235, k.module}, NolaFactor::A, 3, {4, 50}, 0.5, DType::f32, Device::cpu())})
    EXPECT_GT(test::max_abs_diff(a, other), 0.1);
  // U(-scale, scale): mean ~ 0, variance ~ scale^2 / 3.
  const std::vector<float> v = a.to_vector<float>();
  double m = 0, m2 = 0;
  for (float x : v) {
    EXPECT_GE(x, -0.5f);
    EXPECT_LT(x, 0.5f);
    m += x;
    m2 += static_cast<double>(x) * x;
  }
  m /= static_cast<double>(v.size());
  EXPECT_NEAR(m, 0.0, 0.06);
  EXPECT_NEAR(m2 / static_cast<double>(v.size()), 0.25 / 3, 0.02);
}

TEST(NolaBasis, BitwiseStableAcrossThreadCounts) {
  // Each element is a function of (key, element) alone (counter-based Philox).
  const NolaKey k{42, peft::nola_module_key("layers.1.attn.v_proj")};
  const int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor one = peft::nola_basis(k, NolaFactor::B, 17, {64, 257}, 0.1, DType::f32, Device::cpu());
  omp_set_num_threads(4);
  const Tensor four = peft::nola_basis(k, NolaFactor::B, 17, {64, 257}, 0.1, DType::f32, Device::cpu());
  omp_set_num_threads(prev);
  EXPECT_TRUE(test::bit_equal(one, four));
  // Element e depends on e alone, not on the shape of the draw: a flat draw gives the same values.
  const Tensor flat = peft::nola_basis(k, NolaFactor::B, 17, {64 * 257}, 0.1, DType::f32, Device::cpu());
  EXPECT_TRUE(test::bit_equal(flat.reshape({64, 257}), one));
}

TEST(NolaBasis, CombineIsIndependentOfChunking) {
  const NolaKey k{7, peft::nola_module_key("m")};
  const int64_t K = 10;
  Generator g(5);
  const Tensor coef = Tensor::randn({K}, g, DType::f64);
  // Reference: the bases one by one, summed in f64 with the 1/sqrt(K) scale.
  std::vector<double> want(6 * 5, 0.0);
  const std::vector<double> c = coef.to_vector<double>();
  for (int64_t i = 0; i < K; ++i) {
    const std::vector<double> b =
        peft::nola_basis(k, NolaFactor::B, static_cast<uint32_t>(i), {6, 5}, 1 / std::sqrt(10.0), DType::f64,
                         Device::cpu())
            .to_vector<double>();
    for (size_t e = 0; e < want.size(); ++e) want[e] += c[static_cast<size_t>(i)] * b[e];
  }
  std::vector<Tensor> grads;
  for (int64_t chunk : {1, 3, 10, 64}) {
    Tensor cf = coef.clone();
    cf.set_requires_grad(true);
    const Tensor out = peft::nola_combine(cf, k, NolaFactor::B, {6, 5}, chunk);
    EXPECT_LT(test::max_abs_diff(out, Tensor::from_vector<double>(want, {6, 5})), 1e-12) << "chunk " << chunk;
    ag::sum(ag::mul(out, out)).backward();
    grads.push_back(cf.grad());
  }
  for (size_t i = 1; i < grads.size(); ++i) EXPECT_LT(test::max_abs_diff(grads[i], grads[0]), 1e-12);
}

TEST(NolaBasis, CoefficientGradientsByFiniteDifferences) {
  // y = x A^T B^T with A = A0 + sum a_i Ahat_i, B = sum b_j Bhat_j, in f64.
  const NolaKey k{99, peft::nola_module_key("layers.1.mlp.up_proj")};
  const int64_t r = 3, in = 5, out = 4;
  Generator g(8);
  const Tensor A0 = peft::nola_basis(k, NolaFactor::A0, 0, {r, in}, 0.4, DType::f64, Device::cpu());
  auto f = [&](const std::vector<Tensor>& t) {
    const Tensor A = ag::add(A0, peft::nola_combine(t[0], k, NolaFactor::A, {r, in}, 2));
    const Tensor B = peft::nola_combine(t[1], k, NolaFactor::B, {out, r}, 3);
    return ag::matmul(ag::matmul(t[2], A, false, true), B, false, true);
  };
  const auto res = ag::gradcheck(f, {Tensor::randn({6}, g, DType::f64), Tensor::randn({7}, g, DType::f64),
                                     Tensor::randn({2, in}, g, DType::f64)});
  EXPECT_TRUE(res.ok) << res.message;
}

TEST(NolaLinear, NoOpAtInitAndGradientReachesB) {
  peft::LoraOptions lo;
  lo.r = 4;
  lo.alpha = 8;
  peft::NolaOptions no;
  no.num_basis_A = 12;
  no.num_basis_B = 9;
  no.chunk = 5;
  auto base = test::method_linear(6, 5, true, 3);
  peft::NolaLinear l(base, lo, no, 11, "layers.0.mlp.fc", nullptr);
  Generator g(1);
  const Tensor x = Tensor::randn({3, 6}, g, DType::f32);
  {
    ag::NoGradGuard ng;
    EXPECT_TRUE(test::bit_equal(l.forward(x), base->forward(x)));
  }
  EXPECT_EQ(l.adapter_parameters(), 21);
  ag::sum(ag::mul(l.forward(x), l.forward(x))).backward();
  // At init B = 0: only b's gradient is non-zero (through A0), a's is exactly zero.
  const std::vector<float> ga = l.coef_A().grad().to_vector<float>(), gb = l.coef_B().grad().to_vector<float>();
  for (float v : ga) EXPECT_EQ(v, 0.0f);
  double nb = 0;
  for (float v : gb) nb += std::abs(v);
  EXPECT_GT(nb, 1e-3);
  EXPECT_FALSE(l.base_weight().grad().defined());
  // A0 is kaiming_uniform: |A0| <= 1/sqrt(in).
  for (float v : l.lora_A().to_vector<float>()) EXPECT_LE(std::abs(v), 1 / std::sqrt(6.0f));
}

models::ModelSpec llama2(int64_t layers, int64_t d, int64_t heads, int64_t kv, int64_t ff) {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 32000;
  s.n_layer = layers;
  s.n_head = heads;
  s.n_kv_head = kv;
  s.d_model = d;
  s.d_ff = ff;
  s.max_seq_len = 4096;
  s.bias = false;
  s.tie_embeddings = false;
  return s;
}

// The NOLA table's parameter counts (spec section 4): k = l = 128 / 256 / 512 on all 7 linears
// of LLaMA-2 7B / 13B / 70B give 0.06M / 0.14M / 0.57M.
TEST(NolaCount, RealModelFormulas) {
  PeftOptions o;
  o.method = peft::Method::nola;
  o.target.names = {"all-linear"};
  o.lora.r = 16;
  o.nola.num_basis_A = o.nola.num_basis_B = 128;
  EXPECT_EQ(peft::lora_parameter_count(llama2(32, 4096, 32, 32, 11008), o), 57344);
  o.nola.num_basis_A = o.nola.num_basis_B = 256;
  EXPECT_EQ(peft::lora_parameter_count(llama2(40, 5120, 40, 40, 13824), o), 143360);
  o.nola.num_basis_A = o.nola.num_basis_B = 512;
  EXPECT_EQ(peft::lora_parameter_count(llama2(80, 8192, 64, 8, 28672), o), 573440);
}

class NolaModel : public ::testing::TestWithParam<bool> {};

TEST_P(NolaModel, CoefficientsOnlyExportAndMerge) {
  const bool gpt2 = GetParam();
  const models::ModelSpec s = gpt2 ? test::tiny_gpt2() : test::tiny_llama();
  auto model = models::build_model(s, 1);
  const Tensor ids = test::test_ids(2, 9, s.vocab_size);
  const Tensor before = test::eval_logits(*model, ids);
  PeftOptions o;
  o.method = peft::Method::nola;
  o.target.names = {"all-linear"};
  o.lora.r = 4;
  o.lora.alpha = 8;
  o.nola.num_basis_A = 16;
  o.nola.num_basis_B = 8;
  o.nola.chunk = 5;
  o.seed = 3;
  const auto res = peft::inject_lora(*model, o);
  EXPECT_EQ(model->num_parameters(true), static_cast<int64_t>(res.adapters.size()) * 24);
  EXPECT_EQ(peft::lora_parameter_count(s, o), model->num_parameters(true));
  for (auto& [n, p] : model->named_parameters())
    EXPECT_EQ(p.requires_grad(), n.find("nola_coef") != std::string::npos) << n;
  EXPECT_TRUE(test::bit_equal(test::eval_logits(*model, ids), before));
  OptimizerConfig oc;
  auto opt = optim::make_optimizer(oc, model->named_parameters());
  model->loss(ids, test::test_ids(2, 9, s.vocab_size, 3)).backward();
  for (auto& [n, p] : model->named_parameters()) EXPECT_EQ(p.grad().defined(), p.requires_grad()) << n;
  opt->step();
  for (const auto& [k, t] : opt->state_dict()) {
    (void)t;
    if (k != "__step__") {
      EXPECT_NE(k.find("nola_coef"), std::string::npos) << k;
    }
  }
  for (auto& [n, l] : peft::lora_layers(*model)) {
    auto* nl = dynamic_cast<peft::NolaLinear*>(l);
    ASSERT_NE(nl, nullptr);
    test::randomize(nl->coef_A(), std::hash<std::string>()(n), 0.5);
    test::randomize(nl->coef_B(), std::hash<std::string>()(n) + 1, 0.5);
  }
  const Tensor want = test::eval_logits(*model, ids);
  EXPECT_GT(test::max_abs_diff(want, before), 1e-3);
  // The same injection elsewhere regenerates the same bases: same logits bit for bit.
  {
    auto again = models::build_model(s, 1);
    peft::inject_lora(*again, o);
    auto src = peft::lora_layers(*model), dst = peft::lora_layers(*again);
    for (size_t i = 0; i < src.size(); ++i) {
      auto* a = dynamic_cast<peft::NolaLinear*>(src[i].second);
      auto* b = dynamic_cast<peft::NolaLinear*>(dst[i].second);
      b->coef_A().copy_(a->coef_A());
      b->coef_B().copy_(a->coef_B());
    }
    EXPECT_TRUE(test::bit_equal(test::eval_logits(*again, ids), want));
  }
  // Export as plain LoRA (materialised A, B) == forward.
  test::TmpDir tmp("nola_export");
  peft::save_adapter(*model, tmp.path(), peft::save_options(o, res));
  auto fresh = models::build_model(s, 1);
  peft::load_adapter(*fresh, tmp.path());
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*fresh, ids), want), 1e-5);
  // Merge == unmerged; unmerge restores the base.
  peft::merge_adapters(*model);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), want), 1e-5);
  peft::unmerge_adapters(*model);
  peft::unload_adapters(*model, false);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), before), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Arch, NolaModel, ::testing::Values(true, false),
                         [](const auto& i) { return i.param ? "gpt2" : "llama"; });

}  // namespace
}  // namespace lathe

namespace lathe {
namespace {

// Under bf16 Autocast (train.precision BF16) every method's layer runs in the compute dtype
// and stays close to its f32 output.
TEST(PeftMethodsAutocast, Bf16ForwardMatchesF32) {
  peft::LoraOptions lo;
  lo.r = 4;
  lo.alpha = 8;
  Generator gen(3);
  std::vector<std::shared_ptr<peft::LoraLinear>> layers;
  peft::NolaOptions no;
  no.num_basis_A = no.num_basis_B = 6;
  auto nola = std::make_shared<peft::NolaLinear>(test::method_linear(8, 6, true, 1), lo, no, 5, "m", nullptr);
  test::randomize(nola->coef_A(), 1, 0.5);
  test::randomize(nola->coef_B(), 2, 0.5);
  auto sora = std::make_shared<peft::SoraLinear>(test::method_linear(8, 6, true, 2), lo, peft::SoraOptions{}, gen, nullptr);
  test::randomize(sora->LoraLinear::lora_B(), 3, 0.5);
  auto sb = std::make_shared<peft::LoraSbLinear>(test::method_linear(8, 6, true, 3), lo, nullptr);
  sb->init_from_weight(peft::LoraSbOptions{}, gen);
  test::randomize(sb->lora_R(), 4, 0.5);
  Generator g(1);
  const Tensor x = Tensor::randn({3, 8}, g, DType::f32);
  for (const auto& l : std::vector<std::shared_ptr<peft::LoraLinear>>{nola, sora, sb}) {
    const Tensor f32 = l->forward(x);
    Tensor bf;
    {
      models::Autocast ac(DType::bf16);
      bf = l->forward(x);
      ag::sum(ag::cast(bf, DType::f32)).backward();  // the backward runs in bf16 too
    }
    EXPECT_LT(test::max_abs_diff(bf, f32), 0.1) << l->method_name();
  }
}

}  // namespace
}  // namespace lathe
