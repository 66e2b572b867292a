// `lathe` and damaged or unwritable checkpoints: inspect follows `latest`, a corrupt tensor
// or a damaged COMPLETE marker is exit 3 naming the file, a stale `latest` is repaired at
// startup, and a disk that fills during a save or while logging metrics is exit 3 (never a
// crash), with no .tmp file left behind.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;
using test::write_file;

using test::contains;

std::string write_tiny_config(const TmpDir& tmp, int steps) {
  const std::string path = tmp / "tiny.pbtxt";
  write_file(path, train::test_util::tiny_config_text(tmp / "unused", steps));
  return path;
}

void flip_data_byte(const std::string& file, const std::string& dataset, uint64_t at) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  std::fstream s(file, std::ios::in | std::ios::out | std::ios::binary);
  s.seekg(static_cast<std::streamoff>(off + at));
  char c = 0;
  s.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  s.seekp(static_cast<std::streamoff>(off + at));
  s.write(&c, 1);
}

std::vector<std::string> tmp_files_under(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator(); ++it)
    if (contains(it->path().filename().string(), ".tmp")) out.push_back(it->path().string());
  return out;
}

TEST(CliCheckpoint, InspectFollowsLatestAndDamageIsExit3) {
  TmpDir tmp;
  const std::string cfg = write_tiny_config(tmp, 12), run = tmp / "run", root = run + "/checkpoints";
  const std::string set_run = " --set run_dir=" + sh_quote(run);
  Result t = run_lathe("train " + sh_quote(cfg) + set_run);
  ASSERT_EQ(t.rc, 0) << t.out;

  // The README's command: `latest` is a pointer file naming the step directory.
  Result ins = run_lathe("inspect " + sh_quote(root + "/latest"));
  ASSERT_EQ(ins.rc, 0) << ins.out;
  EXPECT_TRUE(contains(ins.out, "step:       12")) << ins.out;
  EXPECT_TRUE(contains(ins.out, train::rank_file(train::step_dir(root, 12), 0))) << ins.out;
  Result ver = run_lathe("inspect --verify " + sh_quote(run));
  ASSERT_EQ(ver.rc, 0) << ver.out;
  EXPECT_TRUE(contains(ver.out, "checksums:")) << ver.out;
  EXPECT_TRUE(contains(ver.out, "tensors verified (crc32c)\n")) << ver.out;  // all of them

  // A kill between COMPLETE and the latest update: the next start repairs latest.
  write_file(root + "/latest", "step_00000004\n");
  Result again = run_lathe("train " + sh_quote(cfg) + set_run);
  ASSERT_EQ(again.rc, 0) << again.out;
  EXPECT_EQ(test::read_file(root + "/latest"), "step_00000012\n");

  // One flipped bit in a tensor's data: inspect --verify and resume name the tensor and file.
  const std::string file12 = train::rank_file(train::step_dir(root, 12), 0);
  flip_data_byte(file12, "model/embed.weight", 100);
  Result bad = run_lathe("inspect --verify " + sh_quote(file12));
  EXPECT_EQ(bad.rc, 3) << bad.out;
  EXPECT_TRUE(contains(bad.out, "model/embed.weight")) << bad.out;
  EXPECT_TRUE(contains(bad.out, file12)) << bad.out;
  EXPECT_TRUE(contains(bad.out, "checksum mismatch")) << bad.out;
  Result resume = run_lathe("train " + sh_quote(cfg) + set_run + " --set train.steps=16");
  EXPECT_EQ(resume.rc, 3) << resume.out;
  EXPECT_TRUE(contains(resume.out, "model/embed.weight")) << resume.out;
  EXPECT_TRUE(contains(resume.out, file12)) << resume.out;

  // A COMPLETE marker without world_size: a checkpoint error naming the marker.
  const std::string marker = train::step_dir(root, 8) + "/COMPLETE";
  write_file(marker, "{\"step\": 8}\n");
  Result nows = run_lathe("train " + sh_quote(cfg) + set_run + " --resume=8");
  EXPECT_EQ(nows.rc, 3) << nows.out;
  EXPECT_TRUE(contains(nows.out, marker)) << nows.out;
  EXPECT_TRUE(contains(nows.out, "world_size")) << nows.out;

  // Truncated: exit 3 naming the file.
  const std::string file4 = train::rank_file(train::step_dir(root, 4), 0);
  fs::resize_file(file4, fs::file_size(file4) / 2);
  Result trunc = run_lathe("train " + sh_quote(cfg) + set_run + " --resume=4");
  EXPECT_EQ(trunc.rc, 3) << trunc.out;
  EXPECT_TRUE(contains(trunc.out, file4)) << trunc.out;
}

// A run directory on a tiny tmpfs (needs root and mount permission; skips otherwise).
class CliFullDisk : public ::testing::Test {
 protected:
  void mount_tmpfs(const std::string& size) {
    dir_ = tmp_ / "fs";
    fs::create_directories(dir_);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, ("size=" + size).c_str()) != 0)
      GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << ")";
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpDir tmp_;
  std::string dir_;
  bool mounted_ = false;
};

TEST_F(CliFullDisk, CheckpointOnAFullDiskExits3WithoutACrash) {
  mount_tmpfs("256k");  // metrics fit; the first checkpoint (~0.4 MB) does not
  const std::string cfg = write_tiny_config(tmp_, 12), run = dir_ + "/run";
  Result r = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run));
  EXPECT_EQ(r.rc, 3) << r.out;  // was 139: SIGSEGV in HDF5's exit-time cleanup
  EXPECT_TRUE(contains(r.out, "No space left on device")) << r.out;
  EXPECT_TRUE(contains(r.out, "rank_00000.h5")) << r.out;
  EXPECT_EQ(tmp_files_under(run), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(run + "/checkpoints/latest"));
}

TEST_F(CliFullDisk, MetricsOnAFullDiskExits3) {
  mount_tmpfs("4k");  // the config line fits, a few steps' records do not
  const std::string cfg = write_tiny_config(tmp_, 200), run = dir_ + "/run";
  Result r = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run) +
                       " --set checkpoint.interval=0 --set checkpoint.save_final=false");
  EXPECT_EQ(r.rc, 3) << r.out;  // was 1
  EXPECT_TRUE(contains(r.out, "No space left on device")) << r.out;
  EXPECT_TRUE(contains(r.out, "metrics.jsonl")) << r.out;
}

}  // namespace
}  // namespace lathe::cli_test
