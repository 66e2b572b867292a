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
#include "tests/common/test_helpers.h"

namespace lathe::cli_test {
namespace {

using test::TmpDir;
using test::write_file;

class CliPeftMethods : public ::testing::TestWithParam<const char*> {};

TEST_P(CliPeftMethods, FinetuneExportAdapterAndMerged) {
  TmpDir tmp(std::string("cli_peft_") + GetParam());
  models::ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = 256;
  s.n_layer = 2;
  s.n_head = 2;
  s.d_model = 32;
  s.max_seq_len = 64;
  models::save_hf_model(*models::build_model(s, 5), tmp / "base");
  write_file(tmp / "corpus.txt", test::read_file("../shared/data/tinyshakespeare.txt").substr(0, 40000));
  const std::string cfg = tmp / "ft.pbtxt";
  write_file(cfg, "name: \"ft\"\nrun_dir: \"" + tmp / "run" + "\"\nmodel { init_from: \"" + tmp / "base" +
                      "\" }\ndata { source: TEXT path: \"" + tmp / "corpus.txt" +
                      "\" tokenizer: \"byte\" }\noptimizer { lr: 1e-2 }\n"
                      "train { steps: 8 micro_batch: 4 seq_len: 64 eval_batches: 1 log_interval: 1 }\n"
                      "logging { progress: NONE }\nparallel { threads_per_rank: 1 }\n"
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
  EXPECT_GT(diff(la, lb), 1e-3);  // the adapter changed the model
}

INSTANTIATE_TEST_SUITE_P(Method, CliPeftMethods, ::testing::Values("LORA_SB", "NOLA", "SORA"),
                         [](const auto& i) { return std::string(i.param); });


// SpIEL: the adapter alone in the SFT layout (the run's own file, byte for byte), and the
// merged export equal to the base with that delta loaded; two reselections happen in 8 steps.
TEST(CliSpiel, FinetuneExportAdapterAndMerged) {
  TmpDir tmp("cli_spiel");
  models::ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = 256;
  s.n_layer = 2;
  s.n_head = 2;
  s.d_model = 32;
  s.max_seq_len = 64;
  models::save_hf_model(*models::build_model(s, 5), tmp / "base");
  write_file(tmp / "corpus.txt", test::read_file("../shared/data/tinyshakespeare.txt").substr(0, 40000));
  const std::string cfg = tmp / "ft.pbtxt";
  write_file(cfg, "name: \"ft\"\nrun_dir: \"" + tmp / "run" + "\"\nmodel { init_from: \"" + tmp / "base" +
                      "\" }\ndata { source: TEXT path: \"" + tmp / "corpus.txt" +
                      "\" tokenizer: \"byte\" }\noptimizer { lr: 1e-2 }\n"
                      "train { steps: 8 micro_batch: 4 seq_len: 64 eval_batches: 1 log_interval: 1 }\n"
                      "logging { progress: NONE }\nparallel { threads_per_rank: 1 }\n"
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
  auto with_delta = models::load_hf_model(tmp / "base");
  peft::load_spiel_adapter(*with_delta, tmp / "ad");
  auto merged = models::load_hf_model(tmp / "merged");
  auto base = models::load_hf_model(tmp / "base");
  const Tensor ids = Tensor::from_vector<int64_t>({72, 101, 108, 108, 111, 44, 32, 119, 111, 114}, {1, 10});
  autograd::NoGradGuard ng;
  with_delta->eval();
  merged->eval();
  base->eval();
  auto diff = [](const Tensor& a, const Tensor& b) {
    std::vector<float> x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
    double m = 0;
    for (size_t i = 0; i < x.size(); ++i) m = std::max(m, static_cast<double>(std::abs(x[i] - y[i])));
    return m;
  };
  const Tensor la = with_delta->forward(ids), lm = merged->forward(ids), lb = base->forward(ids);
  EXPECT_LT(diff(la, lm), 1e-4);
  EXPECT_GT(diff(la, lb), 1e-3);
}
}  // namespace
}  // namespace lathe::cli_test
