// Sliding-window attention against transformers itself: tests/fixtures/hf_sliding_window holds
// a tiny MistralForCausalLM (window 4 on both layers) and a Qwen2ForCausalLM (window 4 on layer
// 1 only, max_window_layers 1) with random weights, saved by save_pretrained, and the logits and
// greedy generate() ids transformers computed with them (tests/hf/make_sliding_window_fixture.py;
// the versions are in expected.json). lathe loads each through its HF import and must give the
// same logits (f32 rounding) and the same tokens, 20 of them past a 12-token prompt: positions
// far beyond the window, where attending to the whole context would predict differently.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "models/hf_config.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "tests/common/test_helpers.h"

namespace lathe::models {
namespace {

using json = nlohmann::json;

const std::string kRoot = "tests/fixtures/hf_sliding_window/";

struct Fixture {
  std::vector<int64_t> input;
  std::vector<std::vector<double>> logits;
  std::vector<int32_t> generated;
  double min_margin = 0;
};

Fixture read_fixture(const std::string& dir) {
  const json j = json::parse(test::read_file(dir + "/expected.json"));
  Fixture f;
  f.input = j.at("input_ids").get<std::vector<int64_t>>();
  f.logits = j.at("logits").get<std::vector<std::vector<double>>>();
  f.generated = j.at("generated").get<std::vector<int32_t>>();
  f.min_margin = j.at("min_margin").get<double>();
  return f;
}

// The logits of one forward over the fixture's input, against transformers'.
void expect_logits(CausalLM& m, const Fixture& f, const std::string& what) {
  autograd::NoGradGuard ng;
  const int64_t T = static_cast<int64_t>(f.input.size());
  const std::vector<double> got = m.forward(Tensor::from_vector<int64_t>(f.input, {1, T})).to_vector<double>();
  ASSERT_EQ(f.logits.size(), static_cast<size_t>(T));
  const size_t V = f.logits[0].size();
  ASSERT_EQ(got.size(), T * V) << what;
  double worst = 0;
  for (int64_t t = 0; t < T; ++t)
    for (size_t v = 0; v < V; ++v) {
      const double want = f.logits[t][v], err = std::abs(got[t * V + v] - want) / (1 + std::abs(want));
      worst = std::max(worst, err);
      ASSERT_LT(err, 2e-5) << what << ": position " << t << " token " << v << ": lathe " << got[t * V + v]
                           << ", transformers " << want;
    }
  // The greedy steps' margins dwarf the f32 differences, so the generated ids must agree.
  EXPECT_LT(worst * 100, f.min_margin) << what;
}

void expect_generation(CausalLM& m, const Fixture& f, const std::string& what) {
  const std::vector<int32_t> prompt(f.input.begin(), f.input.end());
  SampleOptions o;
  o.temperature = 0;
  o.max_new_tokens = static_cast<int64_t>(f.generated.size() - f.input.size());
  for (bool cache : {true, false}) {
    o.use_cache = cache;
    EXPECT_EQ(generate(m, prompt, o), f.generated) << what << (cache ? " with the KV cache" : " recomputed");
  }
}

TEST(HfSlidingWindow, MistralMatchesTransformers) {
  const std::string dir = kRoot + "mistral";
  const Fixture f = read_fixture(dir);
  auto m = load_hf_model(dir);
  EXPECT_EQ(m->spec().sliding_window, 4);
  EXPECT_EQ(m->spec().full_attention_layers, 0);
  EXPECT_EQ(m->spec().max_seq_len, 64);  // max_position_embeddings, not capped by the window
  expect_logits(*m, f, "mistral");
  expect_generation(*m, f, "mistral");
}

TEST(HfSlidingWindow, Qwen2WindowOnLaterLayersMatchesTransformers) {
  const std::string dir = kRoot + "qwen2";
  const Fixture f = read_fixture(dir);
  auto m = load_hf_model(dir);
  EXPECT_EQ(m->spec().sliding_window, 4);
  EXPECT_EQ(m->spec().full_attention_layers, 1);
  expect_logits(*m, f, "qwen2");
  expect_generation(*m, f, "qwen2");
}

// lathe export writes the window back (config.json) and the exported model computes the same.
TEST(HfSlidingWindow, ExportKeepsTheWindow) {
  for (const char* kind : {"mistral", "qwen2"}) {
    SCOPED_TRACE(kind);
    const std::string dir = kRoot + kind;
    const Fixture f = read_fixture(dir);
    auto m = load_hf_model(dir);
    test::TmpDir out("hf_sliding_export");
    save_hf_model(*m, out.path());
    const json cfg = json::parse(test::read_file(out.path() + "/config.json"));
    const json src = json::parse(test::read_file(dir + "/config.json"));
    EXPECT_EQ(cfg.at("model_type"), src.at("model_type"));
    EXPECT_EQ(cfg.at("sliding_window"), 4);
    if (std::string(kind) == "qwen2") {
      EXPECT_EQ(cfg.at("use_sliding_window"), true);
      EXPECT_EQ(cfg.at("max_window_layers"), 1);
      EXPECT_EQ(cfg.at("layer_types"), src.at("layer_types"));
    }
    auto back = load_hf_model(out.path());
    expect_logits(*back, f, std::string(kind) + " exported");
  }
}

}  // namespace
}  // namespace lathe::models
