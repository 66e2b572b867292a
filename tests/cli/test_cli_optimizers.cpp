// `lathe train` with the memory-efficient optimizers of issue 11 (part A): SGD-SaI and 8-bit
// AdamW with paged states (on the CPU: file-backed) train the tiny model (the loss falls) and a
// run stopped at step 4 and resumed continues bit for bit (losses and the final checkpoint,
// optimizer state included); SGD-SaI also under mpirun -np 2.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::TmpDir;
using test::write_file;

// The tiny trainer-test config (2-layer GPT-2, d 32: the MLP matrices have 4096 elements, the
// smallest that get 8-bit states) with `optimizer` in place of its AdamW section.
std::string write_config(const TmpDir& tmp, const std::string& optimizer, int steps = 8) {
  std::string text = train::test_util::tiny_config_text(tmp / "unused", steps);
  const std::string from = "optimizer { lr: 3e-3 weight_decay: 0.1 }";
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "tiny config has no " << from;
  if (at != std::string::npos) text.replace(at, from.size(), optimizer);
  const std::string path = tmp / "run.pbtxt";
  write_file(path, text);
  return path;
}

std::string ckpt(const std::string& run, int64_t step, int rank = 0) {
  return train::rank_file(train::step_dir(run + "/checkpoints", step), rank);
}

// Straight run vs stopped at 4 and resumed: identical losses and final checkpoints; the loss
// falls. Returns the straight run's directory.
std::string check_trains_and_resumes(const TmpDir& tmp, const std::string& cfg) {
  const std::string straight = tmp / "straight", resumed = tmp / "resumed";
  Result s = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(straight));
  EXPECT_EQ(s.rc, 0) << s.out;
  Result p1 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + " --steps 4");
  EXPECT_EQ(p1.rc, 0) << p1.out;
  Result p2 = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + " --resume");
  EXPECT_EQ(p2.rc, 0) << p2.out;
  EXPECT_TRUE(contains(p2.out, "resuming from")) << p2.out;
  const auto a = metrics_losses(straight + "/metrics.jsonl"), b = metrics_losses(resumed + "/metrics.jsonl");
  EXPECT_EQ(a.size(), 8u);
  EXPECT_EQ(a, b);  // exact doubles
  if (a.size() == 8u) {
    EXPECT_LT(a.rbegin()->second, a.begin()->second - 0.1) << "the loss falls";
  }
  train::test_util::expect_same_tensors(ckpt(straight, 8), ckpt(resumed, 8));
  return straight;
}

TEST(CliOptimizers, SgdSaiTrainsAndResumesBitExactly) {
  TmpDir tmp;
  const std::string cfg =
      write_config(tmp, "optimizer { type: SGD_SAI lr: 1e-3 weight_decay: 0.01 sgd_sai { momentum: 0.9 } }");
  const std::string run = check_trains_and_resumes(tmp, cfg);
  // The checkpoint holds each tensor's g-SNR and momentum buffer.
  train::H5Reader r(ckpt(run, 8));
  bool gsnr = false, buf = false;
  for (const auto& n : r.list_datasets("/")) {
    gsnr = gsnr || contains(n, "/gsnr");
    buf = buf || contains(n, "/momentum_buffer");
  }
  EXPECT_TRUE(gsnr && buf);
}

TEST(CliOptimizers, EightBitPagedAdamWTrainsAndResumesBitExactly) {
  TmpDir tmp;
  const std::string cfg = write_config(
      tmp, "optimizer { lr: 3e-3 weight_decay: 0.1 state_bits: 8 paged: true paging { min_numel: 1000 } }");
  const std::string run = check_trains_and_resumes(tmp, cfg);
  train::H5Reader r(ckpt(run, 8));
  int codes = 0;
  for (const auto& n : r.list_datasets("/"))
    if (contains(n, "exp_avg_q8")) {
      EXPECT_EQ(r.read_tensor(n).dtype(), DType::u8) << n;
      ++codes;
    }
  EXPECT_GE(codes, 4) << "the MLP matrices of both layers have 8-bit moments";
  // The backing files of the paged state were under <run_dir>/paged and are gone.
  EXPECT_TRUE(!fs::exists(run + "/paged") || fs::is_empty(run + "/paged"));
}

TEST(CliOptimizers, SgdSaiResumeUnderMpirunIsBitwiseIdentical) {
  TmpDir tmp;
  const std::string cfg = write_config(tmp, "optimizer { type: SGD_SAI lr: 1e-3 sgd_sai { momentum: 0.9 } }", 6);
  const std::string straight = tmp / "straight", resumed = tmp / "resumed";
  auto mpi = [&](const std::string& args) {
    const std::string cmd = "timeout -k 5 120 " + std::string(LATHE_MPIRUN) +
                            " -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 " + sh_quote(LATHE_BIN) + " " +
                            args + " 2>&1";
    Result r;
    std::FILE* p = ::popen(cmd.c_str(), "r");
    char buf[4096];
    for (size_t n; p && (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
    r.rc = p ? decode_status(::pclose(p)) : -1;
    return r;
  };
  Result s = mpi("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(straight));
  ASSERT_EQ(s.rc, 0) << s.out;
  Result p1 = mpi("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + " --steps 4");
  ASSERT_EQ(p1.rc, 0) << p1.out;
  Result p2 = mpi("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(resumed) + " --resume");
  ASSERT_EQ(p2.rc, 0) << p2.out;
  EXPECT_EQ(metrics_losses(straight + "/metrics.jsonl"), metrics_losses(resumed + "/metrics.jsonl"));
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    train::test_util::expect_same_tensors(ckpt(straight, 6, rank), ckpt(resumed, 6, rank));
  }
}

}  // namespace
}  // namespace lathe::cli_test
