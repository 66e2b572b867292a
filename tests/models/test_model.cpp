// Models: a forward pass written out with plain loops, gradcheck of whole tiny models,
// published parameter counts, and deterministic generation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "autograd/autograd.h"
#include "kernels/ops.h"
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

// RoPE inverse frequencies written out independently of models/rope.cpp, in the shape of
// transformers' _compute_llama3_parameters: compute both candidates, then pick by band.
std::vector<double> reference_inv_freq(const ModelSpec& s) {
  const int64_t D = s.head_dim();
  std::vector<double> inv(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv[i] = 1.0 / std::pow(s.rope_theta, static_cast<double>(2 * i) / D);
  if (s.rope_scaling.type != RopeScaling::Type::llama3) return inv;
  const RopeScaling& r = s.rope_scaling;
  const double old_ctx = static_cast<double>(r.original_max_position_embeddings);
  for (auto& f : inv) {
    const double wavelen = 2 * M_PI / f;
    const double scaled = wavelen > old_ctx / r.low_freq_factor ? f / r.factor : f;
    const double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    const double smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    const bool medium = !(wavelen < old_ctx / r.high_freq_factor) && !(wavelen > old_ctx / r.low_freq_factor);
    f = medium ? smoothed : scaled;
  }
  return inv;
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
      const std::vector<double> inv = reference_inv_freq(s);
      auto rot = [&](Mat& m, int64_t heads) {
        for (int64_t t = 0; t < T; ++t)
          for (int64_t hh = 0; hh < heads; ++hh)
            for (int64_t i = 0; i < D / 2; ++i) {
              double th = t * inv[i];
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
    // Sliding window (Mistral; transformers' rule): position t sees u with t - w < u <= t.
    const int64_t w = s.window_of(l);
    for (int64_t hh = 0; hh < H; ++hh) {
      int64_t g = hh / (H / KV);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t u0 = w > 0 ? std::max<int64_t>(t - w + 1, 0) : 0;
        std::vector<double> sc(t + 1, -1e300);
        double mx = -1e300, z = 0;
        for (int64_t u = u0; u <= t; ++u) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[t * H * D + hh * D + i] * k[u * KV * D + g * D + i];
          sc[u] = d / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, sc[u]);
        }
        for (auto& e : sc) z += (e = std::exp(e - mx));  // masked entries give exp(-huge) = 0
        for (int64_t u = u0; u <= t; ++u)
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

// Qwen2 shapes: biases on q/k/v only.
ModelSpec tiny_qwen2() {
  ModelSpec s = tiny(Arch::llama);
  s.bias = false;
  s.qkv_bias = true;
  return s;
}

// Llama 3 RoPE scaling with head_dim 8 and theta 100: wavelengths 2 pi * {1, 100^0.25, 10,
// 100^0.75} = {6.3, 19.9, 62.8, 198.7} against bands [64/4, 64/1] = [16, 64], so pair 0 is
// kept, pairs 1 and 2 are interpolated and pair 3 is divided by the factor.
ModelSpec tiny_llama3() {
  ModelSpec s = tiny(Arch::llama);
  s.d_model = 16;
  s.n_head = 2;
  s.n_kv_head = 1;
  s.rope_theta = 100.0;
  s.rope_scaling.type = RopeScaling::Type::llama3;
  s.rope_scaling.factor = 8.0;
  s.rope_scaling.low_freq_factor = 1.0;
  s.rope_scaling.high_freq_factor = 4.0;
  s.rope_scaling.original_max_position_embeddings = 64;
  return s;
}

// Sliding window 2 on layer 1 only (layer 0 attends fully), shorter than the 5-token input.
ModelSpec tiny_windowed() {
  ModelSpec s = tiny(Arch::llama);
  s.sliding_window = 2;
  s.full_attention_layers = 1;
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
TEST(Model, Qwen2QkvBiasForwardMatchesHandComputation) { check_forward(tiny_qwen2()); }
TEST(Model, SlidingWindowForwardMatchesHandComputation) {
  check_forward(tiny_windowed());
  ModelSpec every = tiny_windowed();
  every.full_attention_layers = 0;  // Mistral: the window on every layer
  check_forward(every);
}

// The window's exact edge: in a one-layer model with window 3, the logits at position t do not
// depend on the token at t - 3 but do on the one at t - 2 (transformers masks j <= i - window).
TEST(Model, SlidingWindowEdgeIsExact) {
  ModelSpec s = tiny(Arch::llama);
  s.n_layer = 1;
  s.sliding_window = 3;
  auto m = build_model(s, 9);
  perturb(*m, 10);
  auto logits_at = [&](std::vector<int64_t> ids, int64_t t) {
    return m->forward(Tensor::from_vector<int64_t>(ids, {1, 6})).select(0, 0).select(0, t).to_vector<double>();
  };
  const std::vector<int64_t> ids = {3, 1, 4, 1, 5, 9};
  const auto base = logits_at(ids, 5);
  std::vector<int64_t> outside = ids, inside = ids;
  outside[2] = 7;  // 5 - 3: outside the window
  inside[3] = 7;   // 5 - 2: the window's first key
  EXPECT_EQ(logits_at(outside, 5), base);
  EXPECT_NE(logits_at(inside, 5), base);
  // Without the window the earlier token matters too (the test above is not vacuous).
  s.sliding_window = 0;
  auto full = build_model(s, 9);
  perturb(*full, 10);
  auto f = [&](const std::vector<int64_t>& x) {
    return full->forward(Tensor::from_vector<int64_t>(x, {1, 6})).select(0, 0).select(0, 5).to_vector<double>();
  };
  EXPECT_NE(f(outside), f(ids));
}

TEST(Model, Llama3RopeScalingForwardMatchesHandComputation) {
  const ModelSpec s = tiny_llama3();
  check_forward(s);
  // The scaling must matter at these positions, or the check above would not test it: the
  // same weights without scaling give logits away from the scaled reference.
  ModelSpec plain = s;
  plain.rope_scaling = RopeScaling{};
  auto m = build_model(plain, 7);
  perturb(*m, 8);
  std::vector<int64_t> ids = {3, 1, 4, 1, 5};
  auto got = m->forward(Tensor::from_vector<int64_t>(ids, {1, 5})).to_vector<double>();
  Mat ref = reference_forward(s, params_of(*m), ids);
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(got[i] - ref[i]) / (1 + std::abs(ref[i])));
  EXPECT_GT(worst, 1e-2);
}

TEST(Rope, Llama3InverseFrequenciesByBand) {
  // theta 10000, head_dim 8: base frequencies 1, 0.1, 0.01, 0.001 (wavelengths 2 pi / f =
  // 6.28, 62.8, 628, 6283). original 1000, low 1, high 4: keep below 1000/4 = 250, divide by
  // factor 8 above 1000/1 = 1000, interpolate in between.
  RopeScaling r;
  r.type = RopeScaling::Type::llama3;
  r.factor = 8;
  r.low_freq_factor = 1;
  r.high_freq_factor = 4;
  r.original_max_position_embeddings = 1000;
  std::vector<double> got = rope_inv_freq(8, 10000.0, r);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_NEAR(got[0], 1.0, 1e-15);   // high-frequency band: unchanged
  EXPECT_NEAR(got[1], 0.1, 1e-16);   // wavelength 62.8 < 250: unchanged
  // Medium band: wavelength 200 pi, smooth = (1000 / (200 pi) - 1) / (4 - 1) = (5 / pi - 1) / 3.
  const double smooth = (5.0 / M_PI - 1.0) / 3.0;
  EXPECT_NEAR(smooth, 0.19718, 1e-5);
  EXPECT_NEAR(got[2], (1 - smooth) * 0.01 / 8 + smooth * 0.01, 1e-17);
  EXPECT_NEAR(got[2], 0.0029754, 1e-7);
  EXPECT_NEAR(got[3], 0.001 / 8, 1e-18);  // low-frequency band: divided by the factor

  // No scaling: exactly theta^(-2i/D), and the kernels' table overloads agree bit for bit.
  std::vector<double> plain = rope_inv_freq(8, 10000.0, RopeScaling{});
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(plain[i], std::pow(10000.0, -2.0 * i / 8));
  Tensor c1, s1, c2, s2;
  kernels::rope_tables(6, 8, 10000.0, 2, DType::f64, c1, s1);
  kernels::rope_tables(6, plain, 2, DType::f64, c2, s2);
  EXPECT_EQ(c1.to_vector<double>(), c2.to_vector<double>());
  EXPECT_EQ(s1.to_vector<double>(), s2.to_vector<double>());
  // Tables from scaled frequencies: cos/sin of (start + t) * inv.
  kernels::rope_tables(3, got, 5, DType::f64, c2, s2);
  ASSERT_EQ(c2.shape(), (Shape{3, 4}));
  auto cv = c2.to_vector<double>(), sv = s2.to_vector<double>();
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t i = 0; i < 4; ++i) {
      EXPECT_DOUBLE_EQ(cv[t * 4 + i], std::cos((5 + t) * got[i]));
      EXPECT_DOUBLE_EQ(sv[t * 4 + i], std::sin((5 + t) * got[i]));
    }
  EXPECT_THROW(kernels::rope_tables(3, std::vector<double>{}, 0, DType::f32, c2, s2), Error);

  // The published Llama 3 setting (theta 500000, head_dim 64, factor 32, 1/4, 8192): the
  // fastest pair is kept, the slowest divided by 32, and the result never increases with i.
  ModelSpec l = ModelSpec::llama_1b();
  std::vector<double> f = rope_inv_freq(l);
  ASSERT_EQ(f.size(), 32u);
  EXPECT_EQ(f[0], 1.0);
  EXPECT_NEAR(f[31], std::pow(500000.0, -62.0 / 64) / 32, 1e-20);
  for (size_t i = 1; i < f.size(); ++i) EXPECT_LT(f[i], f[i - 1]) << i;

  // Bad parameters are errors naming the field.
  ModelSpec bad = tiny_llama3();
  bad.rope_scaling.factor = 0.5;
  EXPECT_THROW(bad.validate(), Error);
  EXPECT_THROW(rope_inv_freq(bad), Error);
  bad = tiny_llama3();
  bad.rope_scaling.high_freq_factor = 1.0;  // not above low_freq_factor
  EXPECT_THROW(bad.validate(), Error);
  bad = tiny(Arch::gpt2);
  bad.rope_scaling = tiny_llama3().rope_scaling;  // GPT-2 has no RoPE to scale
  try {
    bad.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.rope_scaling"), std::string::npos) << e.what();
  }
}

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
  EXPECT_FALSE(m->has_parameter("layers.0.attn.q_proj.bias"));

  // Qwen2: q/k/v biases, none on o_proj or the MLP.
  auto q = build_model(tiny_qwen2(), 1);
  for (const char* p : {"q_proj", "k_proj", "v_proj"})
    EXPECT_TRUE(q->has_parameter(std::string("layers.1.attn.") + p + ".bias")) << p;
  EXPECT_EQ(q->parameter("layers.1.attn.k_proj.bias").shape(), (Shape{4}));
  EXPECT_FALSE(q->has_parameter("layers.1.attn.o_proj.bias"));
  for (auto& [n, t] : q->named_parameters())
    EXPECT_TRUE(n.find(".bias") == std::string::npos || n.find("_proj.bias") == n.size() - 10) << n;
  for (const char* p : {"gate_proj", "up_proj", "down_proj"})
    EXPECT_FALSE(q->has_parameter(std::string("layers.0.mlp.") + p + ".bias")) << p;
}

TEST(Model, CountsMatchAllocatedModelsAndPublishedSizes) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    for (bool tie : {true, false}) {
      for (bool bias : {true, false}) {
        for (bool qkv : {false, true}) {
          ModelSpec s = tiny(a);
          s.tie_embeddings = tie;
          s.bias = bias;
          s.qkv_bias = qkv;
          auto m = build_model(s, 1);
          EXPECT_EQ(count_parameters(s), m->num_parameters())
              << arch_name(a) << " tie=" << tie << " bias=" << bias << " qkv_bias=" << qkv;
        }
      }
    }
  }
  // Qwen2 adds exactly the q/k/v biases: (H + 2 KV) * head_dim per layer.
  const ModelSpec q = tiny_qwen2();
  ModelSpec plain = q;
  plain.qkv_bias = false;
  EXPECT_EQ(count_parameters(q) - count_parameters(plain), q.n_layer * (q.n_head + 2 * q.kv_heads()) * q.head_dim());
  EXPECT_EQ(count_parameters(ModelSpec::gpt2_124m()), 124439808);
  EXPECT_EQ(count_parameters(ModelSpec::llama_1b()), 1235814400);
}

TEST(Model, WholeModelGradcheckF64) {
  for (const ModelSpec& base : {tiny(Arch::gpt2), tiny(Arch::llama), tiny_qwen2(), tiny_llama3(), tiny_windowed()}) {
    const Arch a = base.arch;
    ModelSpec s = base;
    s.n_layer = 1;
    s.full_attention_layers = 0;  // the windowed spec: window 2 on its one layer, 4 tokens
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
