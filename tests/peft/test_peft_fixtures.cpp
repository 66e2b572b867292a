// Adapters made by Hugging Face peft itself (tests/hf/make_peft_fixtures.py, committed under
// tests/fixtures/peft): lathe loads them onto the transformers base with the logits peft
// computed, merges them without changing the output, and writes them back with peft's keys
// and values.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "models/hf_import.h"
#include "models/safetensors.h"
#include "peft/adapter_io.h"
#include "peft_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
const std::string kDir = "tests/fixtures/peft/";

class PeftFixtures : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftFixtures, LoadsWithPeftsLogitsMergesAndSavesPeftsTensors) {
  const std::string d = kDir + GetParam();
  models::SafetensorsFile expected(d + "/expected.safetensors");
  const Tensor ids = expected.get("input_ids");
  auto model = models::load_hf_model(d + "/base");
  const Tensor base_logits = test::eval_logits(*model, ids);
  EXPECT_LT(test::max_abs_diff(base_logits, expected.get("logits")), 1e30);  // shapes agree
  EXPECT_LT(test::max_abs_diff(base_logits, expected.get("base_logits")), 2e-4);
  const auto loaded = peft::load_adapter(*model, d + "/adapter");
  const Tensor logits = test::eval_logits(*model, ids);
  // The adapter matters (by a lot), and lathe computes what peft computed.
  EXPECT_GT(test::max_abs_diff(logits, base_logits), 0.5);
  EXPECT_LT(test::max_abs_diff(logits, expected.get("logits")), 2e-4);

  // Merged == unmerged (f32), and unmerge restores the base.
  peft::merge_adapters(*model);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), logits), 1e-5);
  peft::unmerge_adapters(*model);
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*model, ids), logits), 1e-5);

  // Saved again, the file holds peft's tensors: the same keys and the same values.
  test::TmpDir tmp("peft_fix");
  peft::AdapterSaveOptions so = peft::save_options(loaded.options, loaded.injected);
  peft::save_adapter(*model, tmp / "out", so);
  models::SafetensorsFile theirs(d + "/adapter/adapter_model.safetensors"), ours(tmp / "out/adapter_model.safetensors");
  EXPECT_EQ(ours.names(), theirs.names());
  for (const auto& n : theirs.names()) {
    if (!ours.contains(n)) continue;
    EXPECT_TRUE(test::bit_equal(ours.get(n), theirs.get(n))) << n;
  }
  // ... and reloads bit for bit.
  auto again = models::load_hf_model(d + "/base");
  peft::load_adapter(*again, tmp / "out");
  EXPECT_TRUE(test::bit_equal(test::eval_logits(*again, ids), logits));
}

// Edits the fixture adapter (GPT-2: q, k, v get their own A, so the save must stack ranks),
// saves it with lathe and checks the file with lathe; with LATHE_PEFT_CHECK_DIR set it also
// leaves DIR/<arch>/{base, adapter, lathe_logits.safetensors} for
// `tests/hf/make_peft_fixtures.py check DIR/<arch>` (peft's own loader).
TEST_P(PeftFixtures, WritesAdapterForPeftCheck) {
  const std::string d = kDir + GetParam();
  models::SafetensorsFile expected(d + "/expected.safetensors");
  const Tensor ids = expected.get("input_ids");
  auto model = models::load_hf_model(d + "/base");
  const auto loaded = peft::load_adapter(*model, d + "/adapter");
  uint64_t seed = 500;
  for (auto& [n, l] : peft::lora_layers(*model)) {
    if (n.find("attn.k_proj") != std::string::npos || n.find("attn.v_proj") != std::string::npos)
      test::randomize(l->lora_A(), seed++, 0.1);
    test::randomize(l->lora_B(), seed++, 0.1);
  }
  const Tensor logits = test::eval_logits(*model, ids);
  const char* env = std::getenv("LATHE_PEFT_CHECK_DIR");
  test::TmpDir tmp("peft_fix");
  const std::string out = env ? std::string(env) + "/" + GetParam() : tmp / GetParam();
  fs::create_directories(out);
  peft::save_adapter(*model, out + "/adapter", peft::save_options(loaded.options, loaded.injected));
  if (GetParam() == "gpt2") {
    models::SafetensorsFile st(out + "/adapter/adapter_model.safetensors");
    // Layer 0's c_attn: three rank-4 adapters with distinct A, stacked to rank 12.
    EXPECT_EQ(st.entry("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight").shape, (Shape{12, 32}));
  }
  auto again = models::load_hf_model(d + "/base");
  peft::load_adapter(*again, out + "/adapter");
  EXPECT_LT(test::max_abs_diff(test::eval_logits(*again, ids), logits), 1e-6);
  if (env) {
    fs::copy(d + "/base", out + "/base", fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    models::save_safetensors(out + "/lathe_logits.safetensors",
                             {{"input_ids", ids}, {"logits", logits.to(DType::f32)}});
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, PeftFixtures, ::testing::Values(std::string("gpt2"), std::string("llama")),
                         [](const auto& i) { return i.param; });

}  // namespace
}  // namespace lathe
