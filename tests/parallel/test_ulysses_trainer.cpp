// Ulysses and ring attention through the whole trainer (parallel.sequence_parallel,
// sequence_parallel_mode: ULYSSES or RING) under mpirun, in the test_zero binary: the job's
// ranks as sp-rank groups train the same global batches as one process (losses and final
// weights to f32 tolerance), with a sequence length no degree divides; and the config errors.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/single_process_communicator.h"
#include "parallel/tensor_parallel.h"
#include "tests/train/trainer_test_util.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

namespace fs = std::filesystem;

// Each rank's own directory (the one-process reference runs on every rank).
std::string rank_dir(const std::string& tag) {
  Tensor pid = Tensor::from_vector<int64_t>({static_cast<int64_t>(::getpid())}, {1});
  parallel::world()->broadcast(pid, 0);
  return (fs::temp_directory_path() / ("lathe_sp_" + tag + "_" + std::to_string(pid.to_vector<int64_t>()[0]))).string();
}

// Trainer options without console output, over `comm`.
TrainOptions quiet(std::shared_ptr<parallel::Communicator> comm) {
  TrainOptions o;
  o.out = nullptr;
  o.comm = std::move(comm);
  return o;
}

// A 4-head GPT-2 or Llama (GQA 2 KV heads), no dropout, seq_len 15 (no degree divides it).
// `arch` may end in ":RING" for ring attention instead of Ulysses, ":ZIGZAG" for its zig-zag chunks.
RunConfig sp_config(const std::string& run_dir, std::string arch, int sp, int micro_batch) {
  std::string mode = "ULYSSES";
  if (const size_t colon = arch.find(':'); colon != std::string::npos) {
    mode = arch.substr(colon + 1);
    arch = arch.substr(0, colon);
  }
  if (mode == "ZIGZAG") mode = sp > 1 ? "RING ring_zigzag: true" : "RING";
  std::string t = test_util::tiny_config_text(run_dir, 3);
  const std::string model = arch == "GPT2"
                                ? "model { arch: GPT2 n_layer: 2 n_head: 4 d_model: 32 max_seq_len: 32 dropout: 0 }"
                                : "model { arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32 }";
  t.replace(t.find("model {"), t.find("}\n", t.find("model {")) + 1 - t.find("model {"), model);
  t.replace(t.find("micro_batch: 4"), 14, "micro_batch: " + std::to_string(micro_batch) + " seq_len: 15");
  t.replace(t.find("eval_interval: 4"), 16, "eval_interval: 3");
  t.replace(t.find("checkpoint { interval: 4"), 24, "checkpoint { interval: 0");
  t.replace(t.find("parallel { threads_per_rank: 1"), 30,
            "parallel { threads_per_rank: 1 collective_timeout_s: 30 sequence_parallel: " + std::to_string(sp) +
                " sequence_parallel_mode: " + mode);
  return configs::parse_text(t, "ulysses trainer");
}

// The split run equals the one-process run: losses and norms of the first 3 steps, the last
// validation loss, and every parameter of `split` against want(name, the one-process
// parameter): the parameter itself, or the shard this rank holds.
template <typename Want>
void expect_same_run(Trainer& split, const TrainResult& a, Trainer& whole, const TrainResult& b, Want want) {
  test_util::expect_same_curve(a, b, 3);
  ASSERT_FALSE(a.evals.empty());
  EXPECT_NEAR(a.evals.back().result.loss, b.evals.back().result.loss, 1e-5 * b.evals.back().result.loss);
  double worst = 0;
  int compared = 0;
  for (const auto& [name, p] : split.model().named_parameters()) {
    const Tensor w = want(name, whole.model().parameter(name));
    ASSERT_EQ(w.shape(), p.shape()) << name;
    const auto x = p.to(DType::f64).contiguous().template to_vector<double>();
    const auto y = w.to(DType::f64).contiguous().template to_vector<double>();
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
    ++compared;
  }
  EXPECT_GT(compared, 10);
  EXPECT_LT(worst, 2e-5);
}

class UlyssesTrainer : public ::testing::TestWithParam<std::string> {};

TEST_P(UlyssesTrainer, SameLossesAndWeightsAsOneProcess) {
  auto world = parallel::world();
  const int n = world->size(), r = world->rank();
  const std::vector<int> degrees = n == 2 ? std::vector<int>{2} : std::vector<int>{2, 4};
  for (int sp : degrees) {
    SCOPED_TRACE("sequence_parallel " + std::to_string(sp));
    const int dp = n / sp;
    std::string tag = GetParam();
    tag.erase(std::remove(tag.begin(), tag.end(), ':'), tag.end());
    const std::string root = rank_dir(tag + std::to_string(sp));
    Trainer split(sp_config(root, GetParam(), sp, 2), quiet(world));
    const TrainResult a = split.run();
    // The reference: one process with the whole global batch (dp groups x 2 rows).
    // Evaluation shards over every rank (2 rows each, 2 batches): the same rows in 2 * sp
    // batches of 2 * dp.
    RunConfig ref = sp_config(root + "_one_" + std::to_string(r), GetParam(), 1, 2 * dp);
    ref.mutable_train()->set_eval_batches(2 * sp);
    Trainer whole(ref, quiet(std::make_shared<parallel::SingleProcessCommunicator>()));
    const TrainResult b = whole.run();
    // Evaluation ran on whole sequences with plain attention: the same validation loss.
    expect_same_run(split, a, whole, b, [](const std::string&, const Tensor& w) { return w; });
    world->barrier();
    std::error_code ec;
    fs::remove_all(root + "_one_" + std::to_string(r), ec);
    if (r == 0) fs::remove_all(root, ec);
  }
}

// Sequence parallelism with its own group and tensor parallelism (np 4: dp1 x tp2 x sp2): each
// TP rank's heads run the sequence-parallel attention core (`arch` as sp_config's) over its
// sequence-parallel group, and the gradients are averaged over the replicas of each TP shard.
// The run equals one process on the same batches: losses, norms, evaluation, and every rank's
// weight shard as the slice of the one-process weights.
void expect_tp_sp_equals_one_process(const std::string& arch, int n_head = 0, int n_kv_head = 0) {
  auto world = parallel::world();
  const int r = world->rank();
  SCOPED_TRACE(arch + " n_head " + std::to_string(n_head));
  // Other head counts (0: sp_config's) on both runs.
  auto heads = [&](RunConfig c) {
    if (n_head > 0) c.mutable_model()->set_n_head(n_head);
    if (n_kv_head > 0) c.mutable_model()->set_n_kv_head(n_kv_head);
    return c;
  };
  std::string tag = arch + std::to_string(n_head);
  tag.erase(std::remove(tag.begin(), tag.end(), ':'), tag.end());
  const std::string root = rank_dir("tp" + tag);
  RunConfig cfg = heads(sp_config(root, arch, 2, 2));
  cfg.mutable_parallel()->set_tensor_parallel(2);
  cfg.mutable_parallel()->set_vocab_pad_multiple(100);
  Trainer split(cfg, quiet(world));
  const TrainResult a = split.run();
  RunConfig ref = heads(sp_config(root + "_one_" + std::to_string(r), arch, 1, 2));
  ref.mutable_train()->set_eval_batches(4);  // 2 batches on each of the 2 replicas of a shard
  Trainer whole(ref, quiet(std::make_shared<parallel::SingleProcessCommunicator>()));
  const TrainResult b = whole.run();
  expect_same_run(split, a, whole, b, [&](const std::string& name, const Tensor& w) {
    return parallel::slice_shard(name, w, whole.model().spec(), 2, r % 2, 100);
  });
  world->barrier();
  std::error_code ec;
  fs::remove_all(root + "_one_" + std::to_string(r), ec);
  if (r == 0) fs::remove_all(root, ec);
}

// Ring attention with TP, contiguous and zig-zag.
TEST(RingTensorParallel, SameLossesAndWeightsAsOneProcess) {
  if (parallel::world()->size() != 4) GTEST_SKIP() << "tp 2 x sp 2 needs 4 ranks";
  for (const std::string arch : {"GPT2:RING", "LLAMA:ZIGZAG"}) expect_tp_sp_equals_one_process(arch);
}

// Ulysses with TP: the all-to-all redistributes each TP rank's 2 query heads, 1 per rank. GPT-2's
// 2 local KV heads split like them; Llama's (GQA, 2 KV heads) 1 local KV head is replicated
// over the 2 sequence-parallel ranks, its replicas' gradients summed back. Llama with 8 query
// and 4 KV heads: 2 local KV heads split over the 2 ranks (GQA groups of 2 query heads).
TEST(UlyssesTensorParallel, SameLossesAndWeightsAsOneProcess) {
  if (parallel::world()->size() != 4) GTEST_SKIP() << "tp 2 x sp 2 needs 4 ranks";
  for (const std::string arch : {"GPT2", "LLAMA"}) expect_tp_sp_equals_one_process(arch);
  expect_tp_sp_equals_one_process("LLAMA", 8, 4);
}

INSTANTIATE_TEST_SUITE_P(Models, UlyssesTrainer, ::testing::Values("GPT2", "LLAMA", "GPT2:RING", "LLAMA:RING", "GPT2:ZIGZAG", "LLAMA:ZIGZAG"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           if (n.find(':') != std::string::npos) n = n.substr(n.find(':') + 1) + n.substr(0, n.find(':'));
                           return n;
                         });

TEST(UlyssesTrainerConfig, Errors) {
  auto world = parallel::world();
  const std::string root = rank_dir("errors");
  const TrainOptions o = quiet(world);
  auto expect_config_error = [&](RunConfig cfg, const std::string& field) {
    try {
      train(cfg, o);
      ADD_FAILURE() << "accepted; expected an error naming " << field;
    } catch (const configs::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  // MEGATRON shards the sequence inside the tensor-parallel group: sequence_parallel 2 with
  // tensor_parallel 1 is not a layout.
  RunConfig megatron = sp_config(root, "GPT2", 2, 2);
  megatron.mutable_parallel()->set_sequence_parallel_mode(ParallelConfig::MEGATRON);
  megatron.mutable_train()->set_seq_len(16);
  expect_config_error(megatron, "parallel.sequence_parallel");
  // Ulysses with tensor parallelism splits each TP rank's heads: 2 heads / tp 2 leave 1, which
  // does not split over sp 2.
  RunConfig with_tp = sp_config(root, "GPT2", 2, 2);
  with_tp.mutable_parallel()->set_tensor_parallel(2);
  with_tp.mutable_model()->set_n_head(2);
  expect_config_error(with_tp, "parallel.sequence_parallel: Ulysses splits the query heads over sequence_parallel (2), "
                               "but model.n_head = 2 gives 1 per tensor-parallel rank");
  RunConfig heads = sp_config(root, "GPT2", 2, 2);
  heads.mutable_model()->set_n_head(1);
  expect_config_error(heads, "parallel.sequence_parallel");
  if (world->size() == 4) expect_config_error(sp_config(root, "GPT2", 3, 2), "parallel.sequence_parallel");
  // Ring attention: its group must divide the world; zig-zag chunks are for ring attention.
  RunConfig zigzag_ulysses = sp_config(root, "GPT2", 2, 2);
  zigzag_ulysses.mutable_parallel()->set_ring_zigzag(true);
  expect_config_error(zigzag_ulysses, "parallel.ring_zigzag: is for ring attention");
  if (world->size() == 4) expect_config_error(sp_config(root, "GPT2:RING", 3, 2), "parallel.sequence_parallel: the world of 4");
  world->barrier();
  std::error_code ec;
  if (world->rank() == 0) fs::remove_all(root, ec);
}

}  // namespace
}  // namespace lathe::train
