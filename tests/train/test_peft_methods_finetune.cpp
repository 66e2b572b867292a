// The other members of the LoRA family through the Trainer (the path `lathe finetune` takes):
// LoRA-SB with its gradient init before the first step (loss falls, resume bit-exact with
// the frozen factors restored from the checkpoint, the adapter written as plain LoRA), NOLA
// and SoRA (loss falls, the exported adapter reloads with the trained logits; SoRA's gates
// reach exact zeros and the export drops those ranks).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "peft/adapter_io.h"
#include "peft/inject.h"
#include "peft/lora_sb.h"
#include "peft/sora.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/inference.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using lathe::test::TmpDir;
const auto logits = test_util::fixed_batch_logits;

RunConfig method_config(const std::string& run_dir, const std::string& base, int steps, const std::string& peft) {
  return test_util::finetune_config(run_dir, base, steps, peft);
}

const char* const kSb =
    "peft { method: LORA_SB r: 4 target_modules: \"c_attn\" target_modules: \"mlp.fc\" sb_init_batches: 3 }\n";

double max_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to(DType::f64).to_vector<double>(), y = b.to(DType::f64).to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

bool falls(const TrainResult& r) {
  const size_t n = r.steps.size();
  return r.steps[n - 1].loss + r.steps[n - 2].loss < r.steps[0].loss + r.steps[1].loss - 0.05;
}

TEST(PeftMethodsFinetune, LoraSbInitTrainsRAndExportsAsLora) {
  TmpDir tmp("peft_sb");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  Trainer t(method_config(tmp / "run", base, 12, kSb), o);
  t.setup();
  // The gradient init ran before the first step: A, B orthonormal-ish and non-zero, R = diag(S).
  int64_t layers = 0;
  for (auto& [n, l] : peft::lora_layers(t.model())) {
    auto* sb = dynamic_cast<peft::LoraSbLinear*>(l);
    ASSERT_NE(sb, nullptr) << n;
    EXPECT_EQ(sb->alpha(), 4.0);  // unset lora_alpha = r for LoRA-SB
    const auto r = sb->lora_R().to_vector<float>();
    EXPECT_GT(r[0], 0.0f) << n;
    EXPECT_EQ(r[1], 0.0f) << n;
    EXPECT_FALSE(sb->lora_A().requires_grad());
    ++layers;
  }
  EXPECT_EQ(layers, 2 * 4);
  EXPECT_EQ(t.model().num_parameters(true), layers * 16);
  const TrainResult r = t.run();
  ASSERT_TRUE(r.finished);
  EXPECT_TRUE(falls(r)) << r.steps.front().loss << " -> " << r.steps.back().loss;
  // The checkpoint: R and its moments as the model part, A and B as the frozen-factor part.
  H5Reader ck(rank_file(r.last_checkpoint, 0));
  for (const auto& n : ck.list_datasets("model")) EXPECT_NE(n.find("lora_R"), std::string::npos) << n;
  EXPECT_EQ(ck.list_datasets("peft").size(), static_cast<size_t>(2 * layers));
  // The adapter is plain LoRA (A' = R A) and reloads on the base with the trained logits.
  auto fresh = models::load_hf_model(base);
  peft::load_adapter(*fresh, r.adapter_dir);
  EXPECT_LT(max_diff(logits(t.model()), logits(*fresh)), 1e-5);
  // eval / generate / export rebuild the model from the checkpoint: A and B come back too.
  LoadedRun lr = load_trained(r.last_checkpoint, {});
  ASSERT_NE(lr.peft, nullptr);
  EXPECT_EQ(0, std::memcmp(logits(t.model()).raw_data(), logits(*lr.model).raw_data(), logits(*lr.model).nbytes()));
}

TEST(PeftMethodsFinetune, LoraSbResumeIsBitExact) {
  TmpDir tmp("peft_sb");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  const TrainResult full = train(method_config(tmp / "full", base, 8, kSb), o);
  TrainOptions first = o;
  first.stop_after = 4;
  const TrainResult a = train(method_config(tmp / "split", base, 8, kSb), first);
  ASSERT_EQ(a.end_step, 4);
  TrainOptions second = o;
  second.resume = "latest";
  const TrainResult b = train(method_config(tmp / "split", base, 8, kSb), second);
  ASSERT_EQ(b.start_step, 4);
  ASSERT_EQ(b.steps.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(b.steps[i].loss, full.steps[4 + i].loss) << "step " << 5 + i;
  test_util::expect_same_tensors(rank_file(full.last_checkpoint, 0), rank_file(b.last_checkpoint, 0));
  EXPECT_EQ(lathe::test::read_file(tmp / "full/adapter/adapter_model.safetensors"),
            lathe::test::read_file(tmp / "split/adapter/adapter_model.safetensors"));
}

TEST(PeftMethodsFinetune, NolaTrainsCoefficientsAndExports) {
  TmpDir tmp("peft_nola");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  Trainer t(method_config(tmp / "run", base, 12,
                          "peft { method: NOLA r: 4 lora_alpha: 8 target_modules: \"c_attn\" target_modules: "
                          "\"mlp.fc\" nola_num_basis_a: 32 nola_num_basis_b: 32 nola_chunk: 8 }\n"),
            o);
  const TrainResult r = t.run();
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(t.model().num_parameters(true), 2 * 4 * 64);
  EXPECT_TRUE(falls(r)) << r.steps.front().loss << " -> " << r.steps.back().loss;
  auto fresh = models::load_hf_model(base);
  peft::load_adapter(*fresh, r.adapter_dir);
  EXPECT_LT(max_diff(logits(t.model()), logits(*fresh)), 1e-5);
}

TEST(PeftMethodsFinetune, SoraGatesSparsifyAndThePrunedExportMatches) {
  TmpDir tmp("peft_sora");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  // lambda 5 at lr 1e-2: a threshold of 0.05 a step on N(0, 1) gates.
  Trainer t(method_config(tmp / "run", base, 12,
                          "peft { method: SORA r: 4 lora_alpha: 8 target_modules: \"c_attn\" target_modules: "
                          "\"mlp.fc\" sora_lambda: 5 }\n"),
            o);
  const TrainResult r = t.run();
  ASSERT_TRUE(r.finished);
  EXPECT_TRUE(falls(r)) << r.steps.front().loss << " -> " << r.steps.back().loss;
  int64_t zeros = 0;
  for (auto& [n, l] : peft::lora_layers(t.model())) {
    auto* s = dynamic_cast<peft::SoraLinear*>(l);
    ASSERT_NE(s, nullptr);
    zeros += 4 - s->active_ranks();
  }
  EXPECT_GT(zeros, 0);
  auto fresh = models::load_hf_model(base);
  peft::load_adapter(*fresh, r.adapter_dir);
  EXPECT_LT(max_diff(logits(t.model()), logits(*fresh)), 1e-5);
}

TEST(PeftMethodsFinetune, ConfigErrorsNameTheField) {
  TmpDir tmp("peft_cfg");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  EXPECT_ERROR_HAS(train(method_config(tmp / "r", base, 4, "peft { method: NOLA nola_num_basis_a: 0 }\n"), o),
                   "peft.nola_num_basis_a");
  EXPECT_ERROR_HAS(train(method_config(tmp / "r", base, 4, "peft { method: LORA_SB sb_init_batches: 0 }\n"), o),
                   "peft.sb_init_batches");
  EXPECT_ERROR_HAS(train(method_config(tmp / "r", base, 4, "peft { method: SORA sora_lambda: -1 }\n"), o),
                   "peft.sora_lambda");
}

}  // namespace
}  // namespace lathe::train
