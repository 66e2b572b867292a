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
#include "tests/common/test_helpers.h"

namespace lathe::cli_test {
namespace {

using test::TmpDir;
using test::write_file;

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
  models::save_hf_model(*models::build_model(s, 5), tmp / "base");
  write_file(tmp / "corpus.txt", test::read_file("../shared/data/tinyshakespeare.txt").substr(0, 40000));
  const std::string cfg = tmp / "ft.pbtxt";
  write_file(cfg, "name: \"ft\"\nrun_dir: \"" + tmp / "run" + "\"\nmodel { init_from: \"" + tmp / "base" +
                      "\" }\ndata { source: TEXT path: \"" + tmp / "corpus.txt" +
                      "\" tokenizer: \"byte\" }\noptimizer { lr: 1e-2 }\n"
                      "train { steps: 16 micro_batch: 4 seq_len: 64 eval_batches: 1 log_interval: 1 }\n"
                      "logging { progress: NONE }\nparallel { threads_per_rank: 1 }\n"
                      "peft { method: LORA r: 8 lora_alpha: 16 target_modules: \"all-linear\" }\n");
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

  auto with_adapter = models::load_hf_model(tmp / "base");
  peft::load_adapter(*with_adapter, tmp / "ad");
  auto merged = models::load_hf_model(tmp / "merged");
  auto base = models::load_hf_model(tmp / "base");
  const Tensor ids = Tensor::from_vector<int64_t>({72, 101, 108, 108, 111, 44, 32, 119, 111, 114}, {1, 10});
  autograd::NoGradGuard ng;
  with_adapter->eval();
  merged->eval();
  base->eval();
  auto diff = [](const Tensor& a, const Tensor& b) {
    std::vector<float> x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
    double m = 0;
    for (size_t i = 0; i < x.size(); ++i) m = std::max(m, static_cast<double>(std::abs(x[i] - y[i])));
    return m;
  };
  const Tensor la = with_adapter->forward(ids), lm = merged->forward(ids), lb = base->forward(ids);
  EXPECT_LT(diff(la, lm), 1e-4);
  EXPECT_GT(diff(la, lb), 1e-2);  // the adapter changed the model

  // Usage errors: both modes, or adapter modes on a run without adapters.
  EXPECT_EQ(run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --merge --adapter-only --out " +
                      sh_quote(tmp / "x")).rc,
            2);
}

}  // namespace
}  // namespace lathe::cli_test
