// Tensor parallelism and Ladder residual through the real binary under mpirun: TP=2 (dropout
// and gradient clipping on, a vocabulary padded past the tokenizer's) and dp2 x tp2 equal one
// process on the same global batch; ladder TP=2 equals ladder TP=1; a ladder TP run resumes
// bit for bit; a resume with another layout is refused naming both; wrong layouts are config
// errors (exit 2) before any work; a rank that hangs ends the job naming the rank and the
// collective; a converted standard checkpoint gives the ladder model's first loss.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <regex>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "models/model.h"
#include "parallel/tensor_parallel.h"
#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/batches.h"
#include "train/hdf5_io.h"
#include "train/run_plan.h"
#include "train/trainer.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;
using test::write_file;

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// The tiny trainer config with 4 heads (TP up to 4), clipping, and the given dropout.
std::string write_tp_config(const TmpDir& tmp, int steps, double dropout, double timeout_s = 60) {
  std::string text = train::test_util::tiny_config_text(tmp / "unused", steps);
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
  };
  char d[64];
  std::snprintf(d, sizeof d, "n_head: 4 d_model: 32 max_seq_len: 32 dropout: %g", dropout);
  replace("n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1", d);
  replace("log_interval: 4 }", "log_interval: 4 grad_clip: 0.5 }");
  replace("checkpoint { interval: 4 ", "checkpoint { interval: 3 ");
  replace("parallel { threads_per_rank: 1 }",
          "parallel { threads_per_rank: 1 collective_timeout_s: " + std::to_string(timeout_s) + " }");
  const std::string path = tmp / "tp.pbtxt";
  write_file(path, text);
  return path;
}

struct Timed {
  Result r;
  double seconds = 0;
};

Timed run_mpi(int np, const std::string& args, const std::vector<std::string>& env = {}) {
  std::string cmd = "timeout -k 5 120 " + std::string(LATHE_MPIRUN) + " -np " + std::to_string(np) +
                    " -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1";
  for (const auto& e : env) cmd += " -x " + e;
  cmd += " " + sh_quote(LATHE_BIN) + " " + args + " 2>&1";
  const auto t0 = std::chrono::steady_clock::now();
  Timed t;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return t;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) t.r.out.append(buf, n);
  t.r.rc = decode_status(::pclose(p));
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

std::string rank_file(const std::string& run, int64_t step, int rank) {
  return train::rank_file(train::step_dir(run + "/checkpoints", step), rank);
}

void expect_losses_near(const std::string& a_run, const std::string& b_run, size_t steps, double rtol) {
  std::map<int64_t, double> a = metrics_losses(a_run + "/metrics.jsonl"), b = metrics_losses(b_run + "/metrics.jsonl");
  ASSERT_EQ(a.size(), steps);
  ASSERT_EQ(b.size(), steps);
  for (const auto& [step, loss] : a) EXPECT_NEAR(loss, b[step], rtol * loss) << "step " << step;
}

// The TP ranks' shards of every model tensor (files of ranks first..first+tp-1), gathered,
// against the one-process file. atol 1e-5: AdamW normalises near-zero gradients, so f32
// summation-order differences there move a weight by up to ~lr * 1e-3.
void expect_gathered_weights_near(const std::string& one_file, const std::vector<std::string>& shard_files,
                                  double rtol, double atol) {
  models::ModelSpec spec;
  spec.vocab_size = 256;
  train::H5Reader one(one_file);
  std::vector<std::unique_ptr<train::H5Reader>> shards;
  for (const auto& f : shard_files) shards.push_back(std::make_unique<train::H5Reader>(f));
  int compared = 0;
  for (const auto& n : one.list_datasets("model")) {
    std::vector<Tensor> parts;
    for (auto& s : shards) parts.push_back(s->read_tensor("model/" + n));
    Tensor full = parallel::gather_shards(n, parts, spec);
    auto x = one.read_tensor("model/" + n).to(DType::f64).to_vector<double>();
    auto y = full.to(DType::f64).to_vector<double>();
    ASSERT_EQ(x.size(), y.size()) << n;
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]) - (atol + rtol * std::abs(x[i])));
    EXPECT_LE(worst, 0.0) << "model/" << n;
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

// Dropout 0.1: the TP ranks draw the masks one process draws. The vocabulary (256 byte ids) is
// padded to 400 rows (vocab_pad_multiple 100 x 2): rank 1 holds 56 real and 144 padding rows.
TEST(CliTensorParallel, Tp2EqualsOneProcessWithDropoutClippingAndPaddedVocab) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 6, 0.1);
  const std::string one = tmp / "one", two = tmp / "two";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one));
  ASSERT_EQ(r1.rc, 0) << r1.out;
  Timed r2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two) +
                            " --set parallel.tensor_parallel=2 --set parallel.vocab_pad_multiple=100");
  ASSERT_EQ(r2.r.rc, 0) << r2.r.out;
  EXPECT_TRUE(contains(r2.r.out, "(dp1 x tp2 x sp1)")) << r2.r.out;
  expect_losses_near(one, two, 6, 2e-6);
  expect_gathered_weights_near(rank_file(one, 6, 0), {rank_file(two, 6, 0), rank_file(two, 6, 1)}, 1e-4, 1e-5);
  // One process reads the TP checkpoint by gathering its shards: eval gives the one-process
  // run's validation loss, export writes the full (unpadded) vocabulary.
  auto val_loss = [](const std::string& out) {
    std::smatch m;
    EXPECT_TRUE(std::regex_search(out, m, std::regex("val loss: +([0-9.]+)"))) << out;
    return m.size() > 1 ? std::stod(m[1]) : -1.0;
  };
  Result ev1 = run_lathe("eval " + sh_quote(one)), ev2 = run_lathe("eval " + sh_quote(two));
  ASSERT_EQ(ev2.rc, 0) << ev2.out;
  EXPECT_NEAR(val_loss(ev2.out), val_loss(ev1.out), 1e-5);
  Result x = run_lathe("export --checkpoint " + sh_quote(two) + " --out " + sh_quote(tmp / "exp"));
  ASSERT_EQ(x.rc, 0) << x.out;
  EXPECT_TRUE(fs::exists(tmp / "exp/model.safetensors"));
  // Rank 1's embedding shard: 200 rows, the padding rows still zero after training.
  Tensor e1 = train::H5Reader(rank_file(two, 6, 1)).read_tensor("model/embed.weight");
  ASSERT_EQ(e1.size(0), 200);
  EXPECT_EQ(kernels::reduce(kernels::ReduceOp::norm, e1.narrow(0, 56, 144).contiguous(), {}, false).item(), 0.0);
}

// Megatron-SP inside TP = 2 (norms, dropout and residual adds on sequence halves): the same
// losses and weights as one process, dropout on.
TEST(CliTensorParallel, MegatronSequenceParallelEqualsOneProcess) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 5, 0.1);
  const std::string one = tmp / "one", two = tmp / "two";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one));
  ASSERT_EQ(r1.rc, 0) << r1.out;
  Timed r2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two) +
                            " --set parallel.tensor_parallel=2 --set parallel.sequence_parallel=2");
  ASSERT_EQ(r2.r.rc, 0) << r2.r.out;
  EXPECT_TRUE(contains(r2.r.out, "(dp1 x tp2 x sp1 megatron-sp)")) << r2.r.out;
  expect_losses_near(one, two, 5, 2e-6);
  expect_gathered_weights_near(rank_file(one, 5, 0), {rank_file(two, 5, 0), rank_file(two, 5, 1)}, 1e-4, 1e-5);
}

// np 4 as dp2 x tp2 (micro-batch 4 per DP rank) against one process with micro-batch 8.
TEST(CliTensorParallel, Dp2Tp2EqualsOneProcessWithTheWholeBatch) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 5, 0.0);
  const std::string one = tmp / "one", four = tmp / "four";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one) + " --set train.micro_batch=8");
  ASSERT_EQ(r1.rc, 0) << r1.out;
  Timed r4 = run_mpi(4, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(four) +
                            " --set parallel.tensor_parallel=2");
  ASSERT_EQ(r4.r.rc, 0) << r4.r.out;
  EXPECT_TRUE(contains(r4.r.out, "(dp2 x tp2 x sp1)")) << r4.r.out;
  expect_losses_near(one, four, 5, 2e-6);
  // Ranks 0,1 form DP group 0's TP pair; ranks 2,3 hold the same shards (DP replicas).
  expect_gathered_weights_near(rank_file(one, 5, 0), {rank_file(four, 5, 0), rank_file(four, 5, 1)}, 1e-4, 1e-5);
  expect_gathered_weights_near(rank_file(one, 5, 0), {rank_file(four, 5, 2), rank_file(four, 5, 3)}, 1e-4, 1e-5);
}

// Ladder residual with GPT-2 biases: TP=2 equals TP=1 (the row-parallel biases are added once,
// their gradient summed over the TP ranks).
TEST(CliTensorParallel, LadderTp2EqualsLadderOneProcess) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 5, 0.1);
  const std::string one = tmp / "one", two = tmp / "two";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one) + " --set model.ladder_residual=true");
  ASSERT_EQ(r1.rc, 0) << r1.out;
  Timed r2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two) +
                            " --set model.ladder_residual=true --set parallel.tensor_parallel=2");
  ASSERT_EQ(r2.r.rc, 0) << r2.r.out;
  expect_losses_near(one, two, 5, 2e-6);
  expect_gathered_weights_near(rank_file(one, 5, 0), {rank_file(two, 5, 0), rank_file(two, 5, 1)}, 1e-4, 1e-5);
}

// Ladder + TP=2, stopped after step 4 and resumed: losses and both rank files bit-identical to
// an uninterrupted run. Resuming the same checkpoint as dp2 x tp1 is refused naming both.
TEST(CliTensorParallel, LadderTpResumeIsBitwiseAndAnotherLayoutIsRefused) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 7, 0.1);
  const std::string straight = tmp / "straight", resumed = tmp / "resumed";
  const std::string tp = " --set model.ladder_residual=true --set parallel.tensor_parallel=2";
  Timed s = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(straight) + tp);
  ASSERT_EQ(s.r.rc, 0) << s.r.out;
  Timed p1 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + tp + " --steps 4");
  ASSERT_EQ(p1.r.rc, 0) << p1.r.out;
  Timed bad = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) +
                             " --set model.ladder_residual=true --resume");
  EXPECT_EQ(bad.r.rc, 3) << bad.r.out;
  EXPECT_TRUE(contains(bad.r.out, "was written with the parallel layout dp1 x tp2 x sp1 (2 ranks), this run has "
                                  "dp2 x tp1 x sp1 (2 ranks)"))
      << bad.r.out;
  Timed p2 = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + tp + " --resume");
  ASSERT_EQ(p2.r.rc, 0) << p2.r.out;
  std::map<int64_t, double> a = metrics_losses(straight + "/metrics.jsonl"),
                            b = metrics_losses(resumed + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 7u);
  EXPECT_EQ(a, b);
  for (int rank = 0; rank < 2; ++rank)
    train::test_util::expect_same_tensors(rank_file(straight, 7, rank), rank_file(resumed, 7, rank));
}

TEST(CliTensorParallel, WrongLayoutsAreConfigErrorsBeforeAnyWork) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 3, 0.0);
  // World 2 is not a multiple of 4 (checked where the world is known).
  Timed w = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "w") +
                           " --set parallel.tensor_parallel=4");
  EXPECT_EQ(w.r.rc, 2) << w.r.out;
  EXPECT_TRUE(contains(w.r.out, "parallel.tensor_parallel: the world of 2 ranks is not a multiple of tensor_parallel (4)"))
      << w.r.out;
  EXPECT_FALSE(fs::exists(tmp / "w/checkpoints"));
  // Heads and MLP width (checked in validation, one process is enough).
  Result h = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "h") +
                       " --set parallel.tensor_parallel=3 --set model.d_ff=100");
  EXPECT_EQ(h.rc, 2) << h.out;
  EXPECT_TRUE(contains(h.out, "model.n_head (4) must be divisible by tensor_parallel (3)")) << h.out;
  EXPECT_TRUE(contains(h.out, "the MLP width (model.d_ff = 100) must be divisible by tensor_parallel (3)")) << h.out;
  Result kv = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "kv") +
                        " --set model.arch=LLAMA --set model.n_kv_head=1 --set parallel.tensor_parallel=2");
  EXPECT_EQ(kv.rc, 2) << kv.out;
  EXPECT_TRUE(contains(kv.out, "the key/value heads (model.n_kv_head = 1) must be divisible by tensor_parallel (2)"))
      << kv.out;
}

// Rank 1 stops at step 3; rank 0 waits in the forward's first tensor-parallel all-reduce and
// ends the job (exit 70) naming itself, the collective and rank 1.
TEST(CliTensorParallel, HungRankInATensorParallelCollectiveEndsTheJob) {
  TmpDir tmp;
  const double timeout = 3;
  const std::string cfg = write_tp_config(tmp, 6, 0.0, timeout);
  Timed t = run_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "run") +
                           " --set parallel.tensor_parallel=2",
                    {"LATHE_TEST_HANG_AT_STEP=3"});
  EXPECT_EQ(t.r.rc, 70) << t.r.out;
  EXPECT_TRUE(contains(t.r.out, "lathe: rank 1: LATHE_TEST_HANG_AT_STEP=3: hanging")) << t.r.out;
  EXPECT_TRUE(std::regex_search(
      t.r.out, std::regex("lathe: rank 0: all_reduce #[0-9]+ did not complete within 3 s \\(a peer rank may have died\\); "
                          "rank\\(s\\) not answering: 1\n")))
      << t.r.out;
  EXPECT_LT(t.seconds, timeout + 25) << t.r.out;
}

// Ladder conversion: a standard run's checkpoint as model.init_from of a ladder run. Its first
// step's loss equals the loss of a ladder model built directly with those weights on the
// run's first batch (and differs from the standard model's loss on it).
TEST(CliTensorParallel, ConvertedStandardCheckpointGivesTheLadderModelsFirstLoss) {
  TmpDir tmp;
  const std::string cfg = write_tp_config(tmp, 3, 0.0);
  const std::string base = tmp / "base";
  Result r = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(base));
  ASSERT_EQ(r.rc, 0) << r.out;
  RunConfig c = configs::load_config(cfg);
  c.set_run_dir(tmp / "ladder");
  c.mutable_model()->set_init_from(train::step_dir(base + "/checkpoints", 3));
  c.mutable_model()->set_ladder_residual(true);
  c.mutable_train()->set_grad_accum(1);
  train::TrainOptions o;
  o.out = nullptr;
  train::Trainer t(c, o);
  t.setup();
  ASSERT_TRUE(t.model().spec().ladder_residual);
  // The run's first batch, from a loader of its own.
  train::TrainBatches first(t.plan().data, t.plan().loader);
  data::LMBatch b = first.next();
  models::ModelSpec spec = t.plan().spec;
  auto ladder = models::build_model(spec, 999);  // another seed: every weight comes from the file
  spec.ladder_residual = false;
  auto standard = models::build_model(spec, 999);
  train::H5Reader f(rank_file(base, 3, 0));
  for (auto* m : {ladder.get(), standard.get()})
    for (const auto& [name, p] : m->named_parameters()) p.copy_(f.read_tensor("model/" + name));
  double expect, standard_loss;
  {
    autograd::NoGradGuard ng;
    expect = ladder->loss(b.ids, b.targets).item();
    standard_loss = standard->loss(b.ids, b.targets).item();
  }
  const train::StepRecord rec = t.train_step();
  EXPECT_NEAR(rec.loss, expect, 1e-6 * expect);
  EXPECT_GT(std::abs(rec.loss - standard_loss), 1e-3);
}

}  // namespace
}  // namespace lathe::cli_test
