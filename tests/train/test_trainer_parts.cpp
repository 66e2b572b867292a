// The Trainer in pieces: the resolved plan, train_step/evaluate/save/restore as the loop's
// parts, checkpoint parts added by a later layer, and the device/precision/MFU settings.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "configs/config.h"
#include "kernels/device.h"
#include "parallel/single_process_communicator.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/progress.h"
#include "train/run_plan.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using test::TmpDir;
using test_util::tiny_config;

TrainOptions quiet() {
  TrainOptions o;
  o.out = nullptr;
  return o;
}

TEST(TrainerParts, PlanResolvesTheConfigOnce) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path());
  c.mutable_model()->set_vocab_size(0);  // from the byte tokenizer
  RunPlan p = plan_run(c, nullptr, false, "");
  EXPECT_EQ(p.cfg.model().vocab_size(), 256);
  EXPECT_EQ(p.spec.vocab_size, 256);
  EXPECT_EQ(p.spec.n_layer, 2);
  EXPECT_EQ(p.spec.d_ff, 4 * 32);  // resolved by the config's rule, not left at 0
  EXPECT_EQ(p.total_steps, 12);
  EXPECT_EQ(p.tokens_per_step, 4 * 2 * 1 * 32);  // micro_batch x grad_accum x ranks x seq_len
  EXPECT_EQ(p.global_batch, 4);
  EXPECT_EQ(p.batches_per_epoch, p.data.train_size() / 4);
  EXPECT_EQ(p.schedule.total_steps, 12);
  EXPECT_EQ(p.schedule.warmup_steps, 3);
  EXPECT_TRUE(p.device.is_cpu());  // "auto" without a GPU
  EXPECT_EQ(p.compute_dtype, DType::f32);
  EXPECT_EQ(p.peak_tflops, 0.0);  // CPU: no MFU unless configured
  EXPECT_EQ(p.ckpt_root, tmp / "checkpoints");
  EXPECT_EQ(p.resume_spec, "auto");
  EXPECT_NE(p.config_text.find("vocab_size: 256"), std::string::npos);
  EXPECT_EQ(plan_run(c, nullptr, false, "never").resume_spec, "never");
}

TEST(TrainerParts, DeviceAndPrecisionSettings) {
  RunConfig c;
  c.mutable_logging()->set_peak_tflops(0);
  EXPECT_EQ(peak_tflops_for(c, Device::cpu()), 0.0);
  EXPECT_EQ(peak_tflops_for(c, Device::cuda(0)), 989.0);  // H100/H200 bf16 dense
  c.mutable_logging()->set_peak_tflops(123.5);
  EXPECT_EQ(peak_tflops_for(c, Device::cpu()), 123.5);
  EXPECT_EQ(peak_tflops_for(c, Device::cuda(0)), 123.5);
  EXPECT_TRUE(plan_device("cpu", 0, 1).is_cpu());
  EXPECT_EQ(describe_device(Device::cpu()), "cpu");
  if (kernels::cuda_device_count() == 0) {
    EXPECT_TRUE(plan_device("auto", 0, 4).is_cpu());
    EXPECT_ERROR_HAS(plan_device("cuda:0", 0, 1), "train.device", "cuda:0");
  }
}

TEST(TrainerParts, Bf16OnTheCpuIsAConfigErrorNamingTheFields) {
  if (kernels::cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: auto resolves to CUDA";
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path());
  c.mutable_train()->set_precision(TrainConfig::BF16);
  try {
    train(c, quiet());
    FAIL() << "expected a ConfigError";
  } catch (const configs::ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("train.precision: BF16 needs train.device cuda"), std::string::npos) << m;
  }
  EXPECT_FALSE(std::filesystem::exists(tmp / "checkpoints"));  // rejected before any file
}

TEST(TrainerParts, StepsByHandEqualTheLoop) {
  // train_step/evaluate/save called one by one give the loop's numbers bit for bit.
  TmpDir tmp;
  TrainResult ref = train(tiny_config(tmp / "loop", 4), quiet());
  ASSERT_EQ(ref.steps.size(), 4u);
  Trainer t(tiny_config(tmp / "hand", 4), quiet());
  t.setup();
  EXPECT_EQ(t.step(), 0);
  for (int i = 0; i < 4; ++i) {
    StepRecord s = t.train_step();
    EXPECT_EQ(s.step, i + 1);
    EXPECT_EQ(s.loss, ref.steps[i].loss) << "step " << i + 1;
    EXPECT_EQ(s.lr, ref.steps[i].lr);
    EXPECT_EQ(s.grad_norm, ref.steps[i].grad_norm);
  }
  EvalResult ev = t.evaluate();
  ASSERT_EQ(ref.evals.size(), 1u);
  EXPECT_EQ(ev.loss, ref.evals[0].result.loss);
  const std::string dir = t.save();
  EXPECT_EQ(dir, step_dir(tmp / "hand/checkpoints", 4));
  test_util::expect_same_tensors(rank_file(step_dir(tmp / "loop/checkpoints", 4), 0), rank_file(dir, 0));
}

// A later layer's state (here a counter that advances with every step) rides along in every
// checkpoint under its own names and comes back on restore.
class CountingTrainer : public Trainer {
 public:
  using Trainer::Trainer;
  int64_t counter = 0;
  bool configured = false;

 protected:
  void configure_model(models::CausalLM& model) override {
    configured = model.num_parameters() > 0;
    add_checkpoint_part(std::make_shared<FunctionPart>(
        "counter", [this](H5Writer& w) { write_i64(w, "extra/counter", counter); },
        [this](const H5Reader& r) { counter = read_i64(r, "extra/counter"); }));
  }
};

TEST(TrainerParts, AddedPartIsSavedAndRestored) {
  TmpDir tmp;
  std::string saved;
  {
    CountingTrainer t(tiny_config(tmp.path(), 6), quiet());
    t.setup();
    EXPECT_TRUE(t.configured);
    for (int i = 0; i < 3; ++i) {
      t.train_step();
      t.counter += 7;
    }
    saved = t.save();
  }
  const std::string file = rank_file(saved, 0);
  {
    H5Reader r(file);
    EXPECT_EQ(read_i64(r, "extra/counter"), 21);
    // The trainer's own parts keep the documented layout.
    for (const char* n : {"state/step", "state/tokens_seen", "state/lr", "state/loader_epoch", "state/loader_index",
                          "state/rng_dropout_seed", "state/rng_dropout_offset", "optim/__step__"})
      EXPECT_TRUE(r.is_dataset(n)) << n;
    EXPECT_EQ(r.attr_string("/", "optimizer"), "AdamW");
    EXPECT_EQ(read_i64(r, "state/step"), 3);
  }
  CountingTrainer resumed(tiny_config(tmp.path(), 6), quiet());  // checkpoint.resume auto
  resumed.setup();
  EXPECT_EQ(resumed.step(), 3);
  EXPECT_EQ(resumed.counter, 21);
  EXPECT_EQ(resumed.result().resumed_from, saved);

  // A part with a name already taken is refused.
  auto dup = std::make_shared<FunctionPart>("counter", [](H5Writer&) {}, [](const H5Reader&) {});
  EXPECT_ERROR_HAS(resumed.add_checkpoint_part(dup), "counter", "already registered");

  // A checkpoint without the part's names cannot be restored by a trainer that has it.
  TmpDir other;
  train(tiny_config(other.path(), 4), quiet());
  CountingTrainer wrong(tiny_config(other.path(), 6), quiet());
  const std::string msg = test::error_of([&] { wrong.setup(); });
  EXPECT_NE(msg.find("counter"), std::string::npos) << msg;
  EXPECT_NE(msg.find("extra/counter"), std::string::npos) << msg;
}

TEST(TrainerParts, MfuIsLoggedAgainstTheConfiguredPeak) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path(), 4);
  c.mutable_logging()->set_peak_tflops(0.5);
  train(c, quiet());
  RunPlan p = plan_run(c, nullptr, false, "");
  std::ifstream f(tmp / "metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(f, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ++steps;
    ASSERT_TRUE(j.contains("mfu")) << line;
    // mfu = tokens/s x (6N + 6LCT) / peak, with N all parameters (llm.c's count).
    const double expect = j["tokens_per_s"].get<double>() * p.flops_per_token / 0.5e12;
    EXPECT_NEAR(j["mfu"].get<double>(), expect, 1e-9 * std::max(1.0, expect)) << line;
    EXPECT_GT(j["mfu"].get<double>(), 0);
  }
  EXPECT_EQ(steps, 4);
  EXPECT_DOUBLE_EQ(p.flops_per_token,
                   6.0 * models::count_parameters(p.spec) + 6.0 * p.spec.n_layer * p.spec.d_model * 32);
}

TEST(TrainerParts, ConsoleLineShowsMfuWhenLogged) {
  ProgressOptions o;
  o.total_steps = 0;
  Progress p(o);
  EXPECT_EQ(p.format(3, {{"loss", 2.0}, {"tokens_per_s", 12300}, {"mfu", 0.3127}}, -1),
            "step 3 | loss 2.0000 | 12.3k tok/s | MFU 31.3%");
  EXPECT_EQ(p.format(3, {{"loss", 2.0}}, -1), "step 3 | loss 2.0000");
}

}  // namespace
}  // namespace lathe::train
