// Shared pieces of the trainer tests: a tiny config and bitwise checkpoint comparison.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "configs/config.h"
#include "models/hf_export.h"
#include "models/model.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/trainer.h"

namespace lathe::train::test_util {

// A 2-layer GPT-2 on 64 KiB of the synthetic corpus: milliseconds per step. Dropout and
// gradient accumulation are on so that resume must restore the dropout RNG and the loader.
inline std::string tiny_config_text(const std::string& run_dir, int steps = 12) {
  return "name: \"tiny\"\n"
         "run_dir: \"" + run_dir + "\"\n"
         "model { arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1 }\n"
         "data { source: SYNTHETIC synthetic { seed: 1 bytes: 65536 } val_fraction: 0.1 }\n"
         "optimizer { lr: 3e-3 weight_decay: 0.1 }\n"
         "schedule { kind: COSINE warmup_steps: 3 }\n"
         "train { steps: " + std::to_string(steps) +
         " micro_batch: 4 grad_accum: 2 eval_interval: 4 eval_batches: 2 log_interval: 4 }\n"
         "checkpoint { interval: 4 keep_last: 0 }\n"
         "logging { progress: NONE }\n"
         "parallel { threads_per_rank: 1 }\n";
}

inline RunConfig tiny_config(const std::string& run_dir, int steps = 12) {
  return configs::parse_text(tiny_config_text(run_dir, steps), "tiny");
}

// The tiny GPT-2 of the fine-tuning tests: 2 layers, 2 heads, d 32, vocab 256 (byte tokenizer).
inline models::ModelSpec tiny_hf_gpt2_spec() {
  models::ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = 256;
  s.n_layer = 2;
  s.n_head = 2;
  s.d_model = 32;
  s.max_seq_len = 32;
  return s;
}

// A tiny GPT-2 "pretrained" base in the Hugging Face layout (random weights, seed 77) written
// to <dir>/base; returns that directory.
inline std::string write_tiny_hf_base(const std::string& dir) {
  const models::ModelSpec s = tiny_hf_gpt2_spec();
  auto m = models::build_model(s, 77);
  const std::string base = dir + "/base";
  models::save_hf_model(*m, base);
  return base;
}

// tiny_config_text fine-tuning the base written by write_tiny_hf_base (byte tokenizer, lr
// 1e-2), with `peft` (a whole peft { ... } section) appended.
inline RunConfig finetune_config(const std::string& run_dir, const std::string& base, int steps,
                                 const std::string& peft) {
  std::string t = tiny_config_text(run_dir, steps);
  t.replace(t.find("data {"), 6, "data { tokenizer: \"byte\"");
  t.replace(t.find("model {"), 7, "model { init_from: \"" + base + "\"");
  t.replace(t.find("lr: 3e-3"), 8, "lr: 1e-2");
  return configs::parse_text(t + peft, "finetune test");
}

// Logits of a fixed 2x4 batch in eval mode, contiguous.
inline Tensor fixed_batch_logits(models::CausalLM& m) {
  const Tensor ids = Tensor::from_vector<int64_t>({3, 70, 101, 32, 9, 200, 44, 12}, {2, 4});
  autograd::NoGradGuard ng;
  m.eval();
  return m.forward(ids).contiguous();
}

// Every tensor dataset of two checkpoint files must be present in both and equal bit for bit
// (the step, data position and RNG entries included).
// The same training curve to f32 tolerance: `steps` steps on both sides, each step's loss within
// loss_rel and its gradient norm within norm_rel (relative to `a`'s).
inline void expect_same_curve(const TrainResult& a, const TrainResult& b, size_t steps, double loss_rel = 1e-5,
                              double norm_rel = 1e-4) {
  ASSERT_EQ(a.steps.size(), steps);
  ASSERT_EQ(b.steps.size(), steps);
  for (size_t i = 0; i < steps; ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_NEAR(a.steps[i].loss, b.steps[i].loss, loss_rel * std::abs(a.steps[i].loss));
    EXPECT_NEAR(a.steps[i].grad_norm, b.steps[i].grad_norm, norm_rel * a.steps[i].grad_norm);
  }
}

inline void expect_same_tensors(const std::string& a_path, const std::string& b_path) {
  H5Reader a(a_path), b(b_path);
  std::vector<std::string> names = a.list_datasets("/");
  ASSERT_EQ(names, b.list_datasets("/")) << a_path << " vs " << b_path;
  int compared = 0;
  for (const auto& n : names) {
    if (n == "config") continue;
    Tensor x = a.read_tensor(n), y = b.read_tensor(n);
    ASSERT_EQ(x.shape(), y.shape()) << n;
    ASSERT_EQ(x.dtype(), y.dtype()) << n;
    EXPECT_EQ(0, std::memcmp(x.raw_data(), y.raw_data(), x.nbytes())) << "tensor " << n << " differs";
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

// Trains make(straight) to step `last`, and make(stopped) stopped after `stop_after` steps and
// resumed: this rank's file of the final checkpoint must be the same, bit for bit (weights or
// their shard, optimizer state, data position, RNG).
template <typename Make>
void expect_resume_bit_exact(Make make, const std::string& straight, const std::string& stopped,
                             const TrainOptions& opts, int stop_after, int last, int rank) {
  train(make(straight), opts);
  TrainOptions stop = opts;
  stop.stop_after = stop_after;
  ASSERT_EQ(train(make(stopped), stop).end_step, stop_after);
  TrainOptions resume = opts;
  resume.resume = "latest";
  ASSERT_EQ(train(make(stopped), resume).start_step, stop_after);
  expect_same_tensors(rank_file(step_dir(straight + "/checkpoints", last), rank),
                      rank_file(step_dir(stopped + "/checkpoints", last), rank));
}

}  // namespace lathe::train::test_util
