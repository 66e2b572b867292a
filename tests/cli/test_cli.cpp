// The `lathe` binary end to end: exit codes and messages, train/inspect/generate/eval, a run
// killed with SIGKILL (or stopped with SIGTERM) and resumed, and every CPU-runnable config.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "kernels/device.h"
#include "configs/config.h"
#include "tests/cli/cli_test_util.h"
#include "tests/cli/example_setup.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/run_setup.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;
using test::write_file;

using test::contains;

// The tiny trainer-test config (2-layer GPT-2, dropout, grad_accum 2) as a file.
std::string write_tiny(const TmpDir& tmp, int steps, int interval) {
  std::string text = train::test_util::tiny_config_text(tmp / "unused", steps);
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
  };
  replace("checkpoint { interval: 4 ", "checkpoint { interval: " + std::to_string(interval) + " ");
  replace("logging { progress: NONE }", "logging { progress: LINES }");
  const std::string path = tmp / "tiny.pbtxt";
  write_file(path, text);
  return path;
}

TEST(Cli, ValidateReportsOkOrEveryErrorWithExitCode2) {
  TmpDir tmp;
  Result ok = run_lathe("validate configs/quickstart.pbtxt");
  EXPECT_EQ(ok.rc, 0) << ok.out;
  EXPECT_EQ(ok.out, "ok\n");

  write_file(tmp / "typo.pbtxt", "name: \"x\"\nmodel {\n  n_layr: 2\n}\n");
  Result typo = run_lathe("validate " + sh_quote(tmp / "typo.pbtxt"));
  EXPECT_EQ(typo.rc, 2) << typo.out;
  EXPECT_TRUE(contains(typo.out, "typo.pbtxt:3:3")) << typo.out;  // file:line:col, 1-based
  EXPECT_TRUE(contains(typo.out, "n_layer")) << typo.out;         // the suggestion

  write_file(tmp / "bad.pbtxt", "train { steps: 10 micro_batch: 0 }\noptimizer { lr: -1 }\n");
  Result bad = run_lathe("validate " + sh_quote(tmp / "bad.pbtxt"));
  EXPECT_EQ(bad.rc, 2) << bad.out;
  EXPECT_TRUE(contains(bad.out, "train.micro_batch: must be > 0 (got 0)")) << bad.out;
  EXPECT_TRUE(contains(bad.out, "optimizer.lr: must be > 0 (got -1)")) << bad.out;

  Result over = run_lathe("validate configs/quickstart.pbtxt --set train.stpes=3");
  EXPECT_EQ(over.rc, 2) << over.out;
  EXPECT_TRUE(contains(over.out, "steps")) << over.out;

  Result missing = run_lathe("validate " + sh_quote(tmp / "nope.pbtxt"));
  EXPECT_EQ(missing.rc, 2) << missing.out;

  // Valid; trainable only with a GPU (bf16 on CUDA): without one, ok with a note.
  Result gpu = run_lathe("validate configs/gpt2_124m.pbtxt");
  EXPECT_EQ(gpu.rc, 0) << gpu.out;
  EXPECT_TRUE(contains(gpu.out, "ok\n")) << gpu.out;
  EXPECT_EQ(contains(gpu.out, "note: this build cannot train it yet: train.precision: BF16"),
            kernels::cuda_device_count() == 0)
      << gpu.out;
}

TEST(Cli, UsageErrorsExitWith2AndAHint) {
  Result none = run_lathe("");
  EXPECT_EQ(none.rc, 2);
  EXPECT_TRUE(contains(none.out, "usage: lathe")) << none.out;

  Result typo = run_lathe("trian configs/quickstart.pbtxt");
  EXPECT_EQ(typo.rc, 2) << typo.out;
  EXPECT_TRUE(contains(typo.out, "unknown command 'trian' (did you mean 'train'?)")) << typo.out;

  Result flag = run_lathe("train configs/quickstart.pbtxt --reseum");
  EXPECT_EQ(flag.rc, 2) << flag.out;
  EXPECT_TRUE(contains(flag.out, "unknown option --reseum (did you mean --resume?)")) << flag.out;

  Result two = run_lathe("train configs/quickstart.pbtxt configs/tiny_llama.pbtxt");
  EXPECT_EQ(two.rc, 2) << two.out;
  Result steps = run_lathe("train configs/quickstart.pbtxt --steps many");
  EXPECT_EQ(steps.rc, 2) << steps.out;
  EXPECT_TRUE(contains(steps.out, "--steps: expected an integer")) << steps.out;

  Result help = run_lathe("--help");
  EXPECT_EQ(help.rc, 0);
  for (const char* w : {"train", "eval", "generate", "inspect", "validate", "130", "143", "checkpoint or file I/O"})
    EXPECT_TRUE(contains(help.out, w)) << w << "\n" << help.out;
  for (const char* c : {"train", "finetune", "eval", "generate", "prepare", "export", "tokenizer", "inspect", "validate"}) {
    Result h = run_lathe(std::string(c) + " --help");
    EXPECT_EQ(h.rc, 0) << c;
    EXPECT_TRUE(contains(h.out, std::string("usage: lathe ") + c)) << h.out;
  }
}

TEST(Cli, TrainThenInspectGenerateEval) {
  TmpDir tmp;
  const std::string cfg = write_tiny(tmp, 12, 4), run = tmp / "run";
  Result t = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run));
  ASSERT_EQ(t.rc, 0) << t.out;
  EXPECT_TRUE(contains(t.out, "flops/token = 6N + 6LCT")) << t.out;
  EXPECT_TRUE(contains(t.out, "---- resolved config ----")) << t.out;
  EXPECT_TRUE(contains(t.out, "parameters")) << t.out;

  Result ins = run_lathe("inspect " + sh_quote(run));
  ASSERT_EQ(ins.rc, 0) << ins.out;
  for (const char* w : {"step:       12", "complete:   yes", "model/embed.weight", "model/layers.1.attn.q_proj.weight",
                        "model/layers.1.mlp.proj.bias", "optim/layers.0.attn.q_proj.weight/exp_avg_sq",
                        "optim/__step__", "state/loader_index", "[32, 32]"})
    EXPECT_TRUE(contains(ins.out, w)) << w << "\n" << ins.out;
  Result ins_missing = run_lathe("inspect " + sh_quote(tmp / "nothing"));
  EXPECT_EQ(ins_missing.rc, 3) << ins_missing.out;

  const std::string gen = "generate --checkpoint " + sh_quote(run) + " --prompt 'the fox' --max-new-tokens 24";
  Result g1 = run_lathe(gen + " --seed 3"), g2 = run_lathe(gen + " --seed 3"), g3 = run_lathe(gen + " --seed 4");
  ASSERT_EQ(g1.rc, 0) << g1.out;
  EXPECT_EQ(g1.out, g2.out);
  EXPECT_NE(g1.out, g3.out);
  EXPECT_EQ(g1.out.rfind("the fox", 0), 0u) << g1.out;
  Result greedy1 = run_lathe(gen + " --temperature 0 --seed 1"), greedy2 = run_lathe(gen + " --temperature 0 --seed 2");
  ASSERT_EQ(greedy1.rc, 0) << greedy1.out;
  EXPECT_EQ(greedy1.out, greedy2.out);
  Result bad_p = run_lathe(gen + " --top-p 0");
  EXPECT_EQ(bad_p.rc, 2) << bad_p.out;

  // eval over the same 2 batches the trainer's final evaluation used gives the same loss.
  Result ev = run_lathe("eval " + sh_quote(run) + " --batches 2");
  ASSERT_EQ(ev.rc, 0) << ev.out;
  const size_t at = ev.out.find("val loss:");
  ASSERT_NE(at, std::string::npos) << ev.out;
  const double val = std::stod(ev.out.substr(at + 9));
  EXPECT_NEAR(val, last_val_loss(run + "/metrics.jsonl"), 1e-6) << ev.out;
  // The config file form finds the checkpoint through checkpoint.dir; an earlier step differs.
  Result ev4 = run_lathe("eval " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run) + " --checkpoint 4 --batches 2");
  ASSERT_EQ(ev4.rc, 0) << ev4.out;
  EXPECT_TRUE(contains(ev4.out, "(step 4)")) << ev4.out;

  Result resume_missing = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(tmp / "other") +
                                 " --resume=" + sh_quote(tmp / "nowhere"));
  EXPECT_EQ(resume_missing.rc, 3) << resume_missing.out;
}

// A run killed mid-training and resumed must match one that never stopped.
class CliResume : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TmpDir();
    cfg_ = write_tiny(*tmp_, kSteps, 10);
    Result r = run_lathe("train " + sh_quote(cfg_) + " --set run_dir=" + sh_quote(*tmp_ / "straight"));
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  void expect_same_as_straight(const std::string& run) {
    std::map<int64_t, double> a = metrics_losses(*tmp_ / "straight/metrics.jsonl"), b = metrics_losses(run + "/metrics.jsonl");
    ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
    EXPECT_EQ(a, b);  // bitwise equal doubles, every step
    train::test_util::expect_same_tensors(train::rank_file(train::step_dir(*tmp_ / "straight/checkpoints", kSteps), 0),
                                          train::rank_file(train::step_dir(run + "/checkpoints", kSteps), 0));
  }
  static constexpr int kSteps = 60;
  static TmpDir* tmp_;
  static std::string cfg_;
};
TmpDir* CliResume::tmp_ = nullptr;
std::string CliResume::cfg_;

TEST_F(CliResume, KilledWithSigkillResumesExactly) {
  const std::string run = *tmp_ / "killed";
  pid_t pid = spawn_lathe("train " + sh_quote(cfg_) + " --set run_dir=" + sh_quote(run), *tmp_ / "killed.log");
  const bool seen = wait_for_file(pid, train::step_dir(run + "/checkpoints", 10) + "/COMPLETE");
  ::kill(pid, SIGKILL);
  const int rc = wait_exit(pid);
  ASSERT_TRUE(seen) << "the run ended before its step-10 checkpoint was seen:\n" << test::read_file(*tmp_ / "killed.log");
  ASSERT_EQ(rc, 128 + SIGKILL) << "the run finished before it could be killed";
  std::optional<int64_t> latest = train::latest_complete_step(run + "/checkpoints");
  ASSERT_TRUE(latest.has_value());
  ASSERT_LT(*latest, kSteps);

  Result r = run_lathe("train " + sh_quote(cfg_) + " --set run_dir=" + sh_quote(run) + " --resume");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "resuming from " + train::step_dir(run + "/checkpoints", *latest))) << r.out;
  expect_same_as_straight(run);
}

TEST_F(CliResume, SigtermSavesExits143AndResumes) {
  const std::string run = *tmp_ / "terminated";
  pid_t pid = spawn_lathe("train " + sh_quote(cfg_) + " --set run_dir=" + sh_quote(run), *tmp_ / "term.log");
  ASSERT_TRUE(wait_for_file(pid, train::step_dir(run + "/checkpoints", 10) + "/COMPLETE"));
  ::kill(pid, SIGTERM);
  const int rc = wait_exit(pid);
  if (rc == 0) GTEST_SKIP() << "the run finished before SIGTERM arrived";
  ASSERT_EQ(rc, 143) << test::read_file(*tmp_ / "term.log");
  // It stopped after a whole step and saved exactly there.
  std::map<int64_t, double> logged = metrics_losses(run + "/metrics.jsonl");
  ASSERT_FALSE(logged.empty());
  EXPECT_EQ(train::latest_complete_step(run + "/checkpoints"), std::optional<int64_t>(logged.rbegin()->first));
  // checkpoint.resume "auto" (no flag) continues from there.
  Result r = run_lathe("train " + sh_quote(cfg_) + " --set run_dir=" + sh_quote(run));
  ASSERT_EQ(r.rc, 0) << r.out;
  expect_same_as_straight(run);
}

// Data parallelism: 2 ranks x micro-batch 4 read exactly the windows 1 rank x micro-batch 8
// reads (data::LMLoader), and the gradients are averaged, so the losses agree to rounding;
// a 2-rank checkpoint is refused by a 1-rank resume.
TEST(Cli, MpirunTwoRanksMatchOneRankWithTheWholeBatch) {
  TmpDir tmp;
  std::string cfg = write_tiny(tmp, 6, 3);
  {
    std::string text = test::read_file(cfg);
    text.replace(text.find("dropout: 0.1"), 12, "dropout: 0.0");  // dropout masks depend on the batch shape
    write_file(cfg, text);
  }
  const std::string one = tmp / "one", two = tmp / "two";
  Result r1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(one) + " --set train.micro_batch=8");
  ASSERT_EQ(r1.rc, 0) << r1.out;
  const std::string mpi = std::string(LATHE_MPIRUN) + " -np 2 -x OMP_NUM_THREADS=1 " + sh_quote(LATHE_BIN) +
                          " train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two) + " 2>&1";
  std::FILE* p = ::popen(mpi.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ASSERT_EQ(decode_status(::pclose(p)), 0) << out;
  std::map<int64_t, double> a = metrics_losses(one + "/metrics.jsonl"), b = metrics_losses(two + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(loss, b[step], 2e-6 * loss) << "step " << step;
  EXPECT_TRUE(fs::exists(train::rank_file(train::step_dir(two + "/checkpoints", 6), 1)));
  EXPECT_TRUE(contains(out, "2 rank(s)")) << out;

  Result refuse = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(two) + " --set train.steps=9 --resume");
  EXPECT_EQ(refuse.rc, 3) << refuse.out;
  EXPECT_TRUE(contains(refuse.out, "written by 2 rank(s), this run has 1")) << refuse.out;
}

// Every config in configs/ that runs on the CPU, and every example, trains for 2 steps
// (fine-tuning examples through lathe finetune, from a tiny exported HF directory).
TEST(Cli, EveryCpuConfigRunsTwoSteps) {
  std::vector<std::string> files = {"configs/quickstart.pbtxt", "configs/tiny_llama.pbtxt", "configs/shakespeare.pbtxt"};
  std::vector<std::string> examples;
  if (fs::is_directory("examples"))
    for (const auto& d : fs::recursive_directory_iterator("examples"))
      if (d.is_regular_file() && d.path().extension() == ".pbtxt") examples.push_back(d.path().string());
  std::sort(examples.begin(), examples.end());
  files.insert(files.end(), examples.begin(), examples.end());
  int ran = 0;
  // Tokenizer, prepared data and HF model directory for the examples whose README makes them
  // first (tests/cli/example_setup.h); built on first use, removed at the end.
  const std::string inputs_dir = (fs::temp_directory_path() / ("lathe_test_example_inputs_" + std::to_string(::getpid()))).string();
  fs::remove_all(inputs_dir);
  ExampleInputs inputs(inputs_dir);
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{inputs_dir};
  for (const auto& f : files) {
    SCOPED_TRACE(f);
    RunConfig cfg = configs::load_config(f);
    const bool cpu = cfg.train().device() == "cpu" || cfg.train().device() == "auto";
    const bool runnable = cpu && train::unsupported_features(cfg).empty();
    if (!runnable) {
      EXPECT_TRUE(f.rfind("examples/", 0) == 0) << f << " is listed as CPU-runnable but is not";
      continue;
    }
    TmpDir tmp;
    std::string args = "train " + sh_quote(f) + " --steps 2 --set run_dir=" + sh_quote(tmp.path()) +
                       " --set train.micro_batch=4 --set sample.max_new_tokens=4 --set checkpoint.resume=never"
                       " --set parallel.threads_per_rank=1" + inputs.overrides_for(cfg);
    // One process: tensor-parallel examples run unsharded here (under mpirun in test_cli_tp.cpp).
    if (cfg.parallel().tensor_parallel() > 1) args += " --set parallel.tensor_parallel=1";
    if (cfg.data().val_fraction() > 0) args += " --set train.eval_interval=1 --set train.eval_batches=1";
    // One process here: a sequence-parallel example (examples/ulysses, run under mpirun in
    // tests/parallel) trains its config unsplit.
    if (cfg.parallel().sequence_parallel() > 1) args += " --set parallel.sequence_parallel=1";
    if (!cfg.model().init_from().empty()) args.replace(0, 5, "finetune");  // "train" -> "finetune"
    Result r = run_lathe(args);
    ASSERT_EQ(r.rc, 0) << r.out;
    std::map<int64_t, double> losses = metrics_losses(tmp / "metrics.jsonl");
    ASSERT_EQ(losses.size(), 2u);
    for (const auto& [s, l] : losses) EXPECT_TRUE(std::isfinite(l) && l > 0) << "step " << s << ": " << l;
    EXPECT_TRUE(train::is_complete(train::step_dir(tmp / "checkpoints", 2)));
    ++ran;
  }
  EXPECT_GE(ran, 3 + 6);  // the CPU configs and at least one config per example
}

}  // namespace
}  // namespace lathe::cli_test
