// LoRA layer, injection, matching, parameter counts, merge/unmerge, frozen base.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "autograd/gradcheck.h"
#include "bench/profiling_backend.h"
#include "autograd/ops.h"
#include "models/autocast.h"
#include "optim/registry.h"
#include "peft/inject.h"
#include "peft/lora.h"
#include "peft_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

using peft::LoraLinear;
using peft::LoraOptions;
using peft::PeftOptions;
namespace ag = lathe::autograd;

std::shared_ptr<models::Linear> random_linear(int64_t in, int64_t out, bool bias, uint64_t seed) {
  auto l = std::make_shared<models::Linear>(in, out, bias);
  test::randomize(l->weight(), seed, 0.5);
  if (bias) test::randomize(l->bias(), seed + 1, 0.5);
  return l;
}

TEST(LoraMatch, ListSuffixRegexAllLinear) {
  peft::NamePattern p;
  p.names = {"q_proj", "attn.v_proj"};
  EXPECT_TRUE(p.matches("layers.0.attn.q_proj", "f"));
  EXPECT_TRUE(p.matches("q_proj", "f"));
  EXPECT_TRUE(p.matches("layers.3.attn.v_proj", "f"));
  EXPECT_FALSE(p.matches("layers.0.attn.xq_proj", "f"));  // a suffix must start at a dot
  EXPECT_FALSE(p.matches("layers.0.attn.q_proj.lora_A", "f"));
  peft::NamePattern r;
  r.regex = R"(.*\.(q|v)_proj)";
  EXPECT_TRUE(r.matches("layers.1.attn.v_proj", "f"));
  EXPECT_FALSE(r.matches("layers.1.attn.o_proj", "f"));
  r.regex = "q_proj";  // full match: a bare name matches only itself
  EXPECT_FALSE(r.matches("layers.1.attn.q_proj", "f"));
  r.regex = "(";
  test::expect_error([&] { r.matches("x", "peft.target_regex"); }, {"peft.target_regex", "("});
  // pattern keys: a dotted suffix, first key in order wins
  EXPECT_EQ(peft::pattern_key({"v_proj", "layers.0.attn.q_proj"}, "layers.0.attn.q_proj", "f").value(),
            "layers.0.attn.q_proj");
  EXPECT_FALSE(peft::pattern_key({"proj"}, "layers.0.attn.q_proj", "f").has_value());
}

TEST(LoraMatch, PlanHonoursExcludeAllLinearPatternsAndHfNames) {
  const models::ModelSpec s = test::tiny_llama(/*tied=*/false);
  PeftOptions o;
  o.target.names = {"all-linear"};
  auto plan = peft::plan_lora(peft::linear_layers(s), o, s.arch);
  EXPECT_EQ(plan.size(), 2u * 7u);  // lm_head excluded, as peft does
  for (const auto& a : plan) EXPECT_NE(a.name, "lm_head");
  o.exclude.names = {"o_proj"};
  o.rank_pattern = {{"layers.1.attn.q_proj", 2}, {"down_proj", 3}};
  o.alpha_pattern = {{"mlp.up_proj", 5.0}};
  plan = peft::plan_lora(peft::linear_layers(s), o, s.arch);
  EXPECT_EQ(plan.size(), 2u * 6u);
  for (const auto& a : plan) {
    EXPECT_EQ(a.name.find("o_proj"), std::string::npos);
    const int64_t want_r = a.name == "layers.1.attn.q_proj" ? 2 : a.name.find("down_proj") != std::string::npos ? 3 : 8;
    EXPECT_EQ(a.r, want_r) << a.name;
    EXPECT_EQ(a.alpha, a.name.find("up_proj") != std::string::npos ? 5.0 : 8.0) << a.name;
  }
  // Hugging Face names match too: self_attn.q_proj exists only in the transformers layout.
  PeftOptions h;
  h.target.names = {"self_attn.q_proj"};
  plan = peft::plan_lora(peft::linear_layers(s), h, s.arch);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].name, "layers.0.attn.q_proj");
  EXPECT_EQ(plan[0].hf_name, "model.layers.0.self_attn.q_proj");
  // peft's default targets: GPT-2 c_attn = lathe's q, k, v.
  const models::ModelSpec g = test::tiny_gpt2();
  plan = peft::plan_lora(peft::linear_layers(g), PeftOptions{}, g.arch);
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan[1].name, "layers.0.attn.k_proj");
  EXPECT_EQ(plan[1].hf_name, "transformer.h.0.attn.c_attn");
  // modules_to_save are never adapted; nothing matched is an error naming the field.
  PeftOptions m;
  m.target.names = {"q_proj"};
  m.modules_to_save = {"layers.0.attn.q_proj"};
  EXPECT_EQ(peft::plan_lora(peft::linear_layers(s), m, s.arch).size(), 1u);
  PeftOptions none;
  none.target.names = {"nothing_here"};
  test::expect_error([&] { peft::plan_lora(peft::linear_layers(s), none, s.arch); }, {"peft.target_modules"});
}

models::ModelSpec llama2_7b() {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 32000;
  s.n_layer = 32;
  s.n_head = 32;
  s.d_model = 4096;
  s.d_ff = 11008;
  s.max_seq_len = 4096;
  s.bias = false;
  s.tie_embeddings = false;
  return s;
}

// The spec's check numbers (section 1), on real shapes without allocating the model.
TEST(LoraCount, RealModelFormulas) {
  const models::ModelSpec s = llama2_7b();
  PeftOptions qv;
  qv.target.names = {"q_proj", "v_proj"};
  EXPECT_EQ(peft::lora_parameter_count(s, qv), 4194304);
  EXPECT_EQ(models::count_parameters(s) + 4194304, 6742609920);
  PeftOptions all;
  all.target.names = {"all-linear"};
  all.lora.r = 1;
  EXPECT_EQ(peft::lora_parameter_count(s, all), 2498560);
  models::ModelSpec mistral = s;
  mistral.n_kv_head = 8;
  mistral.d_ff = 14336;
  all.lora.r = 32;
  EXPECT_EQ(peft::lora_parameter_count(mistral, all), 83886080);
  peft::ParameterReport rep{4194304, 6742609920};
  EXPECT_EQ(rep.str(), "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622");
}

TEST(LoraLinear, InitScalingAndNoOpAtStart) {
  Generator gen(3);
  auto base = random_linear(256, 64, true, 11);
  LoraOptions o;
  o.r = 16;
  o.alpha = 32;
  LoraLinear l(base, o, gen, nullptr);
  EXPECT_DOUBLE_EQ(l.scaling(), 2.0);
  EXPECT_DOUBLE_EQ(peft::lora_scaling(16, 32, true), 8.0);  // rsLoRA: alpha / sqrt(r)
  std::vector<float> a = l.lora_A().to_vector<float>();
  const double bound = 1.0 / 16.0;  // 1 / sqrt(256)
  double var = 0;
  for (float v : a) {
    EXPECT_LT(std::abs(v), bound);
    var += v * v;
  }
  var /= a.size();
  EXPECT_NEAR(var, bound * bound / 3, 0.1 * bound * bound / 3);  // U(-b, b) has variance b^2 / 3
  for (float v : l.lora_B().to_vector<float>()) EXPECT_EQ(v, 0.0f);
  Tensor x = Tensor::randn({3, 5, 256}, gen);
  ag::NoGradGuard ng;
  EXPECT_TRUE(test::bit_equal(l.forward(x), base->forward(x)));  // B = 0: an exact no-op
  // Names: the base keeps its own, the factors are peft's.
  std::set<std::string> names;
  for (auto& [n, p] : l.named_parameters()) names.insert(n);
  EXPECT_EQ(names, (std::set<std::string>{"weight", "bias", "lora_A.weight", "lora_B.weight"}));
  EXPECT_FALSE(l.base_weight().requires_grad());
  EXPECT_EQ(l.adapter_parameters(), 16 * (256 + 64));

  o.init = peft::LoraInit::gaussian;
  o.r = 4;
  LoraLinear g(random_linear(256, 64, false, 12), o, gen, nullptr);
  double gv = 0;
  for (float v : g.lora_A().to_vector<float>()) gv += v * v;
  gv /= g.lora_A().numel();
  EXPECT_NEAR(std::sqrt(gv), 0.25, 0.02);  // N(0, (1/r)^2)
}

// y = W x + b + s B A x by gradcheck in f64 over x, A and B; W and b get no gradient.
TEST(LoraLinear, GradcheckAndFrozenBase) {
  Generator gen(5);
  auto base = random_linear(6, 5, true, 21);
  LoraOptions o;
  o.r = 3;
  o.alpha = 6;
  auto l = std::make_shared<LoraLinear>(base, o, gen, nullptr);
  test::randomize(l->lora_B(), 9, 0.3);
  l->to(DType::f64);
  Tensor x = Tensor::randn({2, 4, 6}, gen).to(DType::f64);
  x.set_requires_grad(true);
  auto f = [&](const std::vector<Tensor>& in) {
    l->replace_parameter("lora_A.weight", in[1]);
    l->replace_parameter("lora_B.weight", in[2]);
    return l->forward(in[0]);
  };
  auto r = ag::gradcheck(f, {x, l->lora_A().detach(), l->lora_B().detach()});
  EXPECT_TRUE(r.ok) << r.message;

  // Frozen means no weight gradient: only the input and the factors get one.
  l->to(DType::f32);
  l->zero_grad();
  Tensor xf = Tensor::randn({2, 4, 6}, gen);
  xf.set_requires_grad(true);
  ag::sum(ag::square(l->forward(xf))).backward();
  EXPECT_TRUE(xf.grad().defined());
  EXPECT_TRUE(l->lora_A().grad().defined());
  EXPECT_TRUE(l->lora_B().grad().defined());
  EXPECT_FALSE(l->base_weight().grad().defined());
  EXPECT_FALSE(l->base_bias().grad().defined());
}

// "Frozen means frozen" counted in kernel calls: the backward of a model whose base weights
// are frozen runs exactly one matmul fewer per adapted linear than the same model with the
// base weights trainable (the weight-gradient GEMM), and none of the frozen weights gets a
// gradient.
TEST(LoraLinear, FrozenBaseRunsNoWeightGradientGemm) {
  const models::ModelSpec s = test::tiny_llama();
  auto backward_matmuls = [&](bool train_base) {
    auto m = models::build_model(s, 1);
    PeftOptions o;
    o.target.names = {"q_proj", "v_proj", "down_proj"};
    const auto res = peft::inject_lora(*m, o);
    if (train_base)
      for (auto& [n, l] : peft::lora_layers(*m)) l->base_weight().set_requires_grad(true);
    const Tensor ids = test::test_ids(2, 5, s.vocab_size), tgt = test::test_ids(2, 5, s.vocab_size, 9);
    Tensor loss = m->loss(ids, tgt);
    auto calls = test::count_kernels([&] { loss.backward(); });
    int64_t frozen_grads = 0;
    for (auto& [n, l] : peft::lora_layers(*m)) frozen_grads += l->base_weight().grad().defined();
    EXPECT_EQ(frozen_grads, train_base ? static_cast<int64_t>(res.adapters.size()) : 0);
    return std::make_pair(calls["matmul"], static_cast<int64_t>(res.adapters.size()));
  };
  const auto frozen = backward_matmuls(false), trained = backward_matmuls(true);
  EXPECT_EQ(trained.first - frozen.first, frozen.second);
  EXPECT_EQ(frozen.second, 2 * 3);
}

// The scale is applied to the r-wide intermediate (s (A x) then B) instead of the out-wide
// branch output: outputs and the gradients of x, A and B must equal the textbook
// W x + b + s B A x form on odd shapes, and the frozen base still gets no gradient.
TEST(LoraLinear, ScaleOnRankIntermediateMatchesScaledOutput) {
  Generator gen(17);
  auto base = random_linear(7, 5, true, 23);
  LoraOptions o;
  o.r = 3;
  o.alpha = 5;  // scale 5/3: not a power of two, so a dropped or doubled scale shows
  auto l = std::make_shared<LoraLinear>(base, o, gen, nullptr);
  test::randomize(l->lora_B(), 4, 0.7);
  l->to(DType::f64);
  const Tensor x0 = Tensor::randn({3, 2, 7}, gen).to(DType::f64);
  auto run = [&](bool fused) {
    l->zero_grad();
    Tensor x = x0.detach();
    x.set_requires_grad(true);
    Tensor y = fused ? l->forward(x)
                     : ag::add(base->forward(x),
                               ag::mul(ag::linear(ag::linear(x, l->lora_A()), l->lora_B()), l->scaling()));
    // A non-uniform upstream gradient so every output element weighs differently.
    ag::sum(ag::mul(ag::square(y), ag::add(y, 0.5))).backward();
    return std::vector<Tensor>{y.detach(), x.grad(), l->lora_A().grad(), l->lora_B().grad()};
  };
  const auto fused = run(true), ref = run(false);
  for (size_t i = 0; i < fused.size(); ++i) {
    ASSERT_TRUE(fused[i].defined()) << i;
    EXPECT_GT(test::max_abs_diff(fused[i], Tensor::zeros(fused[i].shape(), DType::f64)), 1e-3) << i;
    EXPECT_LT(test::max_abs_diff(fused[i], ref[i]), 1e-12) << i;
  }
  EXPECT_FALSE(l->base_weight().grad().defined());
  EXPECT_FALSE(l->base_bias().grad().defined());
}

TEST(LoraLinear, DropoutOnlyOnTheAdapterBranchInTraining) {
  Generator gen(8), drop(99);
  auto base = random_linear(16, 8, false, 31);
  LoraOptions o;
  o.r = 4;
  o.dropout = 0.5;
  LoraLinear l(base, o, gen, &drop);
  Tensor x = Tensor::randn({4, 16}, gen);
  ag::NoGradGuard ng;
  l.train(true);
  // B = 0: whatever the mask, the output is the base's (dropout is not on the base path).
  EXPECT_TRUE(test::bit_equal(l.forward(x), base->forward(x)));
  test::randomize(l.lora_B(), 3, 1.0);
  Tensor t1 = l.forward(x);
  EXPECT_GT(drop.offset(), 0u);
  l.eval();
  Tensor e = l.forward(x);
  EXPECT_GT(test::max_abs_diff(t1, e), 1e-3);
  // Eval: y = W x + s B A x exactly as computed by hand.
  Tensor want = ag::add(base->forward(x), ag::mul(ag::linear(ag::linear(x, l.lora_A()), l.lora_B()), l.scaling()));
  EXPECT_LT(test::max_abs_diff(e, want), 1e-6);
}

// Under bf16 autocast the adapter branch computes in bf16 beside the base (the f32 factors are
// cast on use), gradients come back to the f32 factors, and the result is the f32 one to
// bf16 accuracy.
TEST(LoraLinear, Bf16AutocastKeepsF32MasterFactors) {
  const models::ModelSpec s = test::tiny_llama();
  auto m = models::build_model(s, 1);
  PeftOptions o;
  o.target.names = {"all-linear"};
  peft::inject_lora(*m, o);
  for (auto& [n, l] : peft::lora_layers(*m)) test::randomize(l->lora_B(), std::hash<std::string>()(n), 0.2);
  const Tensor ids = test::test_ids(2, 6, s.vocab_size);
  const Tensor ref = test::eval_logits(*m, ids);
  Tensor low;
  {
    models::Autocast ac(DType::bf16);
    low = test::eval_logits(*m, ids);
    m->zero_grad();
    m->loss(ids, test::test_ids(2, 6, s.vocab_size, 5)).backward();
  }
  EXPECT_LT(test::max_abs_diff(low, ref), 0.1);
  EXPECT_GT(test::max_abs_diff(low, ref), 0.0);  // it did run in bf16
  for (auto& [n, l] : peft::lora_layers(*m)) {
    ASSERT_TRUE(l->lora_A().grad().defined()) << n;
    EXPECT_EQ(l->lora_A().grad().dtype(), DType::f32) << n;
    EXPECT_EQ(l->lora_B().grad().dtype(), DType::f32) << n;
    EXPECT_FALSE(l->base_weight().grad().defined()) << n;
  }
}

class LoraModel : public ::testing::TestWithParam<bool> {};

TEST_P(LoraModel, InjectFreezeMergeUnmerge) {
  const bool gpt2 = GetParam();
  const models::ModelSpec s = gpt2 ? test::tiny_gpt2() : test::tiny_llama();
  auto model = models::build_model(s, 1);
  const Tensor ids = test::test_ids(2, 9, s.vocab_size);
  const Tensor before = test::eval_logits(*model, ids);
  PeftOptions o;
  o.target.names = {"all-linear"};
  o.lora.r = 4;
  o.lora.alpha = 8;
  o.rank_pattern = {{"layers.1.attn.o_proj", 2}};
  const auto res = peft::inject_lora(*model, o);
  // Trainable = the formula = what plan_lora counts from the spec alone.
  int64_t want = 0;
  for (const auto& a : res.adapters) want += a.r * (a.in + a.out);
  EXPECT_EQ(model->num_parameters(true), want);
  EXPECT_EQ(peft::lora_parameter_count(s, o), want);
  const auto rep = peft::parameter_report(*model);
  EXPECT_EQ(rep.total, models::count_parameters(s) + want);
  // A no-op at init, bit for bit.
  EXPECT_TRUE(test::bit_equal(test::eval_logits(*model, ids), before));

  // Frozen parameters get no optimizer state: AdamW holds state for the adapters only.
  OptimizerConfig oc;
  auto opt = optim::make_optimizer(oc, model->named_parameters());
  for (auto& [n, p] : model->named_parameters())
    EXPECT_EQ(p.requires_grad(), n.find("lora_") != std::string::npos) << n;
  for (auto& [k, t] : opt->state_dict()) {
    (void)t;
    if (k.find("layers.") != std::string::npos) {
      EXPECT_NE(k.find("lora_"), std::string::npos) << k;
    }
  }
  size_t opt_params = 0;
  for (const auto& g : opt->groups()) opt_params += g.params.size();
  EXPECT_EQ(opt_params, 2 * res.adapters.size());

  // Train-like step: loss backward touches only adapters; frozen weights have no gradient.
  for (auto& [n, l] : peft::lora_layers(*model)) test::randomize(l->lora_B(), std::hash<std::string>()(n), 0.2);
  model->zero_grad();
  model->loss(ids, test::test_ids(2, 9, s.vocab_size, 3)).backward();
  for (auto& [n, p] : model->named_parameters()) EXPECT_EQ(p.grad().defined(), p.requires_grad()) << n;

  // Merge in f32: merged logits == unmerged; unmerge restores W.
  const Tensor unmerged = test::eval_logits(*model, ids);
  EXPECT_GT(test::max_abs_diff(unmerged, before), 1e-3);  // the adapters do something
  std::vector<Tensor> w0;
  for (auto& [n, l] : peft::lora_layers(*model)) w0.push_back(l->base_weight().clone());
  peft::merge_adapters(*model);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), unmerged), 1e-5);
  // W' - W == s B A
  {
    auto layers = peft::lora_layers(*model);
    Tensor dw = kernels::binary(kernels::BinaryOp::sub, layers[0].second->base_weight(), w0[0]);
    EXPECT_LT(test::max_abs_diff(dw, layers[0].second->delta_weight()), 1e-6);
  }
  peft::unmerge_adapters(*model);
  size_t i = 0;
  for (auto& [n, l] : peft::lora_layers(*model)) EXPECT_LT(test::max_abs_diff(l->base_weight(), w0[i++]), 1e-6) << n;
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), unmerged), 1e-5);
  // merge_and_unload: the plain model, same logits, no adapter parameters left.
  EXPECT_EQ(peft::unload_adapters(*model, true), static_cast<int64_t>(res.adapters.size()));
  EXPECT_TRUE(peft::lora_layers(*model).empty());
  EXPECT_EQ(model->num_parameters(), models::count_parameters(s));
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), unmerged), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Arch, LoraModel, ::testing::Values(true, false),
                         [](const auto& i) { return std::string(i.param ? "gpt2" : "llama"); });

TEST(LoraInject, BiasModesAndModulesToSave) {
  const models::ModelSpec s = test::tiny_gpt2();
  auto count_trainable_bias = [](models::CausalLM& m) {
    int n = 0;
    for (auto& [name, p] : m.named_parameters())
      if (p.requires_grad() && name.size() > 5 && name.substr(name.size() - 5) == ".bias") ++n;
    return n;
  };
  PeftOptions o;
  o.target.names = {"c_attn"};
  auto m = models::build_model(s, 1);
  peft::inject_lora(*m, o);
  EXPECT_EQ(count_trainable_bias(*m), 0);
  o.bias = peft::BiasMode::lora_only;
  m = models::build_model(s, 1);
  peft::inject_lora(*m, o);
  EXPECT_EQ(count_trainable_bias(*m), 2 * 3);  // q, k, v biases of each layer
  o.bias = peft::BiasMode::all;
  m = models::build_model(s, 1);
  peft::inject_lora(*m, o);
  int all_bias = 0;
  for (auto& [name, p] : m->named_parameters()) all_bias += name.substr(name.size() - 5) == ".bias";
  EXPECT_EQ(count_trainable_bias(*m), all_bias);
  o.bias = peft::BiasMode::none;
  for (const char* name : {"ln_f", "final_norm"}) {  // GPT-2's final LayerNorm, by its HF or lathe name
    o.modules_to_save = {name};
    m = models::build_model(s, 1);
    auto res = peft::inject_lora(*m, o);
    ASSERT_EQ(res.modules_to_save, std::vector<std::string>{"final_norm"});
    EXPECT_TRUE(m->parameter("final_norm.weight").requires_grad());
    EXPECT_TRUE(m->parameter("final_norm.bias").requires_grad());
    EXPECT_FALSE(m->parameter("layers.1.mlp_norm.weight").requires_grad());
  }
  test::expect_error([&] { peft::inject_lora(*m, o); }, {"already carries a LoRA adapter"});
  o.modules_to_save = {"no_such_module"};
  m = models::build_model(s, 1);
  test::expect_error([&] { peft::inject_lora(*m, o); }, {"peft.modules_to_save", "no_such_module"});
}

}  // namespace
}  // namespace lathe
