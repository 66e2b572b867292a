// The seams of models/: replaceable linear layers and parameters (forward and backward
// follow the replacement), tensor-parallel-shaped parameters in attention, incremental
// decoding with the key/value cache (same logits and tokens as recomputing everything), and
// bf16 autocast (close to f32, master weights and gradients stay f32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "autograd/autograd.h"
#include "kernels/ops.h"
#include "models/autocast.h"
#include "models/block.h"
#include "models/layers.h"
#include "models/model.h"

using namespace lathe;
using namespace lathe::models;
namespace ag = lathe::autograd;

namespace {

ModelSpec tiny(Arch a) {
  ModelSpec s;
  s.arch = a;
  s.vocab_size = 13;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = a == Arch::llama ? 2 : 0;  // grouped-query attention on Llama
  s.d_model = 16;
  s.d_ff = a == Arch::llama ? 24 : 0;
  s.max_seq_len = 12;
  s.bias = a == Arch::gpt2;
  s.tie_embeddings = a == Arch::gpt2;
  s.init_std = 0.3;
  return s;
}

// Norm gains and biases away from 1 and 0, so every parameter shapes the output.
void perturb(CausalLM& m, uint64_t seed) {
  Generator g(seed);
  for (auto& [n, t] : m.named_parameters())
    if (t.dim() == 1) {
      Tensor r = Tensor::randn(t.shape(), g, t.dtype());
      kernels::scale_(r, 0.3);
      t.copy_(ag::add(r, n.find("norm") != std::string::npos ? 1.0 : 0.0).detach());
    }
}

std::unique_ptr<CausalLM> model_of(Arch a, uint64_t seed = 7) {
  auto m = build_model(tiny(a), seed);
  perturb(*m, seed + 1);
  return m;
}

Tensor ids_of(const std::vector<int64_t>& v) { return Tensor::from_vector<int64_t>(v, {1, static_cast<int64_t>(v.size())}); }

const std::vector<int64_t> kIds = {3, 1, 4, 1, 5, 9, 2, 6};
const std::vector<int64_t> kTargets = {1, 4, 1, 5, 9, 2, 6, 5};

double loss_of(CausalLM& m) { return m.loss(ids_of(kIds), ids_of(kTargets)).item(); }

// ||a - b|| / ||b|| over all elements.
double l2_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / std::max(den, 1e-30);
}

// A LinearLayer that is not a Linear: its own copy of a weight, output scaled by `s`.
class ScaledLinear : public LinearLayer {
 public:
  ScaledLinear(const Tensor& w, double s) : s_(s) { w_ = register_param("weight", w.clone()); }
  Tensor forward(const Tensor& x) const override { return ag::mul(ag::linear(x, w_.get()), s_); }
  int64_t in_features() const override { return w_->size(1); }
  int64_t out_features() const override { return w_->size(0); }
  Tensor base_weight() const override { return w_.get(); }
  Tensor base_bias() const override { return Tensor(); }
  std::string type_name() const override { return "ScaledLinear"; }

 private:
  ag::ParamRef w_;
  double s_;
};

}  // namespace

// Replacing a linear layer by another LinearLayer changes forward and backward exactly as
// the same change made to the weight does: ScaledLinear(W, 2) computes x (2W)^T, so it
// must give the loss of the model whose weight is replaced by 2W, and since d/dW of
// x (2W)^T is 2 x the gradient with respect to 2W, twice that model's gradient.
TEST(Seams, ReplacedLinearAndParameterChangeForwardAndBackward) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    // A bias-free linear of each kind of slot: attention, MLP and (untied Llama) lm_head.
    std::vector<std::string> targets = {"layers.0.attn.q_proj", a == Arch::gpt2 ? "layers.1.mlp.fc" : "layers.1.mlp.down_proj"};
    if (a == Arch::llama) targets.push_back("lm_head");
    for (const std::string& path : targets) {
      SCOPED_TRACE(std::string(arch_name(a)) + " " + path);
      auto base = model_of(a);
      const double l0 = loss_of(*base);

      auto m1 = model_of(a);
      Tensor w = m1->parameter(path + ".weight");
      std::shared_ptr<LinearLayer> old = std::dynamic_pointer_cast<LinearLayer>(m1->module(path));
      ASSERT_TRUE(old != nullptr);
      EXPECT_TRUE(old->base_weight().is_same(w));
      // ScaledLinear has no bias: the comparison model's bias (GPT-2) is zeroed below.
      auto scaled = std::make_shared<ScaledLinear>(w, 2.0);
      m1->replace_module(path, scaled);
      EXPECT_EQ(m1->module(path).get(), scaled.get());
      EXPECT_TRUE(m1->parameter(path + ".weight").is_same(scaled->base_weight()));
      Tensor l1 = m1->loss(ids_of(kIds), ids_of(kTargets));
      l1.backward();

      auto m2 = model_of(a);
      Tensor w_old = m2->parameter(path + ".weight");
      Tensor w2 = ag::mul(w_old, 2.0).detach();
      m2->replace_parameter(path + ".weight", w2);
      if (m2->has_parameter(path + ".bias")) {
        Tensor b = m2->parameter(path + ".bias");
        m2->replace_parameter(path + ".bias", Tensor::zeros(b.shape()));
      }
      Tensor l2 = m2->loss(ids_of(kIds), ids_of(kTargets));
      l2.backward();

      EXPECT_GT(std::abs(l1.item() - l0), 1e-3) << "the replacement did not change the loss";
      EXPECT_NEAR(l1.item(), l2.item(), 1e-5 * (1 + std::abs(l2.item())));
      // Gradients go to the replacements, not to the modules and tensors they replaced.
      ASSERT_TRUE(scaled->base_weight().grad().defined());
      ASSERT_TRUE(w2.grad().defined());
      EXPECT_FALSE(w.grad().defined());
      EXPECT_FALSE(w_old.grad().defined());
      std::vector<double> g1 = scaled->base_weight().grad().to_vector<double>();
      std::vector<double> g2 = ag::mul(w2.grad(), 2.0).to_vector<double>();
      EXPECT_LT(max_rel(g1, g2), 1e-4);
      // Everything else still trains.
      EXPECT_TRUE(m1->parameter("embed.weight").grad().defined());
    }
  }
}

TEST(Seams, SlotsRefuseModulesOfTheWrongInterface) {
  auto m = model_of(Arch::llama);
  auto check = [&](const std::string& path, std::shared_ptr<ag::Module> by, const std::string& want) {
    try {
      m->replace_module(path, by);
      FAIL() << path << " took a " << by->type_name();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  check("layers.0.attn.q_proj", std::make_shared<RMSNorm>(16, 1e-5), "LinearLayer");
  check("layers.0.mlp_norm", std::make_shared<Linear>(16, 16, false), "Norm");
  check("layers.1.mlp", std::make_shared<Linear>(16, 16, false), "FeedForward");
  // A LayerNorm is a Norm: the block takes it (the architecture is not fixed inside it).
  auto ln = std::make_shared<LayerNorm>(16, 1e-5, true);
  const double before = loss_of(*m);
  m->replace_module("layers.0.mlp_norm", ln);
  EXPECT_TRUE(m->has_parameter("layers.0.mlp_norm.bias"));
  EXPECT_NE(loss_of(*m), before);
}

// Tensor parallelism's shape of attention: each of two shards holds half the query and
// key/value heads (q/k/v rows, o_proj columns, given by replace_parameter) and its local
// head counts; o_proj is row-parallel, so the shards' outputs sum to the full layer's.
TEST(Seams, AttentionShardsByReplacedParametersSumToTheFullLayer) {
  const int64_t C = 16, H = 4, KV = 2, D = 4;
  Attention full(C, H, KV, D, /*qkv_bias=*/false, /*o_bias=*/false);
  Generator g(3);
  for (auto& [n, p] : full.named_parameters()) p.copy_(Tensor::randn(p.shape(), g));
  Tensor x = Tensor::randn({2, 5, C}, g);
  std::vector<double> cos_sin_inv = {1.0, 0.1};
  Tensor cos, sin;
  kernels::rope_tables(5, cos_sin_inv, 0, DType::f32, cos, sin);
  Tensor want = full.forward(x, cos, sin);

  Tensor sum;
  for (int64_t r = 0; r < 2; ++r) {
    Attention shard(C, H, KV, D, false, false);  // built full-size, then resharded
    auto rows = [&](const char* n, int64_t per) {
      Tensor w = full.parameter(n).narrow(0, r * per, per).contiguous();
      shard.replace_parameter(n, w.clone());
    };
    rows("q_proj.weight", H / 2 * D);
    rows("k_proj.weight", KV / 2 * D);
    rows("v_proj.weight", KV / 2 * D);
    shard.replace_parameter("o_proj.weight", full.parameter("o_proj.weight").narrow(1, r * H / 2 * D, H / 2 * D).contiguous().clone());
    shard.n_head = H / 2;
    shard.n_kv_head = KV / 2;
    EXPECT_EQ(shard.q_proj->out_features(), H / 2 * D);
    EXPECT_EQ(shard.o_proj->in_features(), H / 2 * D);
    Tensor y = shard.forward(x, cos, sin);
    sum = sum.defined() ? ag::add(sum, y) : y;
  }
  EXPECT_LT(max_rel(sum.to_vector<double>(), want.to_vector<double>()), 1e-5);
}

// ---- incremental decoding -----------------------------------------------------------------

TEST(Seams, CachedLogitsEqualTheFullForward) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    SCOPED_TRACE(arch_name(a));
    auto m = model_of(a);
    m->eval();
    ag::NoGradGuard ng;
    const int64_t T = static_cast<int64_t>(kIds.size());
    std::vector<double> full = m->forward(ids_of(kIds)).to_vector<double>();
    const int64_t V = m->spec().vocab_size;
    // Prefill 3 tokens (all rows), then one token at a time (last row only); reserve 0, so
    // the storage also grows along the way.
    DecodeCache cache;
    Tensor pre = m->forward_cached(ids_of({kIds[0], kIds[1], kIds[2]}), cache, /*last_only=*/false);
    ASSERT_EQ(pre.shape(), (Shape{1, 3, V}));
    std::vector<double> p = pre.to_vector<double>();
    for (int64_t i = 0; i < 3 * V; ++i) EXPECT_NEAR(p[i], full[i], 1e-5) << i;
    EXPECT_EQ(cache.length(), 3);
    for (int64_t t = 3; t < T; ++t) {
      Tensor z = m->forward_cached(ids_of({kIds[t]}), cache);
      ASSERT_EQ(z.shape(), (Shape{1, 1, V}));
      std::vector<double> zv = z.to_vector<double>();
      for (int64_t v = 0; v < V; ++v) EXPECT_NEAR(zv[v], full[t * V + v], 1e-5) << "position " << t << " id " << v;
    }
    EXPECT_EQ(cache.length(), T);
    EXPECT_GE(cache.layers[0].capacity(), T);
    // The cache holds the positions of the 8 tokens; the context is 12: 5 more overflow.
    EXPECT_THROW(m->forward_cached(ids_of({1, 2, 3, 4, 5}), cache), Error);
    // A prefill of the whole sequence with last_only gives the last row.
    DecodeCache c2;
    std::vector<double> last = m->forward_cached(ids_of(kIds), c2).to_vector<double>();
    for (int64_t v = 0; v < V; ++v) EXPECT_NEAR(last[v], full[(T - 1) * V + v], 1e-5);
  }
}

TEST(Seams, KVCacheAppendsAndGrows) {
  KVCache c(0);
  Tensor k_all, v_all;
  Tensor k1 = Tensor::from_vector<float>({1, 2, 3, 4}, {1, 2, 1, 2});  // B 1, Hkv 2, T 1, D 2
  c.append(k1, ag::mul(k1, 10.0), k_all, v_all);
  EXPECT_EQ(c.length, 1);
  EXPECT_EQ(c.capacity(), 1);
  Tensor k2 = Tensor::from_vector<float>({5, 6, 7, 8, 9, 10, 11, 12}, {1, 2, 2, 2});
  c.append(k2, ag::mul(k2, 10.0), k_all, v_all);
  EXPECT_EQ(c.length, 3);
  EXPECT_EQ(c.capacity(), 3);
  ASSERT_EQ(k_all.shape(), (Shape{1, 2, 3, 2}));
  // head 0: positions (1,2), (5,6), (7,8); head 1: (3,4), (9,10), (11,12)
  EXPECT_EQ(k_all.to_vector<float>(), (std::vector<float>{1, 2, 5, 6, 7, 8, 3, 4, 9, 10, 11, 12}));
  EXPECT_EQ(v_all.to_vector<float>(), (std::vector<float>{10, 20, 50, 60, 70, 80, 30, 40, 90, 100, 110, 120}));
  c.append(k1, k1, k_all, v_all);
  EXPECT_EQ(c.capacity(), 6);  // doubled
  EXPECT_EQ(k_all.narrow(2, 3, 1).to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_THROW(c.append(Tensor::zeros({1, 3, 1, 2}), Tensor::zeros({1, 3, 1, 2}), k_all, v_all), Error);
  Tensor needs_grad = Tensor::zeros({1, 2, 1, 2}).set_requires_grad();
  EXPECT_THROW(c.append(needs_grad, needs_grad, k_all, v_all), Error);
}

TEST(Seams, GreedyGenerationWithTheCacheMatchesRecomputing) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    SCOPED_TRACE(arch_name(a));
    // Untied, larger weights: a tiny tied GPT-2 tends to repeat its last token forever,
    // which would make the comparison weak.
    ModelSpec sp = tiny(a);
    sp.tie_embeddings = false;
    sp.init_std = 0.5;
    auto m = build_model(sp, 11);
    perturb(*m, 12);
    SampleOptions o;
    o.temperature = 0;
    o.max_new_tokens = 14;  // 3 + 14 > max_seq_len 12: the window also slides
    o.use_cache = false;
    auto want = generate(*m, {3, 1, 4}, o);
    o.use_cache = true;
    auto got = generate(*m, {3, 1, 4}, o);
    EXPECT_EQ(got, want);
    ASSERT_EQ(got.size(), 17u);
    // Not a constant sequence, or the comparison would be weak.
    EXPECT_GT(std::set<int32_t>(got.begin() + 3, got.end()).size(), 1u);
    // Sampling draws the same tokens too.
    o.temperature = 0.8;
    o.seed = 5;
    auto s1 = generate(*m, {3, 1, 4}, o);
    o.use_cache = false;
    EXPECT_EQ(generate(*m, {3, 1, 4}, o), s1);
  }
}

static double max_abs_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// Sliding-window attention with the KV cache: decoding far past the window (the cache holds
// every position, attention reads the window's tail) gives the logits and tokens of
// recomputing the whole sequence, with a window on the second layer only and on both.
TEST(Seams, SlidingWindowCachedDecodingMatchesRecomputing) {
  for (int64_t full_layers : {1, 0}) {
    SCOPED_TRACE("full_attention_layers " + std::to_string(full_layers));
    ModelSpec sp = tiny(Arch::llama);
    sp.tie_embeddings = false;
    sp.init_std = 0.5;
    sp.max_seq_len = 40;  // longer than prompt + generated tokens: no context crop
    sp.sliding_window = 3;
    sp.full_attention_layers = full_layers;
    auto m = build_model(sp, 21);
    perturb(*m, 22);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
    SampleOptions o;
    o.temperature = 0;
    o.max_new_tokens = 20;  // 25 positions, 8 windows
    o.use_cache = false;
    auto want = generate(*m, prompt, o);
    o.use_cache = true;
    auto got = generate(*m, prompt, o);
    EXPECT_EQ(got, want);
    EXPECT_GT(std::set<int32_t>(got.begin() + 5, got.end()).size(), 1u);
    // Logits: the prompt prefilled at once, then one token at a time, against one full
    // forward over the whole sequence.
    autograd::NoGradGuard ng;
    const int64_t n = static_cast<int64_t>(got.size());
    std::vector<int64_t> ids(got.begin(), got.end());
    Tensor full = m->forward(Tensor::from_vector<int64_t>(ids, {1, n}));
    DecodeCache cache;
    Tensor pre = m->forward_cached(Tensor::from_vector<int64_t>({ids.begin(), ids.begin() + 5}, {1, 5}), cache, false);
    EXPECT_LT(max_abs_diff(pre, full.narrow(1, 0, 5)), 1e-5);
    for (int64_t t = 5; t < n; ++t) {
      Tensor step = m->forward_cached(Tensor::from_vector<int64_t>({ids[t]}, {1, 1}), cache, true);
      EXPECT_LT(max_abs_diff(step, full.narrow(1, t, 1)), 1e-5) << "position " << t;
    }
    // And the window matters: the same weights without it predict differently somewhere.
    ModelSpec nw = sp;
    nw.sliding_window = 0;
    nw.full_attention_layers = 0;
    auto plain = build_model(nw, 21);
    perturb(*plain, 22);
    EXPECT_GT(max_abs_diff(plain->forward(Tensor::from_vector<int64_t>(ids, {1, n})), full), 1e-3);
  }
}

// ---- autocast ------------------------------------------------------------------------------

TEST(Seams, Bf16AutocastIsCloseToF32AndKeepsF32MasterWeightsAndGradients) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    SCOPED_TRACE(arch_name(a));
    auto m = model_of(a);
    Tensor l32 = m->loss(ids_of(kIds), ids_of(kTargets));
    l32.backward();
    std::map<std::string, std::vector<double>> g32;
    for (auto& [n, p] : m->named_parameters()) g32[n] = p.grad().to_vector<double>();
    std::vector<double> z32 = m->forward(ids_of(kIds)).to_vector<double>();
    m->zero_grad();

    Tensor lbf, zbf;
    {
      Autocast ac(DType::bf16);
      EXPECT_TRUE(Autocast::enabled());
      zbf = m->forward(ids_of(kIds));
      lbf = m->loss(ids_of(kIds), ids_of(kTargets));
      {
        Autocast off(DType::f32);  // a nested f32 scope computes exactly as without autocast
        EXPECT_FALSE(Autocast::enabled());
        EXPECT_EQ(m->forward(ids_of(kIds)).to_vector<double>(), z32);
      }
      EXPECT_TRUE(Autocast::enabled());
    }
    EXPECT_FALSE(Autocast::enabled());
    EXPECT_EQ(zbf.dtype(), DType::f32);  // logits for the loss
    EXPECT_EQ(lbf.dtype(), DType::f32);
    std::vector<double> zb = zbf.to_vector<double>();
    EXPECT_NE(zb, z32) << "autocast changed nothing: the test would not see it";
    EXPECT_LT(max_rel(zb, z32), 3e-2);
    EXPECT_NEAR(lbf.item(), l32.item(), 1e-2 * std::abs(l32.item()));
    lbf.backward();
    for (auto& [n, p] : m->named_parameters()) {
      EXPECT_EQ(p.dtype(), DType::f32) << n;
      ASSERT_TRUE(p.grad().defined()) << n;
      EXPECT_EQ(p.grad().dtype(), DType::f32) << n;
      std::vector<double> g = p.grad().to_vector<double>();
      if (n.find("k_proj.bias") != std::string::npos) {
        // Exactly zero in exact arithmetic (softmax ignores a shift shared by all keys of a
        // query), so only rounding noise is left to compare: it must stay small.
        double worst = 0;
        for (double v : g) worst = std::max(worst, std::abs(v));
        EXPECT_LT(worst, 1e-2) << n;
        continue;
      }
      // bf16 keeps 8 bits of mantissa (relative rounding 2^-9) at every cast.
      EXPECT_LT(l2_rel(g, g32[n]), 6e-2) << n;
    }
  }
}
