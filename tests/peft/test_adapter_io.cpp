// The peft on-disk layout: key names, save -> load round trips, GPT-2 c_attn mapping, errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "models/safetensors.h"
#include "peft/adapter_io.h"
#include "peft_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

using peft::PeftOptions;

void randomize_adapters(models::CausalLM& m, uint64_t seed) {
  for (auto& [n, l] : peft::lora_layers(m)) {
    test::randomize(l->lora_A(), seed++, 0.3);
    test::randomize(l->lora_B(), seed++, 0.3);
  }
}

void expect_same_adapters(models::CausalLM& a, models::CausalLM& b) {
  auto la = peft::lora_layers(a), lb = peft::lora_layers(b);
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(la[i].first, lb[i].first);
    EXPECT_EQ(la[i].second->rank(), lb[i].second->rank()) << la[i].first;
    EXPECT_EQ(la[i].second->scaling(), lb[i].second->scaling()) << la[i].first;
    EXPECT_TRUE(test::bit_equal(la[i].second->lora_A(), lb[i].second->lora_A())) << la[i].first;
    EXPECT_TRUE(test::bit_equal(la[i].second->lora_B(), lb[i].second->lora_B())) << la[i].first;
  }
}

nlohmann::json read_json(const std::string& p) { return nlohmann::json::parse(test::read_file(p)); }

TEST(AdapterIO, LlamaKeysAndBitExactRoundTrip) {
  const models::ModelSpec s = test::tiny_llama();
  auto m = models::build_model(s, 1);
  PeftOptions o;
  o.target.names = {"all-linear"};
  o.lora.r = 4;
  o.lora.alpha = 8;
  o.rank_pattern = {{"down_proj", 2}};
  o.alpha_pattern = {{"layers.1.attn.q_proj", 3.5}};
  auto res = peft::inject_lora(*m, o);
  randomize_adapters(*m, 100);
  test::TmpDir tmp("peft_io");
  peft::save_adapter(*m, tmp / "a", peft::save_options(o, res, "tiny-llama"));

  models::SafetensorsFile st(tmp / "a/adapter_model.safetensors");
  EXPECT_EQ(st.size(), 2u * 2u * 7u);
  ASSERT_TRUE(st.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_EQ(st.entry("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape, (Shape{4, 32}));
  EXPECT_EQ(st.entry("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").shape, (Shape{32, 2}));
  EXPECT_EQ(st.entry("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").shape, (Shape{16, 4}));
  EXPECT_EQ(st.metadata().at("format"), "pt");
  const auto c = read_json(tmp / "a/adapter_config.json");
  EXPECT_EQ(c["peft_type"], "LORA");
  EXPECT_EQ(c["r"], 4);
  EXPECT_EQ(c["lora_alpha"], 8);
  EXPECT_EQ(c["base_model_name_or_path"], "tiny-llama");
  EXPECT_EQ(c["rank_pattern"]["model.layers.0.mlp.down_proj"], 2);
  EXPECT_EQ(c["alpha_pattern"]["model.layers.1.self_attn.q_proj"], 3.5);
  EXPECT_EQ(c["target_modules"].size(), 14u);
  EXPECT_EQ(c["fan_in_fan_out"], false);

  auto m2 = models::build_model(s, 1);
  const auto loaded = peft::load_adapter(*m2, tmp / "a");
  EXPECT_EQ(loaded.injected.adapters.size(), res.adapters.size());
  expect_same_adapters(*m, *m2);
  const Tensor ids = test::test_ids(2, 7, s.vocab_size);
  EXPECT_TRUE(test::bit_equal(test::eval_logits(*m, ids), test::eval_logits(*m2, ids)));
  EXPECT_EQ(m2->num_parameters(true), m->num_parameters(true));
  // Saving the reloaded adapter gives the same bytes.
  peft::save_adapter(*m2, tmp / "b", peft::save_options(o, res, "tiny-llama"));
  EXPECT_EQ(test::read_file(tmp / "a/adapter_model.safetensors"), test::read_file(tmp / "b/adapter_model.safetensors"));
}

// GPT-2: q/k/v adapters with their own A are stacked into one c_attn adapter of rank 3r;
// lathe reads them back bit for bit, and the stacked product is exactly the three deltas.
TEST(AdapterIO, Gpt2StackedRanksRoundTrip) {
  const models::ModelSpec s = test::tiny_gpt2();
  auto m = models::build_model(s, 2);
  PeftOptions o;  // peft's default for GPT-2: c_attn
  o.lora.r = 3;
  o.lora.alpha = 6;
  auto res = peft::inject_lora(*m, o);
  ASSERT_EQ(res.adapters.size(), 6u);
  randomize_adapters(*m, 200);
  test::TmpDir tmp("peft_io");
  peft::save_adapter(*m, tmp / "a", peft::save_options(o, res));
  models::SafetensorsFile st(tmp / "a/adapter_model.safetensors");
  EXPECT_EQ(st.size(), 4u);
  const std::string k = "base_model.model.transformer.h.0.attn.c_attn.";
  ASSERT_TRUE(st.contains(k + "lora_A.weight"));
  EXPECT_EQ(st.entry(k + "lora_A.weight").shape, (Shape{9, 32}));
  EXPECT_EQ(st.entry(k + "lora_B.weight").shape, (Shape{96, 9}));
  const auto c = read_json(tmp / "a/adapter_config.json");
  EXPECT_EQ(c["fan_in_fan_out"], true);
  EXPECT_EQ(c["rank_pattern"]["transformer.h.0.attn.c_attn"], 9);
  EXPECT_EQ(c["alpha_pattern"]["transformer.h.0.attn.c_attn"], 18);  // same scale 2 at rank 9
  // B A of the stacked adapter == [Bq Aq; Bk Ak; Bv Av].
  Tensor A = st.get(k + "lora_A.weight"), B = st.get(k + "lora_B.weight");
  Tensor prod = kernels::matmul(B, A);
  int64_t row = 0;
  for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
    auto l = std::dynamic_pointer_cast<peft::LoraLinear>(m->module(std::string("layers.0.attn.") + p));
    Tensor want = kernels::matmul(l->lora_B(), l->lora_A());
    EXPECT_LT(test::max_abs_diff(prod.narrow(0, row, 32), want), 1e-6) << p;
    row += 32;
  }
  auto m2 = models::build_model(s, 2);
  peft::load_adapter(*m2, tmp / "a");
  expect_same_adapters(*m, *m2);
  const Tensor ids = test::test_ids(2, 7, s.vocab_size);
  EXPECT_TRUE(test::bit_equal(test::eval_logits(*m, ids), test::eval_logits(*m2, ids)));

  // Different scales per projection: folded into B, the same function.
  PeftOptions o2 = o;
  o2.alpha_pattern = {{"q_proj", 12.0}};
  auto m3 = models::build_model(s, 2);
  auto res3 = peft::inject_lora(*m3, o2);
  randomize_adapters(*m3, 300);
  peft::save_adapter(*m3, tmp / "c", peft::save_options(o2, res3));
  auto m4 = models::build_model(s, 2);
  peft::load_adapter(*m4, tmp / "c");
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*m3, ids), test::eval_logits(*m4, ids)), 1e-5);
}

// A peft-style c_attn adapter (one A shared by q, k, v; no lathe metadata): q/k/v share A and
// take B's row blocks; saved again it is the same two tensors, bit for bit.
TEST(AdapterIO, Gpt2FusedCattnSharesA) {
  const models::ModelSpec s = test::tiny_gpt2();
  auto m = models::build_model(s, 3);
  test::TmpDir tmp("peft_io");
  models::NamedTensors t;
  const int64_t r = 4;
  for (int l = 0; l < 2; ++l) {
    const std::string k = "base_model.model.transformer.h." + std::to_string(l) + ".attn.c_attn.";
    Tensor A = Tensor::zeros({r, 32}), B = Tensor::zeros({96, r});
    test::randomize(A, 10 + l, 0.2);
    test::randomize(B, 20 + l, 0.2);
    t.emplace_back(k + "lora_A.weight", A);
    t.emplace_back(k + "lora_B.weight", B);
  }
  std::filesystem::create_directories(tmp / "p");
  models::save_safetensors(tmp / "p/adapter_model.safetensors", t);
  test::write_file(tmp / "p/adapter_config.json",
                   R"({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["c_attn"],
                       "fan_in_fan_out": true, "bias": "none", "some_future_key": 1})");
  // Reference: merge W_q += s B[0:32] A (lathe layout [out, in]) by hand.
  auto ref = models::build_model(s, 3);
  for (int l = 0; l < 2; ++l) {
    Tensor A = t[2 * l].second, B = t[2 * l + 1].second;
    int64_t row = 0;
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
      Tensor w = ref->parameter("layers." + std::to_string(l) + ".attn." + p + ".weight");
      Tensor d = kernels::matmul(B.narrow(0, row, 32), A);
      kernels::add_(w, d, 4.0);
      row += 32;
    }
  }
  peft::load_adapter(*m, tmp / "p");
  auto layers = peft::lora_layers(*m);
  ASSERT_EQ(layers.size(), 6u);
  EXPECT_TRUE(test::bit_equal(layers[0].second->lora_A(), layers[2].second->lora_A()));
  EXPECT_DOUBLE_EQ(layers[0].second->scaling(), 4.0);
  const Tensor ids = test::test_ids(2, 7, s.vocab_size);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*m, ids), test::eval_logits(*ref, ids)), 1e-5);
  peft::PeftOptions o;
  o.lora.r = 4;
  o.lora.alpha = 16;
  peft::save_adapter(*m, tmp / "q", peft::save_options(o, {}));
  models::SafetensorsFile back(tmp / "q/adapter_model.safetensors");
  for (const auto& [k, v] : t) EXPECT_TRUE(test::bit_equal(back.get(k), v)) << k;
  EXPECT_TRUE(read_json(tmp / "q/adapter_config.json")["rank_pattern"].empty());
}

TEST(AdapterIO, ErrorsNameTheTensor) {
  const models::ModelSpec s = test::tiny_llama();
  auto m = models::build_model(s, 1);
  PeftOptions o;
  o.lora.r = 2;
  auto res = peft::inject_lora(*m, o);
  test::TmpDir tmp("peft_io");
  peft::save_adapter(*m, tmp / "a", peft::save_options(o, res));
  const std::string st_path = tmp / "a/adapter_model.safetensors";
  models::NamedTensors good;
  {
    models::SafetensorsFile st(st_path);
    for (const auto& n : st.names()) good.emplace_back(n, st.get(n).clone());
  }
  // Config says r = 3: the shapes no longer fit.
  auto cfg = read_json(tmp / "a/adapter_config.json");
  cfg["r"] = 3;
  test::write_file(tmp / "a/adapter_config.json", cfg.dump());
  EXPECT_ERROR_HAS(peft::load_adapter(*models::build_model(s, 1), tmp / "a"),
                   "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "[3, 32]");
  cfg["r"] = 2;
  test::write_file(tmp / "a/adapter_config.json", cfg.dump());
  // A lora_A without its lora_B.
  models::NamedTensors missing(good.begin() + 1, good.end());
  models::save_safetensors(st_path, missing);
  EXPECT_ERROR_HAS(peft::load_adapter(*models::build_model(s, 1), tmp / "a"), good[0].first, "both factors");
  // A tensor with no place in the model.
  models::NamedTensors extra = good;
  extra.emplace_back("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", Tensor::zeros({2, 32}));
  models::save_safetensors(st_path, extra);
  EXPECT_ERROR_HAS(peft::load_adapter(*models::build_model(s, 1), tmp / "a"),
                   "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", "has no place");
  cfg["peft_type"] = "IA3";
  test::write_file(tmp / "a/adapter_config.json", cfg.dump());
  EXPECT_ERROR_HAS(peft::load_adapter(*models::build_model(s, 1), tmp / "a"), "peft_type", "IA3");
}

}  // namespace
}  // namespace lathe
