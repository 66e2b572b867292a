// lathe finetune with a peft section and lathe export of its adapter, end to end: the loss
// falls with only the LoRA factors training, --adapter-only writes the peft layout, which
// reloads onto the base with the logits of the merged export (--merge).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "models/safetensors.h"
#include "peft/adapter_io.h"
#include "tests/cli/cli_test_util.h"
#include "tests/cli/peft_cli_util.h"
#include "tests/common/test_helpers.h"

namespace lathe::cli_test {
namespace {

using test::TmpDir;

TEST(CliPeft, FinetuneLoraExportAdapterAndMerged) {
  TmpDir tmp("cli_peft");
  // The "pretrained" base: a tiny Llama in the Hugging Face layout.
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 256;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 2;
  s.d_model = 32;
  s.d_ff = 64;
  s.max_seq_len = 64;
  s.bias = false;
  const std::string cfg = write_finetune_setup(
      tmp.path(), s, 16, "peft { method: LORA r: 8 lora_alpha: 16 target_modules: \"all-linear\" }\n");
  Result r = run_lathe("finetune " + sh_quote(cfg));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("trainable params: "), std::string::npos) << r.out;
  // 2 layers x 7 linears: r (in + out) each.
  const int64_t want = 2 * 8 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32));
  ASSERT_EQ(want, 8192);
  EXPECT_NE(r.out.find("trainable params: 8,192 ||"), std::string::npos) << r.out;
  auto losses = metrics_losses(tmp / "run/metrics.jsonl");
  ASSERT_EQ(losses.size(), 16u);
  EXPECT_LT(losses[15] + losses[16], losses[1] + losses[2] - 0.2);
  ASSERT_TRUE(std::filesystem::exists(tmp / "run/adapter/adapter_config.json"));

  Result ad = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --adapter-only --out " + sh_quote(tmp / "ad"));
  ASSERT_EQ(ad.rc, 0) << ad.out;
  // The export of the checkpoint equals the adapter the run wrote at its end.
  EXPECT_EQ(test::read_file(tmp / "ad/adapter_model.safetensors"),
            test::read_file(tmp / "run/adapter/adapter_model.safetensors"));
  models::SafetensorsFile st(tmp / "ad/adapter_model.safetensors");
  EXPECT_TRUE(st.contains("base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"));
  const auto c = nlohmann::json::parse(test::read_file(tmp / "ad/adapter_config.json"));
  EXPECT_EQ(c["base_model_name_or_path"], tmp / "base");
  Result mg = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --merge --out " + sh_quote(tmp / "merged"));
  ASSERT_EQ(mg.rc, 0) << mg.out;

  const ExportGaps g = export_gaps(tmp / "base", tmp / "ad", tmp / "merged",
                                   [](models::CausalLM& m, const std::string& d) { peft::load_adapter(m, d); });
  EXPECT_LT(g.adapter_vs_merged, 1e-4);
  EXPECT_GT(g.adapter_vs_base, 1e-2);  // the adapter changed the model

  // Usage errors: both modes, or adapter modes on a run without adapters.
  EXPECT_EQ(run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --merge --adapter-only --out " +
                      sh_quote(tmp / "x")).rc,
            2);
}

}  // namespace
}  // namespace lathe::cli_test
