// Data parallelism through the real binary under `mpirun -np 2`: equivalence with one
// process holding the whole batch (several gradient buckets, gradient accumulation), exact
// resume, and a lost rank (dead or hung) ending the whole job with a message in bounded time.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/grad_sync.h"
#include "train/hdf5_io.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;
using test::write_file;

using test::contains;

// The tiny trainer-test config (2-layer GPT-2, grad_accum 2) with 10 KiB gradient buckets
// (the model's 13 buckets: several per layer) and the given dropout and timeout.
std::string write_dp_config(const TmpDir& tmp, int steps, double dropout, double timeout_s) {
  std::string text = train::test_util::tiny_config_text(tmp / "unused", steps);
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    if (at == std::string::npos) {
      ADD_FAILURE() << "tiny config has no " << from;
      return;
    }
    text.replace(at, from.size(), to);
  };
  char d[32];
  std::snprintf(d, sizeof d, "dropout: %g", dropout);
  replace("dropout: 0.1", d);
  replace("checkpoint { interval: 4 ", "checkpoint { interval: 3 ");
  replace("parallel { threads_per_rank: 1 }",
          "parallel { threads_per_rank: 1 bucket_mb: 0.01 collective_timeout_s: " + std::to_string(timeout_s) + " }");
  const std::string path = tmp / "dp.pbtxt";
  write_file(path, text);
  return path;
}

struct Timed {
  Result r;
  double seconds = 0;
};

// `mpirun -np N [-x VAR=VALUE ...] lathe <args>`, bounded by coreutils timeout so that a hang
// fails the test instead of blocking it.
Timed run_mpi(int np, const std::string& args, const std::vector<std::string>& env = {}) {
  std::string cmd = "timeout -k 5 90 " + std::string(LATHE_MPIRUN) + " -np " + std::to_string(np) +
                    " -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1";
  for (const auto& e : env) cmd += " -x " + e;
  cmd += " " + sh_quote(LATHE_BIN) + " " + args + " 2>&1";
  const auto t0 = std::chrono::steady_clock::now();
  Timed t;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "popen failed: " << cmd;
    return t;
  }
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) t.r.out.append(buf, n);
  t.r.rc = decode_status(::pclose(p));
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

std::string rank_file(const std::string& run, int64_t step, int rank) {
  return train::rank_file(train::step_dir(run + "/checkpoints", step), rank);
}

// Every model/* tensor of two checkpoint files within rtol (atol for values near zero);
// returns how many were compared.
int expect_params_near(const std::string& a_path, const std::string& b_path, double rtol, double atol) {
  train::H5Reader a(a_path), b(b_path);
  std::vector<std::string> names = a.list_datasets("model");
  EXPECT_EQ(names, b.list_datasets("model"));
  int compared = 0;
  for (const auto& n : names) {
    auto x = a.read_tensor("model/" + n).to(DType::f64).to_vector<double>();
    auto y = b.read_tensor("model/" + n).to(DType::f64).to_vector<double>();
    EXPECT_EQ(x.size(), y.size()) << n;
    if (x.size() != y.size()) continue;
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double excess = std::abs(x[i] - y[i]) - (atol + rtol * std::abs(x[i]));
      if (excess > worst) worst = excess, at = i;
    }
    EXPECT_EQ(worst, 0.0) << "model/" << n << " element " << at << ": " << x[at] << " vs " << y[at];
    ++compared;
  }
  return compared;
}

// 2 ranks x micro-batch 4 read the windows 1 rank x micro-batch 8 reads; the bucketed mean over
// ranks equals the one-process gradient of the whole batch (packed LM data: every row has T
// targets), with grad_accum 2 on both sides, so losses and final weights agree to f32
// rounding, and the two ranks' replicas stay bit-identical.
TEST(CliDataParallel, TwoRanksWithManyBucketsMatchOneRankWithTheWholeBatch) {
  TmpDir tmp;
  const std::string cfg = write_dp_config(tmp, 6, 0.0, 60);
  const std::string one = tmp / "one", two = tmp / "two";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one) + " --set train.micro_batch=8");
  ASSERT_EQ(r1.rc, 0) << r1.out;
  Timed r2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two), {"LATHE_DP_STATS=1"});
  ASSERT_EQ(r2.r.rc, 0) << r2.r.out;
  // The reducer really ran with several buckets, started during backward.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r2.r.out, m, std::regex("rank 0: 6 syncs of ([0-9]+) buckets \\(([0-9]+) started")))
      << r2.r.out;
  EXPECT_GE(std::stoi(m[1]), 5);
  EXPECT_GT(std::stoi(m[2]), 0);

  std::map<int64_t, double> a = metrics_losses(one + "/metrics.jsonl"), b = metrics_losses(two + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(loss, b[step], 2e-6 * loss) << "step " << step;
  const std::string f1 = rank_file(one, 6, 0);
  EXPECT_GT(expect_params_near(f1, rank_file(two, 6, 0), 1e-4, 2e-6), 10);
  // Replicas: rank 1's weights equal rank 0's bit for bit.
  EXPECT_GT(expect_params_near(rank_file(two, 6, 0), rank_file(two, 6, 1), 0, 0), 10);
}

// Stopped at step 3 (--steps) and resumed under mpirun -np 2: the loss curve and both ranks'
// final checkpoints (weights, AdamW moments, data position, dropout RNG) are bit-identical to
// an uninterrupted 2-rank run. Dropout is on, so each rank's RNG must be restored.
TEST(CliDataParallel, ResumeUnderMpirunIsBitwiseIdentical) {
  TmpDir tmp;
  const std::string cfg = write_dp_config(tmp, 7, 0.1, 60);
  const std::string straight = tmp / "straight", resumed = tmp / "resumed";
  Timed s = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(straight));
  ASSERT_EQ(s.r.rc, 0) << s.r.out;
  Timed p1 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + " --steps 4");
  ASSERT_EQ(p1.r.rc, 0) << p1.r.out;
  ASSERT_EQ(train::latest_complete_step(resumed + "/checkpoints"), std::optional<int64_t>(4));
  Timed p2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + " --resume");
  ASSERT_EQ(p2.r.rc, 0) << p2.r.out;
  EXPECT_TRUE(contains(p2.r.out, "resuming from")) << p2.r.out;

  std::map<int64_t, double> a = metrics_losses(straight + "/metrics.jsonl"),
                            b = metrics_losses(resumed + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 7u);
  EXPECT_EQ(a, b);  // exact doubles
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    train::test_util::expect_same_tensors(rank_file(straight, 7, rank), rank_file(resumed, 7, rank));
  }
  // Each rank drew its dropout masks from its own stream, keyed by (seed, rank), and its
  // checkpoint file keeps that stream.
  const auto dropout_seed = [&](int rank) {
    return static_cast<uint64_t>(
        train::read_i64(train::H5Reader(rank_file(straight, 7, rank)), "state/rng_dropout_seed"));
  };
  EXPECT_NE(dropout_seed(0), dropout_seed(1));
  EXPECT_EQ(dropout_seed(1), train::rank_dropout_seed(dropout_seed(0), 1));
}

// optimizer.layerwise under mpirun -np 2 (train/layerwise.h): each parameter is stepped once
// the bucket holding it has been all-reduced, mostly during backward, from the same
// token-weighted mean the ordinary step reads, so losses and both ranks' final checkpoints
// (weights, AdamW moments and steps, RNG) equal the ordinary 2-rank run's bit for bit. 10 KiB
// buckets (13 of them), grad_accum 3, dropout on.
TEST(CliDataParallel, LayerwiseUpdatesEqualTheOrdinaryStepUnderMpirun) {
  TmpDir tmp;
  const std::string cfg = write_dp_config(tmp, 5, 0.1, 60);
  const std::string ord = tmp / "ordinary", lw = tmp / "layerwise";
  const std::string common = " --set train.grad_clip=0 --set train.grad_accum=3";
  Timed a = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(ord) + common);
  ASSERT_EQ(a.r.rc, 0) << a.r.out;
  Timed b = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(lw) + common +
                           " --set optimizer.layerwise=true", {"LATHE_DP_STATS=1"});
  ASSERT_EQ(b.r.rc, 0) << b.r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(b.r.out, m, std::regex("rank 0: 5 syncs of ([0-9]+) buckets \\(([0-9]+) started")))
      << b.r.out;
  EXPECT_GE(std::stoi(m[1]), 5);
  EXPECT_GT(std::stoi(m[2]), 0);  // buckets started during backward
  // The layer-wise path ran: every parameter tensor (as many as the checkpoint's model/ group
  // holds) was stepped from its reduced bucket at each of the 5 steps, some during backward.
  ASSERT_TRUE(std::regex_search(
      b.r.out, m, std::regex("layer-wise: ([0-9]+) parameter updates from reduced buckets \\(([0-9]+) during backward")))
      << b.r.out;
  const int updates = std::stoi(m[1]), early = std::stoi(m[2]);
  const size_t n_params = train::H5Reader(rank_file(lw, 5, 0)).list_datasets("model").size();
  EXPECT_GT(n_params, 10u);
  EXPECT_EQ(updates, 5 * static_cast<int>(n_params));
  EXPECT_GT(early, 0);
  std::map<int64_t, double> la = metrics_losses(ord + "/metrics.jsonl"), lb = metrics_losses(lw + "/metrics.jsonl");
  ASSERT_EQ(la.size(), 5u);
  EXPECT_EQ(la, lb);  // exact doubles
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    train::test_util::expect_same_tensors(rank_file(ord, 5, rank), rank_file(lw, 5, rank));
  }
}

// Prompt-masked instruction data: the ranks' micro-batches count different numbers of response
// tokens. Token-weighted averaging (train/grad_sync.h) makes 2 ranks x micro-batch 4 the
// gradient of the global batch's token mean, so losses (the global token mean) and final
// weights equal one rank with micro-batch 8 to f32 rounding (grad_accum 2 on both sides).
TEST(CliDataParallel, TwoRanksMatchOneRankOnMaskedInstructionData) {
  TmpDir tmp;
  std::string records;
  for (int i = 0; i < 80; ++i) {
    const int a = i % 7, b = (5 * i) % 13;
    records += "{\"prompt\": \"What is " + std::to_string(a) + " + " + std::to_string(b) + std::string(i % 4, '?') +
               "\", \"response\": \"" + std::string(i % 5 == 0 ? "Well, " : "") + std::to_string(a) + " + " +
               std::to_string(b) + " = " + std::to_string(a + b) + std::string(3 * (i % 3), '!') + "\"}\n";
  }
  write_file(tmp / "qa.jsonl", records);
  const std::string cfg = tmp / "instr.pbtxt";
  write_file(cfg, "name: \"instr\"\n"
                  "model { arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 64 dropout: 0 }\n"
                  "data { source: JSONL path: \"" + tmp / "qa.jsonl" +
                      "\" format: PROMPT_RESPONSE tokenizer: \"byte\" val_fraction: 0.1 }\n"
                  "optimizer { type: SGD lr: 0.5 }\n"  // updates linear in the gradient: rounding stays rounding
                  "train { steps: 5 micro_batch: 4 grad_accum: 2 seq_len: 64 eval_interval: 0 eval_batches: 1 "
                  "log_interval: 1 }\n"
                  "checkpoint { interval: 5 keep_last: 0 }\n"
                  "logging { progress: NONE }\n"
                  "parallel { threads_per_rank: 1 bucket_mb: 0.01 collective_timeout_s: 60 }\n");
  const std::string one = tmp / "one", two = tmp / "two";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one) + " --set train.micro_batch=8");
  ASSERT_EQ(r1.rc, 0) << r1.out;
  Timed r2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two));
  ASSERT_EQ(r2.r.rc, 0) << r2.r.out;
  std::map<int64_t, double> a = metrics_losses(one + "/metrics.jsonl"), b = metrics_losses(two + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 5u);
  ASSERT_EQ(b.size(), 5u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(loss, b[step], 2e-6 * loss) << "step " << step;
  EXPECT_GT(expect_params_near(rank_file(one, 5, 0), rank_file(two, 5, 0), 1e-4, 2e-6), 10);
  EXPECT_GT(expect_params_near(rank_file(two, 5, 0), rank_file(two, 5, 1), 0, 0), 10);
}

// Rank 1 exits abruptly at step 3 (test-only LATHE_TEST_DIE_AT_STEP): the job ends non-zero,
// well within the collective timeout, and the output names the lost rank.
TEST(CliDataParallel, RankThatDiesEndsTheJob) {
  TmpDir tmp;
  const double timeout = 10;
  const std::string cfg = write_dp_config(tmp, 6, 0.0, timeout);
  Timed t = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "run"),
                    {"LATHE_TEST_DIE_AT_STEP=3", "LATHE_TEST_DIE_RANK=1"});
  EXPECT_NE(t.r.rc, 0) << t.r.out;
  EXPECT_NE(t.r.rc, 124) << "killed by the test's own 90 s bound: the job hung\n" << t.r.out;
  EXPECT_LT(t.seconds, timeout + 15) << t.r.out;
  EXPECT_TRUE(contains(t.r.out, "lathe: rank 1: LATHE_TEST_DIE_AT_STEP=3")) << t.r.out;
  // Open MPI's report of the lost process, or lathe's timeout on the survivor.
  EXPECT_TRUE(std::regex_search(t.r.out, std::regex("exited with non-zero status|exiting improperly|"
                                                    "lathe: rank 0: [a-z_]+ #[0-9]+ did not complete within")))
      << t.r.out;
}

// Rank 1 never arrives at step 3's gradient all-reduce (LATHE_TEST_HANG_AT_STEP): rank 0's
// wait expires after parallel.collective_timeout_s and aborts the whole job (exit 70) with a
// message naming its rank, the collective and the rank that stopped answering.
TEST(CliDataParallel, HungRankTimesOutWithRankAndOperation) {
  TmpDir tmp;
  const double timeout = 3;
  const std::string cfg = write_dp_config(tmp, 6, 0.0, timeout);
  Timed t = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "run"),
                    {"LATHE_TEST_HANG_AT_STEP=3"});
  EXPECT_EQ(t.r.rc, 70) << t.r.out;  // parallel::kCommTimeoutExitCode, as the README lists
  EXPECT_TRUE(contains(t.r.out, "lathe: rank 1: LATHE_TEST_HANG_AT_STEP=3: hanging")) << t.r.out;
  EXPECT_TRUE(std::regex_search(
      t.r.out, std::regex("lathe: rank 0: all_reduce #[0-9]+ did not complete within 3 s \\(a peer rank may have died\\); "
                          "rank\\(s\\) not answering: 1\n")))
      << t.r.out;
  EXPECT_GE(t.seconds, timeout) << t.r.out;
  EXPECT_LT(t.seconds, timeout + 20) << t.r.out;
}

}  // namespace
}  // namespace lathe::cli_test

namespace lathe::cli_test {
namespace {

// Stopped at step 4 and resumed under mpirun -np 2 with the optimizer `opt` sets: the losses and
// both ranks' checkpoints equal an uninterrupted 2-rank run's bit for bit, and the replicas
// stay identical (every rank updates from the same all-reduced gradient).
// `must_hold`: optimizer-state names (suffixes after the parameter name) the checkpoint must
// contain, so the test covers the state it is about.
void expect_mpi_resume_exact(const std::string& opt, const std::vector<std::string>& must_hold = {}) {
  TmpDir tmp;
  const std::string cfg = write_dp_config(tmp, 7, 0.0, 60);
  const std::string straight = tmp / "straight", resumed = tmp / "resumed";
  Timed s = run_mpi(2, "train " + sh_quote(cfg) + opt + " --set run_dir=" + sh_quote(straight));
  ASSERT_EQ(s.r.rc, 0) << s.r.out;
  Timed p1 = run_mpi(2, "train " + sh_quote(cfg) + opt + " --set run_dir=" + sh_quote(resumed) + " --steps 4");
  ASSERT_EQ(p1.r.rc, 0) << p1.r.out;
  Timed p2 = run_mpi(2, "train " + sh_quote(cfg) + opt + " --set run_dir=" + sh_quote(resumed) + " --resume");
  ASSERT_EQ(p2.r.rc, 0) << p2.r.out;
  EXPECT_EQ(metrics_losses(straight + "/metrics.jsonl"), metrics_losses(resumed + "/metrics.jsonl"));
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    train::test_util::expect_same_tensors(rank_file(straight, 7, rank), rank_file(resumed, 7, rank));
  }
  EXPECT_GT(expect_params_near(rank_file(straight, 7, 0), rank_file(straight, 7, 1), 0, 0), 10);
  const std::vector<std::string> names = train::H5Reader(rank_file(straight, 7, 0)).list_datasets("optim");
  for (const std::string& want : must_hold)
    EXPECT_TRUE(std::any_of(names.begin(), names.end(),
                            [&](const std::string& n) { return n.size() > want.size() && n.substr(n.size() - want.size()) == want; }))
        << "no optimizer state '" << want << "' in the checkpoint";
}

// Fira with the randomized refresh (basis every 3 updates): bases, projected moments and
// scaling_grad resume exactly; each rank refreshes from the same all-reduced gradient.
TEST(CliDataParallel, FiraRandomizedResumeUnderMpirunIsBitwiseIdentical) {
  expect_mpi_resume_exact(" --set optimizer.type=FIRA --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3"
                          " --set optimizer.galore.svd=RANDOMIZED");
}

// Natural GaLore (history 3, so the ring buffer wraps on both sides of the stop) with 8-bit
// moments: the gradient history, the uint8 codes and absmax of the 8-bit AdamW state (the
// unprojected head) and the bases resume exactly.
TEST(CliDataParallel, NaturalGaLoreEightBitResumeUnderMpirunIsBitwiseIdentical) {
  expect_mpi_resume_exact(" --set optimizer.type=GALORE --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3"
                          " --set optimizer.galore.natural=true --set optimizer.galore.natural_history=3"
                          " --set optimizer.state_bits=8 --set optimizer.eight_bit.min_8bit_size=256",
                          {"/natural_history", "/exp_avg_q8", "/exp_avg_sq_absmax", "/ortho_right"});
}

}  // namespace
}  // namespace lathe::cli_test
