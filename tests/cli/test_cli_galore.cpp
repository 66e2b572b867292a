// GaLore and Fira through the real binary: a run stopped at a checkpoint and resumed gives
// the loss curve and final checkpoint (weights, projected moments, bases, Fira's
// scaling_grad, step counts) of one that never stopped, bit for bit. The basis refreshes
// every 3 updates, so the resumed part crosses refreshes, and the randomized refresh draws
// its sketch again from the stored step. The 2-rank version is in test_cli_dp.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"

namespace lathe::cli_test {
namespace {

using test::contains;
using test::TmpDir;

void expect_resume_exact(const std::string& optimizer_sets) {
  TmpDir tmp;
  const std::string cfg = tmp / "tiny.pbtxt";
  test::write_file(cfg, train::test_util::tiny_config_text(tmp / "unused", 7));
  const std::string straight = tmp / "straight", resumed = tmp / "resumed";
  Result s = run_lathe("train " + sh_quote(cfg) + optimizer_sets + " --set run_dir=" + sh_quote(straight));
  ASSERT_EQ(s.rc, 0) << s.out;
  Result p1 = run_lathe("train " + sh_quote(cfg) + optimizer_sets + " --set run_dir=" + sh_quote(resumed) + " --steps 4");
  ASSERT_EQ(p1.rc, 0) << p1.out;
  Result p2 = run_lathe("train " + sh_quote(cfg) + optimizer_sets + " --set run_dir=" + sh_quote(resumed) + " --resume");
  ASSERT_EQ(p2.rc, 0) << p2.out;
  EXPECT_TRUE(contains(p2.out, "resuming from")) << p2.out;
  const auto a = metrics_losses(straight + "/metrics.jsonl"), b = metrics_losses(resumed + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 7u);
  EXPECT_EQ(a, b);  // exact doubles
  const std::string fa = train::rank_file(train::step_dir(straight + "/checkpoints", 7), 0);
  train::test_util::expect_same_tensors(fa, train::rank_file(train::step_dir(resumed + "/checkpoints", 7), 0));
  // The checkpoint holds the projected state by parameter name.
  train::H5Reader r(fa);
  const std::vector<std::string> names = r.list_datasets("optim");
  const std::string q = "layers.0.attn.q_proj.weight";
  EXPECT_TRUE(std::find(names.begin(), names.end(), q + "/ortho_right") != names.end() ||
              std::find(names.begin(), names.end(), q + "/ortho_left") != names.end())
      << "no basis of " << q << " in the checkpoint";
}

}  // namespace

TEST(CliGaLore, RandomizedGaLoreResumesBitExactly) {
  expect_resume_exact(
      " --set optimizer.type=GALORE --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3"
      " --set optimizer.galore.svd=RANDOMIZED --set optimizer.galore.scale=0.25");
}

TEST(CliGaLore, FiraResumesBitExactly) {
  expect_resume_exact(
      " --set optimizer.type=FIRA --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3"
      " --set optimizer.galore.scale=0.25");
}

// Natural GaLore: the history of projected gradients (3, so it wraps) resumes exactly too.
TEST(CliGaLore, NaturalGaLoreResumesBitExactly) {
  expect_resume_exact(
      " --set optimizer.type=GALORE --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=3"
      " --set optimizer.galore.natural=true --set optimizer.galore.natural_history=3 --set optimizer.galore.scale=0.25");
}

TEST(CliGaLore, ConfigErrorNamesTheField) {
  TmpDir tmp;
  const std::string cfg = tmp / "tiny.pbtxt";
  test::write_file(cfg, train::test_util::tiny_config_text(tmp / "run", 4));
  Result r = run_lathe("train " + sh_quote(cfg) + " --set optimizer.type=GALORE --set optimizer.galore.rank=0");
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(contains(r.out, "optimizer.galore.rank: must be > 0")) << r.out;
}

}  // namespace lathe::cli_test
