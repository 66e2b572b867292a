// The fused LoRA op (peft/lora_op.h): forward and backward equal the unfused formula
// W x + b + s B (R) A drop(x) in f64 for every variant LoraLinear uses, the adapter's output
// and the two input gradients land in one buffer (counted kernel calls), and a frozen model
// runs no gradient kernel for its embedding, norms and biases.
#include <gtest/gtest.h>

#include <string>

#include "autograd/ops.h"
#include "bench/profiling_backend.h"
#include "peft/inject.h"
#include "peft/lora.h"
#include "peft/lora_sb.h"
#include "peft_test_util.h"

namespace lathe {
namespace {

using peft::LoraLinear;
using peft::LoraOptions;
using peft::PeftOptions;
namespace ag = lathe::autograd;

using test::count_kernels;

struct Variant {
  std::string name;
  double dropout = 0;
  bool rslora = false;
  bool train_bias = false;  // bias modes all / lora_only: the base bias trains
  bool train_base = false;  // the base weight unfrozen (the op's weight-gradient branch)
  bool x_grad = true;       // false: the layer's input needs no gradient (under a frozen embedding)
  bool middle = false;      // LoRA-XS / LoRA-SB's R, with A and B made trainable too
  bool bias = true;         // the base Linear has a bias
};

class LoraFused : public ::testing::TestWithParam<Variant> {};

TEST_P(LoraFused, ForwardAndBackwardEqualTheUnfusedFormula) {
  const Variant v = GetParam();
  Generator gen(31), drop(77);
  auto base = std::make_shared<models::Linear>(9, 7, v.bias);
  test::randomize(base->weight(), 3, 0.5);
  if (v.bias) test::randomize(base->bias(), 4, 0.5);
  LoraOptions o;
  o.r = 3;
  o.alpha = 5;  // s = 5/3 (rsLoRA 5/sqrt(3)): not a power of two, a dropped or doubled scale shows
  o.use_rslora = v.rslora;
  o.dropout = v.dropout;
  std::shared_ptr<LoraLinear> l;
  if (v.middle) {
    l = std::make_shared<peft::LoraSbLinear>(base, o, &drop);
    test::randomize(l->lora_A(), 5, 0.6);
    test::randomize(l->lora_R(), 6, 0.6);
    l->lora_A().set_requires_grad(true);
    l->lora_B().set_requires_grad(true);
  } else {
    l = std::make_shared<LoraLinear>(base, o, gen, &drop);
  }
  test::randomize(l->lora_B(), 7, 0.7);
  if (v.train_bias) l->base_bias().set_requires_grad(true);
  if (v.train_base) l->base_weight().set_requires_grad(true);
  l->to(DType::f64);
  l->train(true);
  const double s = l->scaling();
  const Tensor x0 = Tensor::randn({2, 5, 9}, gen).to(DType::f64);
  const Tensor c = Tensor::randn({2, 5, 7}, gen).to(DType::f64);  // a non-uniform upstream gradient
  const uint64_t drop_seed = drop.seed(), drop_off = drop.offset();

  std::vector<Tensor> params = {l->lora_A(), l->lora_B(), l->base_weight(), l->base_bias()};
  if (v.middle) params.push_back(l->lora_R());
  auto run = [&](bool fused, std::map<std::string, int64_t>* fwd, std::map<std::string, int64_t>* bwd) {
    l->zero_grad();
    drop.set_state(drop_seed, drop_off);  // the same dropout mask in both runs
    Tensor x = x0.detach();
    if (v.x_grad) x.set_requires_grad(true);
    Tensor y;
    auto forward = [&]() {
      if (fused) {
        y = l->forward(x);
        return;
      }
      const Tensor xd = v.dropout > 0 ? ag::dropout(x, v.dropout, drop, true) : x;
      Tensor h = ag::linear(xd, l->lora_A());
      if (v.middle) h = ag::linear(h, l->lora_R());
      y = ag::add(ag::linear(x, l->base_weight(), l->base_bias()), ag::mul(ag::linear(h, l->lora_B()), s));
    };
    if (fwd) *fwd = count_kernels(forward); else forward();
    Tensor loss = ag::sum(ag::mul(y, c));
    if (bwd) *bwd = count_kernels([&] { loss.backward(); }); else loss.backward();
    std::vector<Tensor> out = {y.detach(), x.grad()};
    for (const Tensor& p : params) out.push_back(p.defined() ? p.grad() : Tensor());
    return out;
  };
  std::map<std::string, int64_t> fwd, bwd;
  const auto got = run(true, &fwd, &bwd), want = run(false, nullptr, nullptr);
  const std::vector<std::string> names = {"y", "dx", "dA", "dB", "dW", "db", "dR"};
  const std::vector<bool> expect = {true, v.x_grad, true, true, v.train_base, v.train_bias, v.middle};
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].defined(), static_cast<bool>(expect[i])) << names[i];
    ASSERT_EQ(want[i].defined(), static_cast<bool>(expect[i])) << names[i];
    if (!expect[i]) continue;
    EXPECT_GT(test::max_abs_diff(got[i], Tensor::zeros(got[i].shape(), DType::f64)), 1e-3) << names[i];
    EXPECT_LT(test::max_abs_diff(got[i], want[i]), 1e-12) << names[i];
  }
  // The fused path ran: the branch is accumulated into the base output (one matmul_acc, no
  // [tokens, out] add), and without dropout the two input gradients share one buffer (a
  // second matmul_acc, and no add_ joining two gradients of x).
  EXPECT_EQ(fwd["matmul_acc"], v.bias ? 2 : 1);  // with a bias, x W^T accumulates onto it too
  EXPECT_EQ(fwd["binary"], 0);
  const bool shared_dx = v.x_grad && v.dropout == 0;
  EXPECT_EQ(bwd["matmul_acc"], shared_dx ? 1 : 0);
  if (v.dropout == 0) EXPECT_EQ(bwd["add_"], 0);
  // Products in backward: dY B, then dx (dY W), dA, dB, dW, (R: dR and gh R), no more.
  const int64_t products = 1 + v.x_grad + 2 + v.train_base + (v.middle ? 2 : 0) + (v.dropout > 0 && v.x_grad);
  EXPECT_EQ(bwd["matmul"], products);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, LoraFused,
    ::testing::Values(Variant{"plain"}, Variant{"rslora", 0, true}, Variant{"dropout", 0.3},
                      Variant{"bias_trains", 0, false, true}, Variant{"base_trains", 0, false, false, true},
                      Variant{"input_frozen", 0, false, false, false, false},
                      Variant{"dropout_input_frozen", 0.3, false, false, false, false},
                      Variant{"middle_factor", 0, false, false, false, true, true},
                      Variant{"middle_dropout_rslora", 0.25, true, true, false, true, true},
                      Variant{"no_bias", 0, false, false, false, true, false, false},
                      Variant{"no_bias_middle_dropout", 0.3, false, false, true, true, true, false}),
    [](const ::testing::TestParamInfo<Variant>& i) { return i.param.name; });

// Autograd records an op only when an input requires a gradient: in a LoRA model the frozen
// embedding, norms and biases run no gradient kernel and hold no gradient buffer. Counted on
// GPT-2 (LayerNorm with bias, linear biases, tied embedding) and Llama (RMSNorm), against the
// same model with every bias trainable (bias mode all).
TEST(LoraModelFrozen, EmbeddingNormsAndBiasesRunNoGradientKernels) {
  for (const bool gpt2 : {true, false}) {
    const models::ModelSpec spec = gpt2 ? test::tiny_gpt2() : test::tiny_llama();
    const std::string norm_bwd = gpt2 ? "layer_norm_backward" : "rms_norm_backward";
    auto backward = [&](peft::BiasMode bias, int64_t* norms, int64_t* linear_biases) {
      auto m = models::build_model(spec, 1);
      PeftOptions o;
      o.target.names = {"all-linear"};
      o.bias = bias;
      peft::inject_lora(*m, o);
      *norms = *linear_biases = 0;
      for (auto& [n, p] : m->named_parameters()) {
        const bool is_norm = n.find("norm") != std::string::npos || n.find("ln_") != std::string::npos;
        if (is_norm && n.size() > 7 && n.substr(n.size() - 7) == ".weight") ++*norms;
        if (!is_norm && n.size() > 5 && n.substr(n.size() - 5) == ".bias") ++*linear_biases;
      }
      const Tensor ids = test::test_ids(2, 6, spec.vocab_size), tgt = test::test_ids(2, 6, spec.vocab_size, 9);
      Tensor loss = m->loss(ids, tgt);
      auto n = count_kernels([&] { loss.backward(); });
      for (auto& [name, p] : m->named_parameters())
        EXPECT_EQ(p.grad().defined(), p.requires_grad()) << name << (gpt2 ? " (gpt2)" : " (llama)");
      return n;
    };
    int64_t norms = 0, biases = 0;
    auto frozen = backward(peft::BiasMode::none, &norms, &biases);
    ASSERT_GT(norms, 2);
    EXPECT_EQ(frozen["embedding_backward"], 0);
    EXPECT_EQ(frozen[norm_bwd + " (param grads)"], 0);
    // The first layer's norm reads the frozen embedding's output, which needs no gradient:
    // it is not recorded at all; every later norm computes its input gradient only.
    EXPECT_EQ(frozen[norm_bwd], norms - 1);
    if (gpt2) {
      ASSERT_GT(biases, 0);
      auto all = backward(peft::BiasMode::all, &norms, &biases);
      // With the biases trainable: one column sum per linear bias (sum_to_shape -> reduce) and
      // the norms' bias sums appear; the embedding still gets none.
      EXPECT_EQ(all["reduce"] - frozen["reduce"], biases);
      EXPECT_EQ(all[norm_bwd + " (param grads)"], norms);  // the first norm records now (its bias trains)
      EXPECT_EQ(all["embedding_backward"], 0);
    }
  }
}

}  // namespace
}  // namespace lathe
