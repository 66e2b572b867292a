// Token-weighted loss normalisation and per-rank dropout streams (train/grad_sync.h): the
// factors on small cases, the global token mean on prompt-masked instruction data (grad_accum 2
// of micro-batch 4 equals micro-batch 8, where the equal-weight mean of micro-batch means does
// not), and dropout masks that differ between ranks. The two-rank runs are in
// tests/cli/test_cli_dp.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "configs/config.h"
#include "models/model.h"
#include "parallel/single_process_communicator.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/batches.h"
#include "train/checkpoint_dir.h"
#include "train/grad_sync.h"
#include "train/hdf5_io.h"
#include "train/run_setup.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using test::TmpDir;
using test::write_file;

TEST(TokenWeights, CountTargetsSkipsTheIgnoreIndex) {
  Tensor t = Tensor::from_vector<int64_t>({5, -100, 7, -100, -100, 0}, {2, 3});
  EXPECT_EQ(count_targets(t), 3);
  EXPECT_EQ(count_targets(t.to(DType::i32)), 3);
  EXPECT_EQ(count_targets(t, 7), 5);
}

TEST(TokenWeights, FactorsAndGlobalMeanOnOneRank) {
  parallel::SingleProcessCommunicator one;
  TokenWeights w = token_weights({3, 5}, one);
  EXPECT_EQ(w.global_tokens, 8);
  ASSERT_EQ(w.loss_scale.size(), 2u);
  EXPECT_DOUBLE_EQ(w.loss_scale[0], 3.0 / 8.0);
  EXPECT_DOUBLE_EQ(w.loss_scale[1], 5.0 / 8.0);
  // The token mean, not the mean of the two means (2.5).
  EXPECT_DOUBLE_EQ(w.global_mean_loss({1.0, 4.0}, one), (3.0 * 1.0 + 5.0 * 4.0) / 8.0);

  // Equal counts: exactly 1 / micro-batches, the bits of the old scaling.
  EXPECT_EQ(token_weights({64, 64}, one).loss_scale, std::vector<double>(2, 1.0 / 2));
  EXPECT_EQ(token_weights({64, 64, 64}, one).loss_scale, std::vector<double>(3, 1.0 / 3));
  EXPECT_EQ(token_weights({2048}, one).loss_scale, std::vector<double>(1, 1.0));

  // A micro-batch without tokens weighs nothing; a step without any token has loss 0.
  TokenWeights z = token_weights({0, 4}, one);
  EXPECT_EQ(z.loss_scale, (std::vector<double>{0.0, 1.0}));
  EXPECT_DOUBLE_EQ(z.global_mean_loss({0.0, 2.5}, one), 2.5);
  TokenWeights none = token_weights({0, 0}, one);
  EXPECT_EQ(none.loss_scale, (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(none.global_mean_loss({0.0, 0.0}, one), 0.0);
}

TEST(RankDropout, SeedsAreDistinctPerRankAndRankZeroKeepsTheModels) {
  const uint64_t seed = 1234567;
  EXPECT_EQ(rank_dropout_seed(seed, 0), seed);
  std::set<uint64_t> seen;
  for (int r = 0; r < 64; ++r) seen.insert(rank_dropout_seed(seed, r));
  EXPECT_EQ(seen.size(), 64u);
}

// Identical model, identical data: ranks 0 and 1 draw different masks (different losses);
// the same rank's stream repeats bit for bit.
TEST(RankDropout, MasksDifferBetweenRanksOnTheSameData) {
  RunConfig cfg = test_util::tiny_config("unused");
  configs::resolve(cfg);
  models::ModelSpec spec = model_spec(cfg.model());
  ASSERT_GT(spec.dropout, 0.0);
  std::vector<int64_t> v;
  for (int64_t i = 0; i < 32; ++i) v.push_back((7 * i + 3) % spec.vocab_size);
  Tensor ids = Tensor::from_vector<int64_t>(v, {2, 16});
  auto loss_of_rank = [&](int rank) {
    auto m = models::build_model(spec, 9);
    m->train(true);
    Generator& d = m->dropout_generator();
    d.set_state(rank_dropout_seed(d.seed(), rank), d.offset());
    autograd::NoGradGuard ng;
    return m->loss(ids, ids).item();
  };
  const double l0 = loss_of_rank(0), l1 = loss_of_rank(1);
  EXPECT_EQ(l0, loss_of_rank(0));
  EXPECT_GT(std::abs(l0 - l1), 1e-6) << l0 << " vs " << l1;
}

// Records whose prompts and responses differ in length, so micro-batches count different
// numbers of response tokens.
std::string write_instructions(const std::string& path, int n) {
  std::string text;
  for (int i = 0; i < n; ++i) {
    const int a = i % 7, b = (5 * i) % 13;
    text += "{\"prompt\": \"What is " + std::to_string(a) + " + " + std::to_string(b) + std::string(i % 4, '?') +
            "\", \"response\": \"" + std::string(i % 5 == 0 ? "Well, " : "") + std::to_string(a) + " + " +
            std::to_string(b) + " = " + std::to_string(a + b) + std::string(3 * (i % 3), '!') + "\"}\n";
  }
  write_file(path, text);
  return path;
}

RunConfig instruction_config(const std::string& run_dir, const std::string& jsonl, int micro_batch, int grad_accum) {
  return configs::parse_text(
      "name: \"instr\"\nrun_dir: \"" + run_dir +
          "\"\n"
          "model { arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 64 dropout: 0 }\n"
          "data { source: JSONL path: \"" + jsonl + "\" format: PROMPT_RESPONSE tokenizer: \"byte\" val_fraction: 0.1 }\n"
          "optimizer { type: SGD lr: 0.5 }\n"  // updates linear in the gradient: rounding stays rounding
          "train { steps: 4 micro_batch: " + std::to_string(micro_batch) + " grad_accum: " + std::to_string(grad_accum) +
          " seq_len: 64 eval_interval: 0 eval_batches: 1 log_interval: 1 }\n"
          "checkpoint { interval: 4 keep_last: 0 }\n"
          "logging { progress: NONE }\n"
          "parallel { threads_per_rank: 1 }\n",
      "instr");
}

// grad_accum 2 x micro-batch 4 reads the 8 samples micro-batch 8 reads, in the same order.
// Token weighting makes both steps the gradient of the same token mean: equal losses every
// step (to f32 rounding) and equal weights at the end. The first micro-batches really count
// different tokens, so the equal-weight mean of the two micro-batch means is another number.
TEST(TokenWeights, AccumulatedMicroBatchesFollowTheTokenMeanOnInstructionData) {
  TmpDir tmp;
  const std::string jsonl = write_instructions(tmp / "qa.jsonl", 80);
  TrainOptions quiet;
  quiet.out = nullptr;
  const RunConfig whole = instruction_config(tmp / "whole", jsonl, 8, 1);
  const RunConfig accum = instruction_config(tmp / "accum", jsonl, 4, 2);
  TrainResult a = train(whole, quiet);
  TrainResult b = train(accum, quiet);
  ASSERT_EQ(a.steps.size(), 4u);
  ASSERT_EQ(b.steps.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(a.steps[i].loss, b.steps[i].loss, 2e-6 * a.steps[i].loss) << "step " << i + 1;

  // Step 1 by hand: the fresh model on the two micro-batches.
  RunConfig rc = accum;
  configs::resolve(rc);
  auto tok = load_run_tokenizer(rc);
  apply_tokenizer_vocab(rc, *tok);
  RunData data = load_run_data(rc, *tok);
  ASSERT_TRUE(data.instruction);
  data::LMLoaderOptions lo;
  lo.micro_batch = 4;
  lo.seed = rc.train().seed();
  lo.shuffle = rc.data().shuffle();
  TrainBatches loader(data, lo);
  auto model = models::build_model(model_spec(rc.model()), rc.train().seed());
  double sum = 0, mean_of_means = 0;
  int64_t tokens = 0;
  std::vector<int64_t> counts;
  for (int m = 0; m < 2; ++m) {
    data::LMBatch batch = loader.next();
    autograd::NoGradGuard ng;
    const double l = model->loss(batch.ids, batch.targets).item();
    const int64_t n = count_targets(batch.targets);
    counts.push_back(n);
    sum += l * static_cast<double>(n);
    tokens += n;
    mean_of_means += l / 2;
  }
  ASSERT_NE(counts[0], counts[1]) << "the test data must give the micro-batches different token counts";
  const double token_mean = sum / static_cast<double>(tokens);
  // (A fresh model's token losses are all near log V, so the two means differ little, but
  // by far more than the tolerance below.)
  EXPECT_GT(std::abs(token_mean - mean_of_means), 20 * 2e-6 * token_mean) << token_mean << " vs " << mean_of_means;
  EXPECT_NEAR(a.steps[0].loss, token_mean, 2e-6 * token_mean);
  EXPECT_NEAR(b.steps[0].loss, token_mean, 2e-6 * token_mean);

  // The updates agree too: the weights after 4 steps.
  H5Reader fa(rank_file(step_dir(tmp / "whole/checkpoints", 4), 0));
  H5Reader fb(rank_file(step_dir(tmp / "accum/checkpoints", 4), 0));
  int compared = 0;
  for (const auto& n : fa.list_datasets("model")) {
    auto x = fa.read_tensor("model/" + n).to(DType::f64).to_vector<double>();
    auto y = fb.read_tensor("model/" + n).to(DType::f64).to_vector<double>();
    ASSERT_EQ(x.size(), y.size()) << n;
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(x[i], y[i], 2e-6 + 1e-4 * std::abs(x[i])) << "model/" << n << " element " << i;
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

}  // namespace
}  // namespace lathe::train
