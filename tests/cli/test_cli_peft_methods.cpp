// lathe finetune and lathe export for LoRA-SB, NOLA, SoRA and SpIEL, end to end: the run trains,
// `export --adapter-only` from its checkpoint writes the same plain-LoRA adapter as the run's
// end (LoRA-SB: the frozen factors come back from the checkpoint), and `export --merge` gives
// the logits of the base with that adapter loaded.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "peft/adapter_io.h"
#include "peft/sft_io.h"
#include "tests/cli/cli_test_util.h"
#include "tests/cli/peft_cli_util.h"
#include "tests/common/test_helpers.h"

namespace lathe::cli_test {
namespace {

using test::TmpDir;

class CliPeftMethods : public ::testing::TestWithParam<const char*> {};

TEST_P(CliPeftMethods, FinetuneExportAdapterAndMerged) {
  TmpDir tmp(std::string("cli_peft_") + GetParam());
  const std::string cfg = write_finetune_setup(
      tmp.path(), tiny_gpt2_spec(), 8,
      "peft { method: " + std::string(GetParam()) +
          " r: 4 lora_alpha: 8 target_modules: \"all-linear\" sb_init_batches: 2 nola_num_basis_a: 16 "
          "nola_num_basis_b: 16 sora_lambda: 5 }\n");
  Result r = run_lathe("finetune " + sh_quote(cfg));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("trainable params: "), std::string::npos) << r.out;
  EXPECT_EQ(metrics_losses(tmp / "run/metrics.jsonl").size(), 8u);

  Result ad = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --adapter-only --out " + sh_quote(tmp / "ad"));
  ASSERT_EQ(ad.rc, 0) << ad.out;
  EXPECT_EQ(test::read_file(tmp / "ad/adapter_model.safetensors"),
            test::read_file(tmp / "run/adapter/adapter_model.safetensors"));
  Result mg = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --merge --out " + sh_quote(tmp / "merged"));
  ASSERT_EQ(mg.rc, 0) << mg.out;
  const ExportGaps g = export_gaps(tmp / "base", tmp / "ad", tmp / "merged",
                                   [](models::CausalLM& m, const std::string& d) { peft::load_adapter(m, d); });
  EXPECT_LT(g.adapter_vs_merged, 1e-4);
  EXPECT_GT(g.adapter_vs_base, 1e-3);  // the adapter changed the model
}

INSTANTIATE_TEST_SUITE_P(Method, CliPeftMethods, ::testing::Values("LORA_SB", "NOLA", "SORA"),
                         [](const auto& i) { return std::string(i.param); });


// SpIEL: the adapter alone in the SFT layout (the run's own file, byte for byte), and the
// merged export equal to the base with that delta loaded; two reselections happen in 8 steps.
TEST(CliSpiel, FinetuneExportAdapterAndMerged) {
  TmpDir tmp("cli_spiel");
  const std::string cfg = write_finetune_setup(
      tmp.path(), tiny_gpt2_spec(), 8,
      "peft { method: SPIEL spiel_density: 0.02 spiel_reselection_steps: 3 spiel_accumulation_steps: 1 }\n");
  Result r = run_lathe("finetune " + sh_quote(cfg));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("peft: SpIEL (AG)"), std::string::npos) << r.out;
  Result ad = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --adapter-only --out " + sh_quote(tmp / "ad"));
  ASSERT_EQ(ad.rc, 0) << ad.out;
  EXPECT_NE(ad.out.find("SFT (SpIEL)"), std::string::npos) << ad.out;
  EXPECT_EQ(test::read_file(tmp / "ad/adapter_model.safetensors"),
            test::read_file(tmp / "run/adapter/adapter_model.safetensors"));
  Result mg = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --merge --out " + sh_quote(tmp / "merged"));
  ASSERT_EQ(mg.rc, 0) << mg.out;
  const ExportGaps g = export_gaps(tmp / "base", tmp / "ad", tmp / "merged",
                                   [](models::CausalLM& m, const std::string& d) { peft::load_spiel_adapter(m, d); });
  EXPECT_LT(g.adapter_vs_merged, 1e-4);
  EXPECT_GT(g.adapter_vs_base, 1e-3);
}
}  // namespace
}  // namespace lathe::cli_test
