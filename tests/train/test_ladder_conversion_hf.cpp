// Ladder conversion from a Hugging Face checkpoint: the committed transformers fixtures
// (tests/fixtures/peft/{gpt2,llama}/base, Llama with GQA) as model.init_from of a run with
// ladder_residual: true. The first step's loss equals an independent f64 computation of the
// Ladder forward (Zhang et al., 2025: module m reads r_{m-1} + o_{m-2}, the output norm reads
// r_2L + o_2L-1 + o_2L) written here from the safetensors tensors and config.json alone, and
// conversion fine-tuning from there lowers the loss.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/autograd.h"
#include "models/safetensors.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/batches.h"
#include "train/run_plan.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using test::TmpDir;
using Vec = std::vector<double>;

// A transformers checkpoint read as f64 arrays, and the forward of its architecture.
class Reference {
 public:
  explicit Reference(const std::string& dir) : st_(dir + "/model.safetensors") {
    std::ifstream f(dir + "/config.json");
    cfg_ = nlohmann::json::parse(f);
    llama_ = cfg_["model_type"] == "llama";
    d_ = llama_ ? cfg_["hidden_size"].get<int64_t>() : cfg_["n_embd"].get<int64_t>();
    nh_ = llama_ ? cfg_["num_attention_heads"].get<int64_t>() : cfg_["n_head"].get<int64_t>();
    nkv_ = llama_ ? cfg_["num_key_value_heads"].get<int64_t>() : nh_;
    layers_ = llama_ ? cfg_["num_hidden_layers"].get<int64_t>() : cfg_["n_layer"].get<int64_t>();
    vocab_ = cfg_["vocab_size"].get<int64_t>();
    eps_ = llama_ ? cfg_["rms_norm_eps"].get<double>() : cfg_["layer_norm_epsilon"].get<double>();
    hd_ = d_ / nh_;
  }

  // Mean next-token cross-entropy of ids [B][T] against targets [B][T]; ladder or standard.
  double loss(const std::vector<std::vector<int64_t>>& ids, const std::vector<std::vector<int64_t>>& targets,
              bool ladder) const {
    double sum = 0;
    int64_t n = 0;
    for (size_t b = 0; b < ids.size(); ++b) {
      const std::vector<Vec> logits = forward(ids[b], ladder);
      for (size_t t = 0; t < logits.size(); ++t) {
        if (targets[b][t] < 0) continue;
        double m = -1e300, s = 0;
        for (double z : logits[t]) m = std::max(m, z);
        for (double z : logits[t]) s += std::exp(z - m);
        sum += m + std::log(s) - logits[t][static_cast<size_t>(targets[b][t])];
        ++n;
      }
    }
    return sum / static_cast<double>(n);
  }

 private:
  Vec w(const std::string& name) const { return st_.get(name).to(DType::f64).to_vector<double>(); }

  // y = x W^T (+ b) for an nn.Linear weight [out, in]; y = x W (+ b) for a GPT-2 Conv1D [in, out].
  Vec linear(const Vec& x, const std::string& weight, const std::string& bias, int64_t out) const {
    const Vec W = w(weight);
    Vec y(static_cast<size_t>(out), 0.0);
    const int64_t in = static_cast<int64_t>(x.size());
    for (int64_t j = 0; j < out; ++j)
      for (int64_t i = 0; i < in; ++i)
        y[j] += x[i] * (llama_ ? W[j * in + i] : W[i * out + j]);
    if (!bias.empty()) {
      const Vec bv = w(bias);
      for (int64_t j = 0; j < out; ++j) y[j] += bv[j];
    }
    return y;
  }

  Vec norm(const Vec& x, const std::string& prefix) const {
    const Vec g = w(prefix + ".weight");
    const double n = static_cast<double>(x.size());
    Vec y(x.size());
    if (llama_) {
      double ss = 0;
      for (double v : x) ss += v * v;
      const double r = 1.0 / std::sqrt(ss / n + eps_);
      for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * g[i];
    } else {
      const Vec b = w(prefix + ".bias");
      double mean = 0, var = 0;
      for (double v : x) mean += v / n;
      for (double v : x) var += (v - mean) * (v - mean) / n;
      for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) / std::sqrt(var + eps_) * g[i] + b[i];
    }
    return y;
  }

  // Rotary embedding of one head vector at position p (transformers' rotate_half layout).
  void rope(double* v, int64_t p) const {
    const double theta = cfg_["rope_parameters"]["rope_theta"].get<double>();
    const int64_t half = hd_ / 2;
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd_));
      const double x0 = v[i], x1 = v[i + half];
      v[i] = x0 * std::cos(a) - x1 * std::sin(a);
      v[i + half] = x1 * std::cos(a) + x0 * std::sin(a);
    }
  }

  std::vector<Vec> attention(const std::vector<Vec>& x, int64_t l) const {
    const size_t T = x.size();
    std::vector<Vec> q(T), k(T), v(T), out(T);
    for (size_t t = 0; t < T; ++t) {
      if (llama_) {
        const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
        q[t] = linear(x[t], p + "q_proj.weight", "", nh_ * hd_);
        k[t] = linear(x[t], p + "k_proj.weight", "", nkv_ * hd_);
        v[t] = linear(x[t], p + "v_proj.weight", "", nkv_ * hd_);
        for (int64_t h = 0; h < nh_; ++h) rope(&q[t][h * hd_], static_cast<int64_t>(t));
        for (int64_t h = 0; h < nkv_; ++h) rope(&k[t][h * hd_], static_cast<int64_t>(t));
      } else {
        const std::string p = "transformer.h." + std::to_string(l) + ".attn.";
        const Vec qkv = linear(x[t], p + "c_attn.weight", p + "c_attn.bias", 3 * d_);
        q[t].assign(qkv.begin(), qkv.begin() + d_);
        k[t].assign(qkv.begin() + d_, qkv.begin() + 2 * d_);
        v[t].assign(qkv.begin() + 2 * d_, qkv.end());
      }
    }
    const int64_t group = nh_ / nkv_;  // GQA: query head h reads KV head h / group
    for (size_t t = 0; t < T; ++t) {
      Vec ctx(static_cast<size_t>(nh_ * hd_), 0.0);
      for (int64_t h = 0; h < nh_; ++h) {
        const int64_t kh = h / group;
        Vec s(t + 1);
        double m = -1e300, z = 0;
        for (size_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < hd_; ++i) dot += q[t][h * hd_ + i] * k[u][kh * hd_ + i];
          s[u] = dot / std::sqrt(static_cast<double>(hd_));
          m = std::max(m, s[u]);
        }
        for (size_t u = 0; u <= t; ++u) z += (s[u] = std::exp(s[u] - m));
        for (size_t u = 0; u <= t; ++u)
          for (int64_t i = 0; i < hd_; ++i) ctx[h * hd_ + i] += s[u] / z * v[u][kh * hd_ + i];
      }
      out[t] = llama_ ? linear(ctx, "model.layers." + std::to_string(l) + ".self_attn.o_proj.weight", "", d_)
                      : linear(ctx, "transformer.h." + std::to_string(l) + ".attn.c_proj.weight",
                               "transformer.h." + std::to_string(l) + ".attn.c_proj.bias", d_);
    }
    return out;
  }

  Vec mlp(const Vec& x, int64_t l) const {
    if (llama_) {
      const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
      const int64_t ff = cfg_["intermediate_size"].get<int64_t>();
      Vec g = linear(x, p + "gate_proj.weight", "", ff), u = linear(x, p + "up_proj.weight", "", ff);
      for (int64_t i = 0; i < ff; ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];  // SiLU(gate) * up
      return linear(g, p + "down_proj.weight", "", d_);
    }
    const std::string p = "transformer.h." + std::to_string(l) + ".mlp.";
    Vec h = linear(x, p + "c_fc.weight", p + "c_fc.bias", 4 * d_);
    for (double& a : h) a = 0.5 * a * (1 + std::tanh(std::sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));  // gelu_new
    return linear(h, p + "c_proj.weight", p + "c_proj.bias", d_);
  }

  // Sub-module m = 2l (attention of layer l) or 2l + 1 (its MLP) on the stream r, norm first.
  std::vector<Vec> module(const std::vector<Vec>& r, int64_t m) const {
    const int64_t l = m / 2;
    const bool attn = m % 2 == 0;
    const std::string n = llama_ ? "model.layers." + std::to_string(l) + (attn ? ".input_layernorm" : ".post_attention_layernorm")
                                 : "transformer.h." + std::to_string(l) + (attn ? ".ln_1" : ".ln_2");
    std::vector<Vec> x(r.size());
    for (size_t t = 0; t < r.size(); ++t) x[t] = norm(r[t], n);
    if (attn) return attention(x, l);
    for (auto& v : x) v = mlp(v, l);
    return x;
  }

  std::vector<Vec> forward(const std::vector<int64_t>& ids, bool ladder) const {
    const size_t T = ids.size();
    const Vec emb = w(llama_ ? "model.embed_tokens.weight" : "transformer.wte.weight");
    std::vector<Vec> r(T, Vec(static_cast<size_t>(d_)));
    Vec pos;
    if (!llama_) pos = w("transformer.wpe.weight");
    for (size_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < d_; ++i) r[t][i] = emb[ids[t] * d_ + i] + (llama_ ? 0.0 : pos[t * d_ + i]);
    auto add = [&](const std::vector<Vec>& o) {
      for (size_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < d_; ++i) r[t][i] += o[t][i];
    };
    std::vector<Vec> o1, o2;  // o_{m-1}, o_{m-2}
    for (int64_t m = 0; m < 2 * layers_; ++m) {
      if (!ladder) {
        add(module(r, m));
        continue;
      }
      if (!o2.empty()) add(o2);  // r_m = r_{m-1} + o_{m-2}
      std::vector<Vec> o = module(r, m);
      o2 = std::move(o1);
      o1 = std::move(o);
    }
    if (ladder) {
      add(o2);
      add(o1);
    }
    const Vec head = w(llama_ ? "lm_head.weight" : "transformer.wte.weight");
    std::vector<Vec> logits(T, Vec(static_cast<size_t>(vocab_), 0.0));
    for (size_t t = 0; t < T; ++t) {
      const Vec x = norm(r[t], llama_ ? "model.norm" : "transformer.ln_f");
      for (int64_t v = 0; v < vocab_; ++v)
        for (int64_t i = 0; i < d_; ++i) logits[t][v] += x[i] * head[v * d_ + i];
    }
    return logits;
  }

  models::SafetensorsFile st_;
  nlohmann::json cfg_;
  bool llama_ = false;
  int64_t d_ = 0, nh_ = 0, nkv_ = 0, hd_ = 0, layers_ = 0, vocab_ = 0;
  double eps_ = 0;
};

std::vector<std::vector<int64_t>> rows(const Tensor& x) {
  const Tensor y = x.to(DType::i64).contiguous();
  const std::vector<int64_t> flat = y.to_vector<int64_t>();
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(y.size(0)));
  for (size_t b = 0; b < out.size(); ++b)
    out[b].assign(flat.begin() + static_cast<int64_t>(b) * y.size(1), flat.begin() + static_cast<int64_t>(b + 1) * y.size(1));
  return out;
}

class LadderConversionHf : public ::testing::TestWithParam<std::string> {};

TEST_P(LadderConversionHf, FirstLossIsTheLadderForwardOfTheHfWeightsAndFineTuningLowersIt) {
  const std::string hf = "tests/fixtures/peft/" + GetParam() + "/base";
  TmpDir tmp;
  std::string text;
  for (int i = 0; i < 200; ++i) text += i % 3 ? "hello the world's cat.\n" : "the cat! 12 hello world.\n";
  test::write_file(tmp / "corpus.txt", text);
  RunConfig c = test_util::tiny_config(tmp / "run", 25);
  c.mutable_model()->set_init_from(hf);
  c.mutable_model()->set_ladder_residual(true);
  c.mutable_model()->set_dropout(0);
  c.mutable_data()->set_source(DataConfig::TEXT);
  c.mutable_data()->set_path(tmp / "corpus.txt");
  c.mutable_data()->clear_synthetic();
  // The fixtures have 64 ids and no tokenizer files: this 53-id tokenizer fits.
  c.mutable_data()->set_tokenizer("tests/fixtures/tokenizers/gpt2_style_tiny.json");
  c.mutable_train()->set_seq_len(16);  // the fixtures' context
  c.mutable_train()->set_grad_accum(1);
  c.mutable_optimizer()->set_lr(1e-2);
  c.mutable_checkpoint()->set_save_final(false);
  TrainOptions o;
  o.out = nullptr;
  Trainer t(c, o);
  t.setup();
  ASSERT_TRUE(t.model().spec().ladder_residual);

  TrainBatches first(t.plan().data, t.plan().loader);
  const data::LMBatch b = first.next();
  const Reference ref(hf);
  const double expect = ref.loss(rows(b.ids), rows(b.targets), /*ladder=*/true);
  const double standard = ref.loss(rows(b.ids), rows(b.targets), /*ladder=*/false);
  // The rewiring matters on these weights (else the check below could not tell the two apart).
  EXPECT_GT(std::abs(expect - standard), 1e-3) << expect << " vs " << standard;

  std::vector<double> losses;
  for (int s = 0; s < 25; ++s) losses.push_back(t.train_step().loss);
  EXPECT_NEAR(losses[0], expect, 2e-6 * expect);
  double tail = 0;
  for (size_t i = losses.size() - 5; i < losses.size(); ++i) tail += losses[i] / 5;
  EXPECT_LT(tail, 0.8 * losses[0]) << "first " << losses[0] << ", mean of the last five " << tail;
}

INSTANTIATE_TEST_SUITE_P(Arch, LadderConversionHf, ::testing::Values(std::string("gpt2"), std::string("llama")));

}  // namespace
}  // namespace lathe::train
