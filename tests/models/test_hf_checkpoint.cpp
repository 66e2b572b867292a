// Hugging Face checkpoint import and export. Fixtures are tiny checkpoints in the HF layout
// (HF names, HF shapes: GPT-2 Conv1D weights [in, out] and the fused c_attn [C, 3C]) written
// here with a config.json of our own. Logits of the imported lathe model are compared with
// a reference forward that reads the HF tensors by their HF names in plain loops, so the
// name mapping is checked independently of the importer.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "models/hf_config.h"
#include "data/hf_tokenizer_files.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "models/safetensors.h"
#include "tests/common/test_helpers.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::models;
using json = nlohmann::json;

namespace {

using Mat = std::vector<double>;  // row-major
using HfTensors = std::map<std::string, Tensor>;

// EXPECT_ERROR_HAS: tests/common/test_helpers.h.

// ---- fixtures -------------------------------------------------------------------------------

struct Cfg {
  std::string type = "gpt2";  // gpt2, llama, qwen2, mistral
  int64_t V = 13, C = 8, H = 2, KV = 2, L = 2, P = 8, F = 24;
  double eps = 1e-5, theta = 100.0;
  bool tie = true;
  bool bare = false;  // base-model names ("wte.weight") instead of "transformer." / "model."
  // rope_scaling written to config.json when rope_factor > 0 (rope_type llama3).
  double rope_factor = 0, rope_low = 1, rope_high = 4;
  int64_t rope_orig = 8192;
  bool gpt2() const { return type == "gpt2"; }
  bool qkv_bias() const { return type == "qwen2"; }  // Qwen2Attention: q/k/v biased, o_proj not
  std::string pre() const { return bare ? "" : gpt2() ? "transformer." : "model."; }
};

Cfg llama_cfg() {
  Cfg c;
  c.type = "llama";
  c.V = 11;
  c.C = 16;  // head_dim 4: two RoPE frequencies
  c.H = 4;
  c.KV = 2;
  c.F = 12;
  c.eps = 1e-6;
  c.tie = false;
  return c;
}

// mean + std * N(0, 1), rounded to dt (the values the file holds).
Tensor rnd(const Shape& shape, Generator& g, double std, double mean, DType dt) {
  std::vector<float> v = Tensor::randn(shape, g).to_vector<float>();
  for (auto& x : v) x = static_cast<float>(mean + std * x);
  return Tensor::from_vector<float>(v, shape).to(dt);
}

HfTensors hf_tensors(const Cfg& c, DType dt, uint64_t seed) {
  Generator g(seed);
  HfTensors t;
  const std::string p = c.pre();
  const int64_t C = c.C, D = C / c.H;
  auto mat = [&](const std::string& n, const Shape& s) { t[n] = rnd(s, g, 0.4, 0.0, dt); };
  auto gain = [&](const std::string& n) { t[n] = rnd({C}, g, 0.3, 1.0, dt); };
  auto bias = [&](const std::string& n, int64_t k) { t[n] = rnd({k}, g, 0.3, 0.0, dt); };
  if (c.gpt2()) {
    mat(p + "wte.weight", {c.V, C});
    mat(p + "wpe.weight", {c.P, C});
    for (int64_t l = 0; l < c.L; ++l) {
      const std::string h = p + "h." + std::to_string(l) + ".";
      gain(h + "ln_1.weight");
      bias(h + "ln_1.bias", C);
      mat(h + "attn.c_attn.weight", {C, 3 * C});
      bias(h + "attn.c_attn.bias", 3 * C);
      mat(h + "attn.c_proj.weight", {C, C});
      bias(h + "attn.c_proj.bias", C);
      gain(h + "ln_2.weight");
      bias(h + "ln_2.bias", C);
      mat(h + "mlp.c_fc.weight", {C, c.F});
      bias(h + "mlp.c_fc.bias", c.F);
      mat(h + "mlp.c_proj.weight", {c.F, C});
      bias(h + "mlp.c_proj.bias", C);
    }
    gain(p + "ln_f.weight");
    bias(p + "ln_f.bias", C);
  } else {
    mat(p + "embed_tokens.weight", {c.V, C});
    for (int64_t l = 0; l < c.L; ++l) {
      const std::string h = p + "layers." + std::to_string(l) + ".";
      gain(h + "input_layernorm.weight");
      mat(h + "self_attn.q_proj.weight", {c.H * D, C});
      mat(h + "self_attn.k_proj.weight", {c.KV * D, C});
      mat(h + "self_attn.v_proj.weight", {c.KV * D, C});
      if (c.qkv_bias()) {
        bias(h + "self_attn.q_proj.bias", c.H * D);
        bias(h + "self_attn.k_proj.bias", c.KV * D);
        bias(h + "self_attn.v_proj.bias", c.KV * D);
      }
      mat(h + "self_attn.o_proj.weight", {C, c.H * D});
      gain(h + "post_attention_layernorm.weight");
      mat(h + "mlp.gate_proj.weight", {c.F, C});
      mat(h + "mlp.up_proj.weight", {c.F, C});
      mat(h + "mlp.down_proj.weight", {C, c.F});
    }
    gain(p + "norm.weight");
  }
  if (!c.tie) mat("lm_head.weight", {c.V, C});
  return t;
}

json config_of(const Cfg& c) {
  json j;
  j["model_type"] = c.type;
  if (c.gpt2()) {
    j["architectures"] = {"GPT2LMHeadModel"};
    j.update({{"vocab_size", c.V}, {"n_embd", c.C}, {"n_head", c.H}, {"n_layer", c.L}, {"n_positions", c.P},
              {"n_ctx", c.P}, {"n_inner", c.F}, {"layer_norm_epsilon", c.eps}, {"activation_function", "gelu_new"}});
    if (!c.tie) j["tie_word_embeddings"] = false;  // GPT-2 ties by default
  } else {
    j.update({{"vocab_size", c.V}, {"hidden_size", c.C}, {"intermediate_size", c.F}, {"num_hidden_layers", c.L},
              {"num_attention_heads", c.H}, {"num_key_value_heads", c.KV}, {"max_position_embeddings", c.P},
              {"rms_norm_eps", c.eps}, {"rope_theta", c.theta}, {"rope_scaling", nullptr}, {"hidden_act", "silu"},
              {"tie_word_embeddings", c.tie}});
    if (c.rope_factor > 0)
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope_factor},
                           {"low_freq_factor", c.rope_low},
                           {"high_freq_factor", c.rope_high},
                           {"original_max_position_embeddings", c.rope_orig}};
  }
  return j;
}

void write_checkpoint(const fs::path& dir, const json& config, const HfTensors& t, uint64_t shard_bytes = 0) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(2);
  NamedTensors named(t.begin(), t.end());
  if (shard_bytes == 0) {
    save_safetensors((dir / "model.safetensors").string(), named);
  } else {
    save_safetensors_sharded(dir.string(), named, shard_bytes);
  }
}

// ---- reference forward from HF tensors --------------------------------------------------------

struct Ref {
  const HfTensors& t;
  Mat get(const std::string& n) const {
    auto it = t.find(n);
    if (it == t.end()) {
      ADD_FAILURE() << "reference: no HF tensor " << n;
      return {};
    }
    return it->second.to_vector<double>();
  }
};

// GPT-2 Conv1D: y = x @ W + b with W [in, out].
Mat conv1d(const Mat& x, int64_t T, int64_t in, const Mat& W, int64_t out, const Mat& b) {
  Mat y(T * out);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = b[o];
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[i * out + o];
      y[t * out + o] = s;
    }
  return y;
}

// torch Linear: y = x @ W^T (+ b) with W [out, in].
Mat linear(const Mat& x, int64_t T, int64_t in, const Mat& W, int64_t out, const Mat& b = {}) {
  Mat y(T * out, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      y[t * out + o] = b.empty() ? 0.0 : b[o];
      for (int64_t i = 0; i < in; ++i) y[t * out + o] += x[t * in + i] * W[o * in + i];
    }
  return y;
}

// RoPE inverse frequencies of the fixture: theta^(-2i/D), then Llama 3's band rule
// (Meta's apply_scaling, written out here on its own): wavelengths longer than
// orig / low are divided by the factor, shorter than orig / high kept, the rest blended.
std::vector<double> inv_freq_of(const Cfg& c) {
  const int64_t D = c.C / c.H;
  std::vector<double> inv(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) {
    double f = std::pow(c.theta, -2.0 * i / D);
    if (c.rope_factor > 0) {
      const double wl = 2 * M_PI / f, lo = c.rope_orig / c.rope_low, hi = c.rope_orig / c.rope_high;
      if (wl > lo) {
        f = f / c.rope_factor;
      } else if (wl >= hi) {
        const double sm = (c.rope_orig / wl - c.rope_low) / (c.rope_high - c.rope_low);
        f = (1 - sm) * f / c.rope_factor + sm * f;
      }
    }
    inv[i] = f;
  }
  return inv;
}

Mat layer_norm(const Mat& x, int64_t T, int64_t C, const Mat& g, const Mat& b, double eps) {
  Mat y(T * C);
  for (int64_t t = 0; t < T; ++t) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += x[t * C + c] / C;
    for (int64_t c = 0; c < C; ++c) var += (x[t * C + c] - mean) * (x[t * C + c] - mean) / C;
    for (int64_t c = 0; c < C; ++c) y[t * C + c] = (x[t * C + c] - mean) / std::sqrt(var + eps) * g[c] + b[c];
  }
  return y;
}

Mat rms_norm(const Mat& x, int64_t T, int64_t C, const Mat& g, double eps) {
  Mat y(T * C);
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += x[t * C + c] * x[t * C + c] / C;
    for (int64_t c = 0; c < C; ++c) y[t * C + c] = x[t * C + c] / std::sqrt(ms + eps) * g[c];
  }
  return y;
}

// Causal softmax attention; q [T, H*D] (row stride qs), k/v [T, KV*D] (row strides ks/vs, at
// offsets), query head h reads key/value head h / (H / KV) (transformers' repeat_kv).
Mat attention(const Mat& q, int64_t qs, int64_t qo, const Mat& k, int64_t ks, int64_t ko, const Mat& v, int64_t vs,
              int64_t vo, int64_t T, int64_t H, int64_t KV, int64_t D) {
  Mat out(T * H * D, 0.0);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / KV);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> w(t + 1);
      double mx = -1e300, z = 0;
      for (int64_t u = 0; u <= t; ++u) {
        double d = 0;
        for (int64_t i = 0; i < D; ++i) d += q[t * qs + qo + h * D + i] * k[u * ks + ko + g * D + i];
        w[u] = d / std::sqrt(static_cast<double>(D));
        mx = std::max(mx, w[u]);
      }
      for (auto& e : w) z += (e = std::exp(e - mx));
      for (int64_t u = 0; u <= t; ++u)
        for (int64_t i = 0; i < D; ++i) out[t * H * D + h * D + i] += w[u] / z * v[u * vs + vo + g * D + i];
    }
  }
  return out;
}

Mat gpt2_reference(const Cfg& c, const HfTensors& tensors, const std::vector<int64_t>& ids) {
  Ref R{tensors};
  const std::string p = c.pre();
  const int64_t T = static_cast<int64_t>(ids.size()), C = c.C, D = C / c.H;
  Mat wte = R.get(p + "wte.weight"), wpe = R.get(p + "wpe.weight");
  Mat x(T * C);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < C; ++i) x[t * C + i] = wte[ids[t] * C + i] + wpe[t * C + i];
  for (int64_t l = 0; l < c.L; ++l) {
    const std::string h = p + "h." + std::to_string(l) + ".";
    Mat a = layer_norm(x, T, C, R.get(h + "ln_1.weight"), R.get(h + "ln_1.bias"), c.eps);
    Mat qkv = conv1d(a, T, C, R.get(h + "attn.c_attn.weight"), 3 * C, R.get(h + "attn.c_attn.bias"));
    // q, k, v are the column blocks [0, C), [C, 2C), [2C, 3C) of c_attn's output.
    Mat att = attention(qkv, 3 * C, 0, qkv, 3 * C, C, qkv, 3 * C, 2 * C, T, c.H, c.H, D);
    Mat o = conv1d(att, T, C, R.get(h + "attn.c_proj.weight"), C, R.get(h + "attn.c_proj.bias"));
    for (int64_t i = 0; i < T * C; ++i) x[i] += o[i];
    a = layer_norm(x, T, C, R.get(h + "ln_2.weight"), R.get(h + "ln_2.bias"), c.eps);
    Mat f = conv1d(a, T, C, R.get(h + "mlp.c_fc.weight"), c.F, R.get(h + "mlp.c_fc.bias"));
    for (auto& e : f) e = 0.5 * e * (1 + std::tanh(std::sqrt(2 / M_PI) * (e + 0.044715 * e * e * e)));  // gelu_new
    Mat m = conv1d(f, T, c.F, R.get(h + "mlp.c_proj.weight"), C, R.get(h + "mlp.c_proj.bias"));
    for (int64_t i = 0; i < T * C; ++i) x[i] += m[i];
  }
  x = layer_norm(x, T, C, R.get(p + "ln_f.weight"), R.get(p + "ln_f.bias"), c.eps);
  return linear(x, T, C, c.tie ? wte : R.get("lm_head.weight"), c.V);
}

Mat llama_reference(const Cfg& c, const HfTensors& tensors, const std::vector<int64_t>& ids) {
  Ref R{tensors};
  const std::string p = c.pre();
  const int64_t T = static_cast<int64_t>(ids.size()), C = c.C, H = c.H, KV = c.KV, D = C / H;
  Mat emb = R.get(p + "embed_tokens.weight");
  Mat x(T * C);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < C; ++i) x[t * C + i] = emb[ids[t] * C + i];
  // transformers' rotate_half RoPE: (x_i, x_{i+D/2}) rotated by t * inv_freq_i.
  const std::vector<double> inv = inv_freq_of(c);
  auto rope = [&](Mat& m, int64_t heads) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < D / 2; ++i) {
          const double ang = t * inv[i];
          double& a = m[t * heads * D + h * D + i];
          double& b = m[t * heads * D + h * D + i + D / 2];
          const double na = a * std::cos(ang) - b * std::sin(ang), nb = b * std::cos(ang) + a * std::sin(ang);
          a = na;
          b = nb;
        }
  };
  for (int64_t l = 0; l < c.L; ++l) {
    const std::string h = p + "layers." + std::to_string(l) + ".";
    Mat a = rms_norm(x, T, C, R.get(h + "input_layernorm.weight"), c.eps);
    // Qwen2: q/k/v biases (read by their HF names), none on o_proj.
    auto b = [&](const char* p) { return c.qkv_bias() ? R.get(h + "self_attn." + p + ".bias") : Mat{}; };
    Mat q = linear(a, T, C, R.get(h + "self_attn.q_proj.weight"), H * D, b("q_proj"));
    Mat k = linear(a, T, C, R.get(h + "self_attn.k_proj.weight"), KV * D, b("k_proj"));
    Mat v = linear(a, T, C, R.get(h + "self_attn.v_proj.weight"), KV * D, b("v_proj"));
    rope(q, H);
    rope(k, KV);
    Mat att = attention(q, H * D, 0, k, KV * D, 0, v, KV * D, 0, T, H, KV, D);
    Mat o = linear(att, T, H * D, R.get(h + "self_attn.o_proj.weight"), C);
    for (int64_t i = 0; i < T * C; ++i) x[i] += o[i];
    a = rms_norm(x, T, C, R.get(h + "post_attention_layernorm.weight"), c.eps);
    Mat gt = linear(a, T, C, R.get(h + "mlp.gate_proj.weight"), c.F);
    Mat up = linear(a, T, C, R.get(h + "mlp.up_proj.weight"), c.F);
    for (int64_t i = 0; i < T * c.F; ++i) gt[i] = gt[i] / (1 + std::exp(-gt[i])) * up[i];
    Mat m = linear(gt, T, c.F, R.get(h + "mlp.down_proj.weight"), C);
    for (int64_t i = 0; i < T * C; ++i) x[i] += m[i];
  }
  x = rms_norm(x, T, C, R.get(p + "norm.weight"), c.eps);
  return linear(x, T, C, c.tie ? emb : R.get("lm_head.weight"), c.V);
}

Mat reference(const Cfg& c, const HfTensors& t, const std::vector<int64_t>& ids) {
  return c.gpt2() ? gpt2_reference(c, t, ids) : llama_reference(c, t, ids);
}

const std::vector<int64_t> kIds = {3, 1, 4, 1, 5, 9, 2};

std::vector<double> logits_of(CausalLM& m, const std::vector<int64_t>& ids = kIds) {
  autograd::NoGradGuard ng;
  m.eval();
  Tensor z = m.forward(Tensor::from_vector<int64_t>(ids, {1, static_cast<int64_t>(ids.size())}));
  return z.to_vector<double>();
}

void expect_close(const Mat& got, const Mat& want, double rtol, double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::abs(want[i])) << what << " logit " << i;
}

// Every tensor of the safetensors at dir, by name (for checking exports).
HfTensors read_all(const fs::path& dir) {
  SafetensorsLoader st(dir.string());
  HfTensors t;
  for (const auto& n : st.names()) t[n] = st.get(n).clone();
  return t;
}

class HfCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("lathe_hf_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;

  // Writes the fixture, imports it and compares the logits with the reference.
  void check_import(const Cfg& c, DType file_dt, uint64_t seed, HfTensors extra = {}, const std::string& sub = "ck") {
    HfTensors t = hf_tensors(c, file_dt, seed);
    HfTensors all = t;
    for (auto& [n, v] : extra) all[n] = v;
    fs::path d = dir_ / sub;
    write_checkpoint(d, config_of(c), all);
    auto m = load_hf_model(d.string());
    EXPECT_EQ(m->spec().arch, c.gpt2() ? Arch::gpt2 : Arch::llama);
    EXPECT_EQ(m->spec().tie_embeddings, c.tie);
    EXPECT_EQ(m->num_parameters(), count_parameters(m->spec()));
    expect_close(logits_of(*m), reference(c, t, kIds), 2e-5, 2e-5, c.type + " " + dtype_name(file_dt));
  }
};

// A lathe model with non-trivial norms and biases (for export tests).
std::unique_ptr<CausalLM> tiny_model(Arch a, bool tie, uint64_t seed, bool qkv_bias = false,
                                     const RopeScaling& rope = {}) {
  ModelSpec s;
  s.arch = a;
  s.vocab_size = 11;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = a == Arch::llama ? 2 : 0;
  s.d_model = 16;  // head_dim 4
  s.d_ff = 12;
  s.max_seq_len = 8;
  s.bias = a == Arch::gpt2;
  s.tie_embeddings = tie;
  s.rope_theta = 50.0;
  s.qkv_bias = qkv_bias;
  s.rope_scaling = rope;
  s.init_std = 0.4;
  auto m = build_model(s, seed);
  Generator g(seed + 100);
  for (auto& [n, p] : m->named_parameters())
    if (p.dim() == 1) p.copy_(rnd(p.shape(), g, 0.3, n.find("norm") != std::string::npos ? 1.0 : 0.0, DType::f32));
  return m;
}

// The fixture description of a spec (for reading exported files with the reference).
Cfg cfg_of(const ModelSpec& s) {
  Cfg c;
  c.type = s.arch == Arch::gpt2 ? "gpt2" : s.qkv_bias && !s.bias ? "qwen2" : "llama";
  c.V = s.vocab_size;
  c.C = s.d_model;
  c.H = s.n_head;
  c.KV = s.kv_heads();
  c.L = s.n_layer;
  c.P = s.max_seq_len;
  c.F = s.ff_dim();
  c.eps = s.norm_eps;
  c.theta = s.rope_theta;
  c.tie = s.tie_embeddings;
  if (s.rope_scaling.enabled()) {
    c.rope_factor = s.rope_scaling.factor;
    c.rope_low = s.rope_scaling.low_freq_factor;
    c.rope_high = s.rope_scaling.high_freq_factor;
    c.rope_orig = s.rope_scaling.original_max_position_embeddings;
  }
  return c;
}

void expect_params_bit_equal(const CausalLM& a, const CausalLM& b, DType round_to = DType::f32) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i].first, pb[i].first);
    ASSERT_EQ(pa[i].second.shape(), pb[i].second.shape()) << pa[i].first;
    std::vector<float> x = pa[i].second.to(round_to).to_vector<float>(), y = pb[i].second.to_vector<float>();
    ASSERT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << pa[i].first;
  }
}

}  // namespace

// ---- import -------------------------------------------------------------------------------------

TEST_F(HfCheckpoint, Gpt2MatchesReferenceAndSkipsMaskBuffers) {
  Cfg c;
  // Old GPT-2 files carry the causal mask and masked_bias as tensors; they are not parameters.
  Tensor mask = Tensor::zeros({1, 1, c.P, c.P});
  for (int64_t i = 0; i < c.P; ++i)
    for (int64_t j = 0; j <= i; ++j) static_cast<float*>(mask.raw_data())[i * c.P + j] = 1.0f;
  HfTensors extra;
  for (int64_t l = 0; l < c.L; ++l) {
    extra["transformer.h." + std::to_string(l) + ".attn.bias"] = mask;
    extra["transformer.h." + std::to_string(l) + ".attn.masked_bias"] = Tensor::scalar(-1e4);
  }
  check_import(c, DType::f32, 1, extra);
}

TEST_F(HfCheckpoint, Gpt2BareNamesTiedHeadPresentAndUntied) {
  Cfg c;
  c.bare = true;  // GPT2Model files: "wte.weight", "h.0...."
  HfTensors t = hf_tensors(c, DType::f32, 2);
  HfTensors with_head = t;
  with_head["lm_head.weight"] = t["wte.weight"].clone();  // tied and stored anyway
  write_checkpoint(dir_ / "bare", config_of(c), with_head);
  auto m = load_hf_model((dir_ / "bare").string());
  expect_close(logits_of(*m), reference(c, t, kIds), 2e-5, 2e-5, "bare");

  Cfg u;
  u.tie = false;
  check_import(u, DType::f32, 3, {}, "untied");
}

TEST_F(HfCheckpoint, LlamaGqaUntiedMatchesReference) {
  Cfg c = llama_cfg();
  ASSERT_LT(c.KV, c.H);
  // Old Llama files carry the RoPE frequencies; they must agree with rope_theta.
  const int64_t D = c.C / c.H;
  std::vector<float> inv(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv[i] = static_cast<float>(std::pow(c.theta, -2.0 * i / D));
  HfTensors extra;
  for (int64_t l = 0; l < c.L; ++l)
    extra["model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq"] = Tensor::from_vector(inv, {D / 2});
  check_import(c, DType::f32, 4, extra);

  // The same buffer for a different theta means a different RoPE: an error, not a silent skip.
  inv[1] *= 2;
  extra["model.layers.0.self_attn.rotary_emb.inv_freq"] = Tensor::from_vector(inv, {D / 2});
  EXPECT_ERROR_HAS(check_import(c, DType::f32, 4, extra, "bad_inv"), "model.layers.0.self_attn.rotary_emb.inv_freq",
                   "rope_theta");
}

TEST_F(HfCheckpoint, LlamaFamilyTiedAndBareNames) {
  for (const char* type : {"llama", "mistral", "qwen2"}) {
    Cfg c = llama_cfg();
    c.type = type;
    c.tie = true;
    check_import(c, DType::f32, 5, {}, std::string("tied_") + type);
  }
  Cfg b = llama_cfg();
  b.bare = true;  // LlamaModel files: "embed_tokens.weight", "layers.0...."
  check_import(b, DType::f32, 6, {}, "bare");
}

TEST_F(HfCheckpoint, Qwen2QkvBiasesMatchReference) {
  Cfg c = llama_cfg();  // GQA, untied
  c.type = "qwen2";
  HfTensors t = hf_tensors(c, DType::f32, 40);
  ASSERT_EQ(t.count("model.layers.1.self_attn.v_proj.bias"), 1u);
  ASSERT_EQ(t.count("model.layers.1.self_attn.o_proj.bias"), 0u);
  write_checkpoint(dir_ / "qwen2", config_of(c), t);
  auto m = load_hf_model((dir_ / "qwen2").string());
  EXPECT_TRUE(m->spec().qkv_bias);
  EXPECT_FALSE(m->spec().bias);
  EXPECT_EQ(m->num_parameters(), count_parameters(m->spec()));
  EXPECT_EQ(m->parameter("layers.1.attn.v_proj.bias").to_vector<float>(),
            t.at("model.layers.1.self_attn.v_proj.bias").to_vector<float>());
  const Mat got = logits_of(*m);
  expect_close(got, reference(c, t, kIds), 2e-5, 2e-5, "qwen2");
  // The biases change the logits, so the match above depends on them being loaded.
  HfTensors zeroed = t;
  for (auto& [n, v] : zeroed)
    if (n.find("_proj.bias") != std::string::npos) v = Tensor::zeros(v.shape());
  const Mat without = reference(c, zeroed, kIds);
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - without[i]));
  EXPECT_GT(worst, 1e-2);
}

TEST_F(HfCheckpoint, Llama3RopeScalingMatchesReference) {
  // head_dim 8, theta 100: wavelengths 6.3, 19.9, 62.8, 198.7 against the bands [64/4, 64/1]:
  // one pair kept, two interpolated, one divided by the factor.
  Cfg c = llama_cfg();
  c.C = 16;
  c.H = 2;
  c.KV = 1;
  c.theta = 100.0;
  c.rope_factor = 8;
  c.rope_low = 1;
  c.rope_high = 4;
  c.rope_orig = 64;
  const int64_t D = c.C / c.H;
  const std::vector<double> inv = inv_freq_of(c);
  EXPECT_EQ(inv[0], 1.0);
  EXPECT_NEAR(inv[3], std::pow(100.0, -0.75) / 8, 1e-15);
  // Files written by transformers versions that stored the (scaled) frequencies.
  std::vector<float> inv_f(inv.begin(), inv.end());
  HfTensors extra;
  for (int64_t l = 0; l < c.L; ++l)
    extra["model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq"] = Tensor::from_vector(inv_f, {D / 2});
  check_import(c, DType::f32, 41, extra, "scaled");

  auto m = load_hf_model((dir_ / "scaled").string());
  const RopeScaling& r = m->spec().rope_scaling;
  EXPECT_EQ(r.type, RopeScaling::Type::llama3);
  EXPECT_EQ(r.factor, 8.0);
  EXPECT_EQ(r.original_max_position_embeddings, 64);
  // Without the scaling the reference is far from the model: the match depends on it.
  HfTensors t = hf_tensors(c, DType::f32, 41);
  Cfg plain = c;
  plain.rope_factor = 0;
  const Mat got = logits_of(*m), unscaled = reference(plain, t, kIds);
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - unscaled[i]));
  EXPECT_GT(worst, 1e-2);

  // Unscaled frequencies stored next to a llama3 config.json disagree with it: an error.
  for (int64_t i = 0; i < D / 2; ++i) inv_f[i] = static_cast<float>(std::pow(c.theta, -2.0 * i / D));
  extra["model.layers.1.self_attn.rotary_emb.inv_freq"] = Tensor::from_vector(inv_f, {D / 2});
  EXPECT_ERROR_HAS(check_import(c, DType::f32, 41, extra, "bad_inv"), "model.layers.1.self_attn.rotary_emb.inv_freq",
                   "rope_scaling llama3");
}

TEST_F(HfCheckpoint, HalfPrecisionCheckpoints) {
  for (DType dt : {DType::bf16, DType::f16}) {
    for (Cfg c : {Cfg{}, llama_cfg()}) {
      const std::string what = c.type + " " + dtype_name(dt);
      HfTensors t = hf_tensors(c, dt, 7);
      fs::path d = dir_ / what;
      write_checkpoint(d, config_of(c), t);
      EXPECT_EQ(SafetensorsLoader(d.string()).entry(c.gpt2() ? "transformer.wte.weight" : "lm_head.weight").dtype, dt);
      // Into f32: the rounded values are exact, so the reference (on the same values) agrees tightly.
      auto m32 = load_hf_model(d.string());
      Mat ref = reference(c, t, kIds);
      expect_close(logits_of(*m32), ref, 2e-5, 2e-5, what + " -> f32");
      // Kept in the checkpoint's dtype: same parameters bit for bit, logits within half precision.
      auto m16 = load_hf_model(d.string(), dt);
      for (const auto& [n, p] : m16->named_parameters()) {
        ASSERT_EQ(p.dtype(), dt) << n;
        ASSERT_TRUE(p.requires_grad()) << n;
        EXPECT_EQ(p.to_vector<float>(), m32->parameter(n).to_vector<float>()) << n;
      }
      expect_close(logits_of(*m16), ref, 0.05, 0.1, what + " -> " + dtype_name(dt));
    }
  }
}

// ---- export -------------------------------------------------------------------------------------

TEST_F(HfCheckpoint, ExportThenImportIsTheIdentity) {
  for (Arch a : {Arch::gpt2, Arch::llama}) {
    for (bool tie : {true, false}) {
      const std::string what = std::string(arch_name(a)) + (tie ? " tied" : " untied");
      auto m = tiny_model(a, tie, 11);
      fs::path d = dir_ / what;
      save_hf_model(*m, d.string());
      auto back = load_hf_model(d.string());
      expect_params_bit_equal(*m, *back);
      EXPECT_EQ(logits_of(*m), logits_of(*back)) << what;

      // The files are in the HF layout: read them by HF names with the reference forward.
      Cfg c = cfg_of(m->spec());
      HfTensors files = read_all(d);
      EXPECT_EQ(files.count("lm_head.weight"), tie ? 0u : 1u) << what;
      if (a == Arch::gpt2) {
        EXPECT_EQ(files.at("transformer.h.1.attn.c_attn.weight").shape(), (Shape{16, 48}));
      }
      expect_close(logits_of(*m), reference(c, files, kIds), 2e-5, 2e-5, what + " export vs reference");

      SafetensorsFile f((d / "model.safetensors").string());
      EXPECT_EQ(f.metadata().at("format"), "pt");
      json cfg = json::parse(std::ifstream(d / "config.json"));
      EXPECT_EQ(cfg["model_type"], arch_name(a));
      EXPECT_EQ(cfg["torch_dtype"], "float32");
      EXPECT_EQ(cfg["tie_word_embeddings"], tie);
    }
  }
}

TEST_F(HfCheckpoint, ExportQwen2BiasesAndLlama3RopeScaling) {
  // head_dim 4, theta 50: wavelengths 6.3 and 44.4 against the bands [16/4, 16/1]: one pair
  // interpolated, one divided.
  RopeScaling rope;
  rope.type = RopeScaling::Type::llama3;
  rope.factor = 4;
  rope.low_freq_factor = 1;
  rope.high_freq_factor = 4;
  rope.original_max_position_embeddings = 16;
  for (int variant = 0; variant < 3; ++variant) {
    const bool qkv = variant != 1, scaled = variant != 0;
    const std::string what = std::string(qkv ? "qwen2" : "llama") + (scaled ? " llama3-rope" : "");
    auto m = tiny_model(Arch::llama, variant == 2, 16 + variant, qkv, scaled ? rope : RopeScaling{});
    fs::path d = dir_ / ("v" + std::to_string(variant));
    save_hf_model(*m, d.string());
    json cfg = json::parse(std::ifstream(d / "config.json"));
    EXPECT_EQ(cfg["model_type"], qkv ? "qwen2" : "llama") << what;
    if (scaled) {
      EXPECT_EQ(cfg["rope_scaling"]["rope_type"], "llama3") << what;
      EXPECT_EQ(cfg["rope_scaling"]["factor"], 4.0) << what;
      EXPECT_EQ(cfg["rope_scaling"]["original_max_position_embeddings"], 16) << what;
    } else {
      EXPECT_TRUE(cfg["rope_scaling"].is_null()) << what;
    }
    HfTensors files = read_all(d);
    EXPECT_EQ(files.count("model.layers.0.self_attn.q_proj.bias"), qkv ? 1u : 0u) << what;
    EXPECT_EQ(files.count("model.layers.0.self_attn.o_proj.bias"), 0u) << what;
    auto back = load_hf_model(d.string());
    EXPECT_EQ(back->spec().qkv_bias, qkv) << what;
    EXPECT_EQ(back->spec().rope_scaling.type, m->spec().rope_scaling.type) << what;
    expect_params_bit_equal(*m, *back);
    EXPECT_EQ(logits_of(*m), logits_of(*back)) << what;
    expect_close(logits_of(*m), reference(cfg_of(m->spec()), files, kIds), 2e-5, 2e-5, what + " export vs reference");
  }
}

TEST_F(HfCheckpoint, ExportHalfPrecision) {
  for (DType dt : {DType::bf16, DType::f16}) {
    auto m = tiny_model(Arch::llama, false, 12);
    fs::path d = dir_ / dtype_name(dt);
    save_hf_model(*m, d.string(), dt);
    SafetensorsLoader st(d.string());
    for (const auto& n : st.names()) EXPECT_EQ(st.entry(n).dtype, dt) << n;
    EXPECT_EQ(read_hf_config(d.string()).torch_dtype, hf_torch_dtype_name(dt));
    auto back = load_hf_model(d.string());
    expect_params_bit_equal(*m, *back, dt);  // the originals rounded to nearest even
  }
  auto m = tiny_model(Arch::gpt2, true, 13);
  EXPECT_ERROR_HAS(save_hf_model(*m, (dir_ / "x").string(), DType::i32), "i32");
}

TEST_F(HfCheckpoint, ShardedCheckpointLoadsAndResavingCleansUp) {
  auto m = tiny_model(Arch::gpt2, false, 14);
  const std::string d = (dir_ / "sharded").string();
  save_hf_model(*m, d, DType::f32, 1200);
  int shards = 0;
  for (const auto& e : fs::directory_iterator(d))
    if (e.path().filename().string().rfind("model-", 0) == 0) ++shards;
  EXPECT_GE(shards, 3);
  EXPECT_TRUE(fs::exists(fs::path(d) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(d) / "model.safetensors"));
  auto back = load_hf_model(d);
  expect_params_bit_equal(*m, *back);

  // A second save, unsharded, over the same directory leaves only its own files.
  auto m2 = tiny_model(Arch::gpt2, false, 15);
  save_hf_model(*m2, d);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(d)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
  expect_params_bit_equal(*m2, *load_hf_model(d));

  // And sharded again, with a different shard count: old shards do not linger.
  save_hf_model(*m, d, DType::f32, 4000);
  auto again = load_hf_model(d);
  expect_params_bit_equal(*m, *again);
  size_t shard_files = 0;
  for (const auto& e : fs::directory_iterator(d)) {
    EXPECT_NE(e.path().filename(), "model.safetensors");
    if (e.path().filename().string().rfind("model-", 0) == 0) ++shard_files;
  }
  EXPECT_GE(shard_files, 2u);
  EXPECT_EQ(shard_files, SafetensorsLoader(d).files().size());
}

// ---- errors -------------------------------------------------------------------------------------

TEST_F(HfCheckpoint, ErrorsNameTheFileAndTensor) {
  Cfg g;
  Cfg l = llama_cfg();
  auto write = [&](const std::string& sub, const Cfg& c, const HfTensors& t, json cfg = json()) {
    fs::path d = dir_ / sub;
    write_checkpoint(d, cfg.is_null() ? config_of(c) : cfg, t);
    return d.string();
  };

  HfTensors t = hf_tensors(l, DType::f32, 20);
  t.erase("model.layers.1.mlp.up_proj.weight");
  std::string d = write("missing", l, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "model.layers.1.mlp.up_proj.weight", "layers.1.mlp.up_proj.weight",
                   d + "/model.safetensors");

  t = hf_tensors(g, DType::f32, 21);
  t["transformer.h.0.attn.c_attn.weight"] = Tensor::zeros({3 * g.C, g.C});  // [out, in]: not Conv1D
  d = write("shape", g, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "transformer.h.0.attn.c_attn.weight", "[24, 8]", "[8, 24]", d);

  t = hf_tensors(l, DType::f32, 22);
  json cfg = config_of(l);
  cfg["model_type"] = "t5";
  d = write("type", l, t, cfg);
  EXPECT_ERROR_HAS(load_hf_model(d), d + "/config.json", "t5");

  t = hf_tensors(l, DType::f32, 23);
  t["model.layers.0.self_attn.q_norm.weight"] = Tensor::ones({2});
  d = write("extra", l, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "model.layers.0.self_attn.q_norm.weight", d + "/model.safetensors",
                   "no place");

  // Qwen2 files must carry their q/k/v biases, and only those.
  Cfg q = llama_cfg();
  q.type = "qwen2";
  t = hf_tensors(q, DType::f32, 24);
  t.erase("model.layers.1.self_attn.k_proj.bias");
  d = write("qwen_no_bias", q, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "missing tensor model.layers.1.self_attn.k_proj.bias",
                   "layers.1.attn.k_proj.bias");
  t = hf_tensors(q, DType::f32, 24);
  t["model.layers.0.self_attn.o_proj.bias"] = Tensor::ones({q.C});
  d = write("qwen_o_bias", q, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "model.layers.0.self_attn.o_proj.bias", "no place", "q/k/v only");
  // A Llama config with Qwen2-style biases in the file: undeclared, so refused with a hint.
  t = hf_tensors(l, DType::f32, 24);
  t["model.layers.0.self_attn.q_proj.bias"] = Tensor::ones({l.C});
  d = write("llama_q_bias", l, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "model.layers.0.self_attn.q_proj.bias", "no place", "qwen2");

  // A mask buffer of a layer the model does not have is not skipped.
  t = hf_tensors(g, DType::f32, 25);
  t["transformer.h.7.attn.bias"] = Tensor::ones({1});
  d = write("layer7", g, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "transformer.h.7.attn.bias", "no place");

  // Tied embeddings with an lm_head that differs from them.
  t = hf_tensors(g, DType::f32, 26);
  t["lm_head.weight"] = Tensor::zeros({g.V, g.C});
  d = write("tied_diff", g, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "lm_head.weight", "tie_word_embeddings");

  t = hf_tensors(g, DType::f32, 27);
  t["transformer.ln_f.bias"] = Tensor::zeros({g.C}, DType::i32);
  d = write("int", g, t);
  EXPECT_ERROR_HAS(load_hf_model(d), "transformer.ln_f.bias", "I32");

  EXPECT_ERROR_HAS(load_hf_model((dir_ / "nowhere").string()), "nowhere");
}

TEST_F(HfCheckpoint, FailedLoadLeavesTheModelUntouched) {
  Cfg l = llama_cfg();
  HfTensors t = hf_tensors(l, DType::f32, 30);
  t["model.layers.1.mlp.down_proj.weight"] = Tensor::zeros({l.C, l.F + 1});  // found only after others
  write_checkpoint(dir_ / "bad", config_of(l), t);
  HfTensors good = hf_tensors(l, DType::f32, 31);
  write_checkpoint(dir_ / "good", config_of(l), good);
  auto m = load_hf_model((dir_ / "good").string());
  std::vector<double> before = logits_of(*m);
  EXPECT_ERROR_HAS(load_hf_weights(*m, (dir_ / "bad").string()), "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(logits_of(*m), before);
  // load_hf_weights also takes a single .safetensors file.
  load_hf_weights(*m, (dir_ / "bad" / ".." / "good" / "model.safetensors").string());
  EXPECT_EQ(logits_of(*m), before);
}

// Token ids go into config.json and generation_config.json; unknown ones are left out.
TEST_F(HfCheckpoint, TokenIdsInConfigAndGenerationConfig) {
  auto m = tiny_model(Arch::llama, true, 21);
  const std::string d = (dir_ / "ids").string();
  HfTokenIds ids;
  ids.bos = 1;
  ids.eos = 2;
  save_hf_model(*m, d, DType::f32, 0, ids);
  const json cfg = json::parse(std::ifstream(fs::path(d) / "config.json"));
  const json gen = json::parse(std::ifstream(fs::path(d) / "generation_config.json"));
  for (const json& j : {cfg, gen}) {
    EXPECT_EQ(j.at("bos_token_id").get<int>(), 1);
    EXPECT_EQ(j.at("eos_token_id").get<int>(), 2);
    EXPECT_FALSE(j.contains("pad_token_id"));
  }
  EXPECT_EQ(read_hf_config(d).spec.vocab_size, m->spec().vocab_size);  // still a config lathe reads
  // Without ids: none written, the old ones gone.
  save_hf_model(*m, d);
  for (const char* f : {"config.json", "generation_config.json"})
    EXPECT_FALSE(json::parse(std::ifstream(fs::path(d) / f)).contains("eos_token_id")) << f;
}

// vocab.json + merges.txt -> tokenizer.json: the vocabulary as is, merges as pairs in rank
// order, the named special tokens that are in the vocabulary as added tokens.
TEST_F(HfCheckpoint, TokenizerJsonFromVocabMerges) {
  const fs::path v = dir_ / "vocab.json", mg = dir_ / "merges.txt";
  std::ofstream(v) << R"({"a": 0, "b": 1, "\u0120": 2, "ab": 3, "\u0120ab": 4, "<|endoftext|>": 5})";
  std::ofstream(mg) << "#version: 0.2\na b\n\u0120 ab\r\n";
  const json j = json::parse(data::hf_tokenizer_json_from_vocab_merges(v.string(), mg.string(), {"<|endoftext|>", "<pad>"}));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["vocab"].size(), 6u);
  EXPECT_EQ(j["model"]["vocab"]["\u0120ab"], 4);
  EXPECT_EQ(j["model"]["merges"], json::parse(R"([["a", "b"], ["\u0120", "ab"]])"));
  ASSERT_EQ(j["added_tokens"].size(), 1u);  // <pad> is not in the vocabulary
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["id"], 5);
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");

  std::ofstream(mg) << "a b\nbad\n";
  EXPECT_THROW(data::hf_tokenizer_json_from_vocab_merges(v.string(), mg.string(), {}), lathe::Error);
  const json tc = json::parse(data::hf_tokenizer_config_json("", "<|endoftext|>", "", 64));
  EXPECT_EQ(tc["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_TRUE(tc["bos_token"].is_null());
  EXPECT_EQ(tc["eos_token"], "<|endoftext|>");
  EXPECT_EQ(tc["model_max_length"], 64);
}
