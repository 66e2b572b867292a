// Models: a forward pass written out with plain loops, gradcheck of whole tiny models,
// published parameter counts, and deterministic generation.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "autograd/autograd.h"
#include "models/model.h"

using namespace lathe;
using namespace lathe::models;

namespace {

using Mat = std::vector<double>;  // row-major

struct Params {
  std::map<std::string, Tensor> by_name;
  Mat get(const std::string& n) const {
    auto it = by_name.find(n);
    EXPECT_TRUE(it != by_name.end()) << "no parameter " << n;
    return it->second.to_vector<double>();
  }
  bool has(const std::string& n) const { return by_name.count(n) > 0; }
};

// y[t][o] = sum_i x[t][i] W[o][i] + b[o]
Mat lin(const Mat& x, int64_t T, int64_t in, const Mat& W, int64_t out, const Mat* b) {
  Mat y(T * out, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
      y[t * out + o] = s;
    }
  return y;
}

Mat norm(const Mat& x, int64_t T, int64_t C, const Mat& g, const Mat* b, bool rms, double eps) {
  Mat y(T * C);
  for (int64_t t = 0; t < T; ++t) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += x[t * C + c];
    mean = rms ? 0.0 : mean / C;
    for (int64_t c = 0; c < C; ++c) var += (x[t * C + c] - mean) * (x[t * C + c] - mean);
    var /= C;
    for (int64_t c = 0; c < C; ++c)
      y[t * C + c] = (x[t * C + c] - mean) / std::sqrt(var + eps) * g[c] + (b ? (*b)[c] : 0.0);
  }
  return y;
}

// Logits [T, V] for one sequence, computed from the parameters by hand.
Mat reference_forward(const ModelSpec& s, const Params& P, const std::vector<int64_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size()), C = s.d_model, H = s.n_head, KV = s.kv_heads(),
                D = s.head_dim(), F = s.ff_dim(), V = s.vocab_size;
  const bool gpt2 = s.arch == Arch::gpt2;
  Mat wte = P.get("embed.weight");
  Mat x(T * C);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) x[t * C + c] = wte[ids[t] * C + c];
  if (gpt2) {
    Mat wpe = P.get("pos_embed.weight");
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) x[t * C + c] += wpe[t * C + c];
  }
  auto opt = [&](const std::string& n, Mat& store) -> const Mat* {
    if (!P.has(n)) return nullptr;
    store = P.get(n);
    return &store;
  };
  for (int64_t l = 0; l < s.n_layer; ++l) {
    std::string pre = "layers." + std::to_string(l) + ".";
    Mat b1, b2, bq, bk, bv, bo, bf, bp;
    Mat h = norm(x, T, C, P.get(pre + "attn_norm.weight"), opt(pre + "attn_norm.bias", b1), !gpt2, s.norm_eps);
    Mat q = lin(h, T, C, P.get(pre + "attn.q_proj.weight"), H * D, opt(pre + "attn.q_proj.bias", bq));
    Mat k = lin(h, T, C, P.get(pre + "attn.k_proj.weight"), KV * D, opt(pre + "attn.k_proj.bias", bk));
    Mat v = lin(h, T, C, P.get(pre + "attn.v_proj.weight"), KV * D, opt(pre + "attn.v_proj.bias", bv));
    if (!gpt2) {  // rotate_half RoPE on queries and keys
      auto rot = [&](Mat& m, int64_t heads) {
        for (int64_t t = 0; t < T; ++t)
          for (int64_t hh = 0; hh < heads; ++hh)
            for (int64_t i = 0; i < D / 2; ++i) {
              double th = t * std::pow(s.rope_theta, -2.0 * i / D);
              double& a = m[t * heads * D + hh * D + i];
              double& b = m[t * heads * D + hh * D + i + D / 2];
              double na = a * std::cos(th) - b * std::sin(th), nb = b * std::cos(th) + a * std::sin(th);
              a = na;
              b = nb;
            }
      };
      rot(q, H);
      rot(k, KV);
    }
    Mat att(T * H * D, 0.0);
    for (int64_t hh = 0; hh < H; ++hh) {
      int64_t g = hh / (H / KV);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> sc(t + 1);
        double mx = -1e300, z = 0;
        for (int64_t u = 0; u <= t; ++u) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[t * H * D + hh * D + i] * k[u * KV * D + g * D + i];
          sc[u] = d / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, sc[u]);
        }
        for (auto& e : sc) z += (e = std::exp(e - mx));
        for (int64_t u = 0; u <= t; ++u)
          for (int64_t i = 0; i < D; ++i) att[t * H * D + hh * D + i] += sc[u] / z * v[u * KV * D + g * D + i];
      }
    }
    Mat o = lin(att, T, H * D, P.get(pre + "attn.o_proj.weight"), C, opt(pre + "attn.o_proj.bias", bo));
    for (int64_t i = 0; i < T * C; ++i) x[i] += o[i];
    h = norm(x, T, C, P.get(pre + "mlp_norm.weight"), opt(pre + "mlp_norm.bias", b2), !gpt2, s.norm_eps);
    Mat m;
    if (gpt2) {
      Mat a = lin(h, T, C, P.get(pre + "mlp.fc.weight"), F, opt(pre + "mlp.fc.bias", bf));
      for (auto& e : a) e = 0.5 * e * (1 + std::tanh(std::sqrt(2 / M_PI) * (e + 0.044715 * e * e * e)));
      m = lin(a, T, F, P.get(pre + "mlp.proj.weight"), C, opt(pre + "mlp.proj.bias", bp));
    } else {
      Mat gt = lin(h, T, C, P.get(pre + "mlp.gate_proj.weight"), F, nullptr);
      Mat up = lin(h, T, C, P.get(pre + "mlp.up_proj.weight"), F, nullptr);
      for (int64_t i = 0; i < T * F; ++i) gt[i] = gt[i] / (1 + std::exp(-gt[i])) * up[i];
      m = lin(gt, T, F, P.get(pre + "mlp.down_proj.weight"), C, nullptr);
    }
    for (int64_t i = 0; i < T * C; ++i) x[i] += m[i];
  }
  Mat bfin;
  x = norm(x, T, C, P.get("final_norm.weight"), opt("final_norm.bias", bfin), !gpt2, s.norm_eps);
  return lin(x, T, C, s.tie_embeddings ? wte : P.get("lm_head.weight"), V, nullptr);
}

Params params_of(CausalLM& m) {
  Params p;
  for (auto& [n, t] : m.named_parameters()) p.by_name[n] = t;
  return p;
}

// Non-trivial norm gains and biases so that the reference checks them too.
void perturb(CausalLM& m, uint64_t seed) {
  Generator g(seed);
  for (auto& [n, t] : m.named_parameters())
    if (t.dim() == 1) t.copy_(Tensor::randn(t.shape(), g, t.dtype()));
}

ModelSpec tiny(Arch a) {
  ModelSpec s;
  s.arch = a;
  s.vocab_size = 11;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = a == Arch::llama ? 2 : 0;
  s.d_model = 8;
  s.d_ff = a == Arch::llama ? 12 : 0;
  s.max_seq_len = 6;
  s.bias = a == Arch::gpt2;
  s.tie_embeddings = a == Arch::gpt2;
  s.init_std = 0.5;  // large weights so every path matters
  return s;
}

void check_forward(const ModelSpec& s) {
  auto m = build_model(s, 7);
  perturb(*m, 8);
  std::vector<int64_t> ids = {3, 1, 4, 1, 5};
  Tensor logits = m->forward(Tensor::from_vector<int64_t>(ids, {1, 5}));
  ASSERT_EQ(logits.shape(), (Shape{1, 5, s.vocab_size}));
  Mat ref = reference_forward(s, params_of(*m), ids);
  auto got = logits.to_vector<double>();
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 2e-4 * (1 + std::abs(ref[i]))) << i;
}

void to_f64(CausalLM& m) {
  for (auto& [n, t] : m.named_parameters()) t.set_data(t.to(DType::f64));
}

}  // namespace

TEST(Model, Gpt2ForwardMatchesHandComputation) { check_forward(tiny(Arch::gpt2)); }
TEST(Model, LlamaForwardMatchesHandComputation) { check_forward(tiny(Arch::llama)); }

TEST(Model, ParameterNamesFollowTheConvention) {
  auto m = build_model(tiny(Arch::llama), 1);
  auto named = m->named_parameters();
  std::vector<std::string> names;
  for (auto& [n, t] : named) names.push_back(n);
  EXPECT_EQ(names.front(), "embed.weight");
  EXPECT_NE(std::find(names.begin(), names.end(), "layers.1.attn.q_proj.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "layers.0.mlp.gate_proj.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "lm_head.weight"), names.end());
  EXPECT_EQ(m->parameter("layers.1.attn.k_proj.weight").shape(), (Shape{4, 8}));  // 2 kv heads x head_dim 2
}

TEST(Model, CountsMatchAllocatedModelsAndPublishedSizes) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    for (bool tie : {true, false}) {
      ModelSpec s = tiny(a);
      s.tie_embeddings = tie;
      auto m = build_model(s, 1);
      EXPECT_EQ(count_parameters(s), m->num_parameters()) << arch_name(a) << " tie=" << tie;
    }
  }
  EXPECT_EQ(count_parameters(ModelSpec::gpt2_124m()), 124439808);
  EXPECT_EQ(count_parameters(ModelSpec::llama_1b()), 1235814400);
}

TEST(Model, WholeModelGradcheckF64) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    ModelSpec s = tiny(a);
    s.n_layer = 1;
    s.init_std = 0.3;
    auto m = build_model(s, 3);
    perturb(*m, 4);
    to_f64(*m);
    Tensor ids = Tensor::from_vector<int64_t>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
    Tensor tgt = Tensor::from_vector<int64_t>({2, 3, 4, 5, 6, 7, 8, 9}, {2, 4});
    // Finite differences on the module's own parameters: for each parameter and a random
    // direction v, (L(p + eps v) - L(p - eps v)) / 2 eps must equal <dL/dp, v>.
    auto named = m->named_parameters();
    m->zero_grad();
    m->loss(ids, tgt).backward();
    Generator g(17);
    const double eps = 1e-6;
    for (auto& [n, p] : named) {
      ASSERT_TRUE(p.grad().defined()) << n;
      std::vector<double> grad = p.grad().to_vector<double>();
      std::vector<double> base = p.to_vector<double>();
      std::vector<double> v = Tensor::randn(p.shape(), g, DType::f64).to_vector<double>();
      auto loss_at = [&](double s) {
        std::vector<double> w(base);
        for (size_t k = 0; k < w.size(); ++k) w[k] += s * v[k];
        p.copy_(Tensor::from_vector<double>(w, p.shape()));
        autograd::NoGradGuard ng;
        return m->loss(ids, tgt).item();
      };
      double numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
      p.copy_(Tensor::from_vector<double>(base, p.shape()));
      double analytic = 0;
      for (size_t k = 0; k < v.size(); ++k) analytic += grad[k] * v[k];
      EXPECT_NEAR(analytic, numeric, 1e-6 + 1e-5 * std::abs(numeric)) << arch_name(a) << " " << n;
    }
  }
}

TEST(Model, BadInputsAreClearErrors) {
  auto m = build_model(tiny(Arch::gpt2), 1);
  EXPECT_THROW(m->forward(Tensor::from_vector<int64_t>({1, 2, 3, 4, 5, 6, 7}, {1, 7})), Error);  // > max_seq_len
  EXPECT_THROW(m->forward(Tensor::from_vector<int64_t>({1, 99}, {1, 2})), Error);              // id >= vocab
  ModelSpec bad = tiny(Arch::llama);
  bad.n_kv_head = 3;
  try {
    build_model(bad, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.n_kv_head"), std::string::npos) << e.what();
  }
}

TEST(Generate, DeterministicForASeedAndGreedyIsArgmax) {
  auto m = build_model(tiny(Arch::llama), 5);
  SampleOptions o;
  o.max_new_tokens = 8;
  o.temperature = 0.9;
  o.top_k = 5;
  o.top_p = 0.9;
  o.seed = 11;
  auto a = generate(*m, {1, 2}, o);
  auto b = generate(*m, {1, 2}, o);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 10u);
  o.temperature = 0;
  auto g = generate(*m, {1, 2}, o);
  // greedy: each new token is the argmax of the logits of the prefix (context cropped to max_seq_len)
  for (size_t i = 2; i < g.size(); ++i) {
    size_t start = i > 6 ? i - 6 : 0;
    std::vector<int64_t> ctx(g.begin() + start, g.begin() + i);
    autograd::NoGradGuard ng;
    m->eval();
    auto z = m->forward(Tensor::from_vector<int64_t>(ctx, {1, static_cast<int64_t>(ctx.size())}))
                 .select(1, -1)
                 .to_vector<float>();
    EXPECT_EQ(g[i], std::max_element(z.begin(), z.end()) - z.begin()) << i;
  }
  EXPECT_THROW(generate(*m, {}, o), Error);
}
