// Adapter fine-tuning through the Trainer: a peft section injects LoRA after the base weights
// are loaded, only the adapters train (and are checkpointed, with their optimizer state), a
// resumed run continues bit for bit, and the finished run writes a peft-layout adapter that
// reloads onto the base with the trained model's logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "peft/adapter_io.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using lathe::test::TmpDir;

RunConfig peft_config(const std::string& run_dir, const std::string& base, int steps,
                      const std::string& peft = "peft { method: LORA r: 4 lora_alpha: 8 target_modules: \"c_attn\" "
                                                "target_modules: \"mlp.fc\" lora_dropout: 0.1 }\n") {
  return test_util::finetune_config(run_dir, base, steps, peft);
}

TEST(PeftFinetune, OnlyAdaptersTrainAndCheckpoint) {
  TmpDir tmp("peft_ft");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  Trainer t(peft_config(tmp / "run", base, 12), o);
  const TrainResult r = t.run();
  ASSERT_TRUE(r.finished);
  // Loss falls with only the adapters training.
  ASSERT_EQ(r.steps.size(), 12u);
  EXPECT_LT(r.steps[10].loss + r.steps[11].loss, r.steps[0].loss + r.steps[1].loss - 0.1);
  // The base weights did not move: they equal the file's.
  auto fresh = models::load_hf_model(base);
  for (const auto& [n, p] : fresh->named_parameters()) {
    Tensor q = t.model().parameter(n);
    EXPECT_FALSE(q.requires_grad()) << n;
    EXPECT_EQ(0, std::memcmp(p.contiguous().raw_data(), q.contiguous().raw_data(), p.nbytes())) << n;
  }
  // The checkpoint holds the adapters and their AdamW moments only.
  H5Reader ck(rank_file(r.last_checkpoint, 0));
  const auto model_ds = ck.list_datasets("model");
  EXPECT_EQ(model_ds.size(), 2u * 2u * 4u);  // 2 layers x (q, k, v, fc) x (A, B)
  for (const auto& n : model_ds) EXPECT_NE(n.find("lora_"), std::string::npos) << n;
  for (const auto& n : ck.list_datasets("optim")) {
    if (n.find("layers.") != std::string::npos) {
      EXPECT_NE(n.find("lora_"), std::string::npos) << n;
    }
  }
  // The adapter in the peft layout reloads onto the base with the same logits.
  ASSERT_EQ(r.adapter_dir, tmp / "run/adapter");
  ASSERT_TRUE(std::filesystem::exists(tmp / "run/adapter/adapter_model.safetensors"));
  peft::load_adapter(*fresh, r.adapter_dir);
  const Tensor ids = Tensor::from_vector<int64_t>({3, 70, 101, 32, 9, 200, 44, 12}, {2, 4});
  autograd::NoGradGuard ng;
  t.model().eval();
  fresh->eval();
  Tensor a = t.model().forward(ids), b = fresh->forward(ids);
  EXPECT_EQ(0, std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()));
}

TEST(PeftFinetune, ResumeIsBitExact) {
  TmpDir tmp("peft_ft");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  const TrainResult full = train(peft_config(tmp / "full", base, 8), o);
  TrainOptions first = o;
  first.stop_after = 4;
  const TrainResult a = train(peft_config(tmp / "split", base, 8), first);
  ASSERT_EQ(a.end_step, 4);
  TrainOptions second = o;
  second.resume = "latest";
  const TrainResult b = train(peft_config(tmp / "split", base, 8), second);
  ASSERT_EQ(b.start_step, 4);
  ASSERT_EQ(b.steps.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(b.steps[i].loss, full.steps[4 + i].loss) << "step " << 5 + i;
  test_util::expect_same_tensors(rank_file(full.last_checkpoint, 0), rank_file(b.last_checkpoint, 0));
  EXPECT_EQ(lathe::test::read_file(tmp / "full/adapter/adapter_model.safetensors"),
            lathe::test::read_file(tmp / "split/adapter/adapter_model.safetensors"));
}

TEST(PeftFinetune, ConfigErrorsNameTheField) {
  TmpDir tmp("peft_ft");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  // SPIEL with a budget that leaves a module without an entry (found when injecting).
  EXPECT_ERROR_HAS(train(peft_config(tmp / "r", base, 4, "peft { method: SPIEL spiel_budget: 3 }\n"), o),
                   "peft.spiel_budget", "no entry");
  EXPECT_ERROR_HAS(train(peft_config(tmp / "r", base, 4, "peft { method: LORA r: 0 }\n"), o), "peft.r");
  EXPECT_ERROR_HAS(train(peft_config(tmp / "r", base, 4, "peft { method: LORA target_modules: \"nope\" }\n"), o),
                   "peft.target_modules");
  EXPECT_ERROR_HAS(train(peft_config(tmp / "r", base, 4, "peft { method: LORA target_modules: \"c_attn\" target_regex: \".*\" }\n"), o),
                   "peft.target_regex");
}

}  // namespace
}  // namespace lathe::train
