#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/common/test_helpers.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

using test::error_of;
using test::TmpDir;

// What every rank does for one save: write <rank file>.tmp, close, commit.
void write_rank(const std::string& dir, int rank, int64_t step) {
  std::string final_path = rank_file(dir, rank);
  H5Writer w(tmp_path(final_path));
  w.write_tensor("model/layers.0.w", Tensor::full({2, 2}, static_cast<double>(step * 10 + rank), DType::f32));
  w.set_attr("/", "step", step);
  w.close();
  commit_file(tmp_path(final_path), final_path);
}

void save(const std::string& root, int64_t step, int world) {
  std::string dir = prepare_step_dir(root, step);
  for (int r = 0; r < world; ++r) write_rank(dir, r, step);
  mark_complete(dir, {{"step", step}, {"world_size", world}});
}

// A save that crashed after rank 0 committed and while rank 1 was still writing.
std::string crashed_save(const std::string& root, int64_t step) {
  std::string dir = prepare_step_dir(root, step);
  write_rank(dir, 0, step);
  test::write_file(tmp_path(rank_file(dir, 1)), "half an hdf5 file");
  return dir;
}

TEST(CheckpointDir, Names) {
  EXPECT_EQ(step_dir("/r/ckpt", 1000), "/r/ckpt/step_00001000");
  EXPECT_EQ(rank_file_name(3), "rank_00003.h5");
  EXPECT_EQ(rank_file("/r/ckpt/step_00001000", 12), "/r/ckpt/step_00001000/rank_00012.h5");
  EXPECT_EQ(tmp_path("/a/b.h5"), "/a/b.h5.tmp");
  EXPECT_EQ(parse_step_dir("/r/ckpt/step_00001000"), 1000);
  EXPECT_EQ(parse_step_dir("/r/ckpt/step_00001000/"), 1000);
  EXPECT_EQ(parse_step_dir("step_123456789"), 123456789);
  EXPECT_FALSE(parse_step_dir("/r/ckpt/step_12a"));
  EXPECT_FALSE(parse_step_dir("/r/ckpt/latest"));
}

TEST(CheckpointDir, CommitFileReplacesAtomically) {
  TmpDir tmp;
  std::string final_path = tmp / "f.txt";
  test::write_file(final_path, "old");
  test::write_file(tmp_path(final_path), "new");
  commit_file(tmp_path(final_path), final_path);
  EXPECT_EQ(test::read_file(final_path), "new");
  EXPECT_FALSE(fs::exists(tmp_path(final_path)));
  std::string msg = error_of([&] { commit_file(tmp / "missing.tmp", tmp / "missing"); });
  EXPECT_NE(msg.find("missing.tmp"), std::string::npos) << msg;
}

TEST(CheckpointDir, IncompleteStepIsNeverLatest) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  EXPECT_FALSE(latest_complete_step(root));
  save(root, 10, 2);
  save(root, 20, 2);
  std::string crashed = crashed_save(root, 30);
  EXPECT_FALSE(is_complete(crashed));
  EXPECT_EQ(complete_steps(root), (std::vector<int64_t>{10, 20}));
  EXPECT_EQ(latest_complete_step(root), 20);
  EXPECT_EQ(test::read_file(root + "/latest"), "step_00000020\n");
  EXPECT_EQ(resolve_resume("latest", root), step_dir(root, 20));

  nlohmann::json idx = read_complete(step_dir(root, 20));
  EXPECT_EQ(idx["step"], 20);
  EXPECT_EQ(idx["world_size"], 2);
  EXPECT_EQ(idx["files"], (nlohmann::json{"rank_00000.h5", "rank_00001.h5"}));
  EXPECT_TRUE(idx["time"].is_number());

  // The committed rank files are complete HDF5 files with their data.
  H5Reader r(rank_file(step_dir(root, 20), 1));
  EXPECT_EQ(r.read_tensor("model/layers.0.w").to_vector<float>(), (std::vector<float>{201, 201, 201, 201}));
  EXPECT_EQ(r.attr_int("/", "step"), 20);

  // Marking the crashed step complete is refused: rank 1's file never got committed.
  std::string msg = error_of([&] { mark_complete(crashed, {{"step", 30}, {"world_size", 2}}); });
  EXPECT_NE(msg.find("rank_00001.h5"), std::string::npos) << msg;
  EXPECT_FALSE(is_complete(crashed));
}

TEST(CheckpointDir, CleanupStaleRemovesTmpAndOldIncompleteDirs) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  save(root, 10, 2);
  std::string stale = crashed_save(root, 15);  // crashed, then an older checkpoint was resumed
  save(root, 20, 2);
  std::string newer = crashed_save(root, 30);  // may still be being written: left alone
  test::write_file(root + "/latest.tmp", "step_000");
  test::write_file(rank_file(step_dir(root, 20), 0) + ".tmp", "leftover");

  std::vector<std::string> removed = cleanup_stale(root);
  EXPECT_EQ(removed.size(), 3u);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(root + "/latest.tmp"));
  EXPECT_FALSE(fs::exists(rank_file(step_dir(root, 20), 0) + ".tmp"));
  EXPECT_TRUE(fs::exists(rank_file(step_dir(root, 20), 0)));
  EXPECT_TRUE(fs::exists(tmp_path(rank_file(newer, 1))));
  EXPECT_EQ(complete_steps(root), (std::vector<int64_t>{10, 20}));

  // The directory being written is protected even when it is older than the latest.
  std::string in_progress = crashed_save(root, 17);
  cleanup_stale(root, 17);
  EXPECT_TRUE(fs::exists(tmp_path(rank_file(in_progress, 1))));
  cleanup_stale(root);
  EXPECT_FALSE(fs::exists(in_progress));

  // Saving step 30 again (after resuming from 20) clears the crashed attempt.
  save(root, 30, 2);
  EXPECT_FALSE(fs::exists(tmp_path(rank_file(newer, 1))));
  EXPECT_EQ(latest_complete_step(root), 30);
  EXPECT_EQ(test::read_file(root + "/latest"), "step_00000030\n");
  EXPECT_TRUE(cleanup_stale(root).empty());
}

TEST(CheckpointDir, KeepLastKeepsExactlyTheNewestK) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  for (int64_t s : {5, 10, 15, 20, 25}) save(root, s, 1);
  std::string crashed = crashed_save(root, 30);
  std::vector<std::string> removed = keep_last(root, 3);
  EXPECT_EQ(removed, (std::vector<std::string>{step_dir(root, 5), step_dir(root, 10)}));
  EXPECT_EQ(complete_steps(root), (std::vector<int64_t>{15, 20, 25}));
  EXPECT_FALSE(fs::exists(step_dir(root, 5)));
  EXPECT_FALSE(fs::exists(step_dir(root, 10)));
  EXPECT_TRUE(fs::exists(crashed));  // incomplete dirs are cleanup_stale's business
  EXPECT_TRUE(keep_last(root, 3).empty());
  keep_last(root, 1);
  EXPECT_EQ(complete_steps(root), (std::vector<int64_t>{25}));
  EXPECT_EQ(latest_complete_step(root), 25);
  EXPECT_NE(error_of([&] { keep_last(root, 0); }).find("k must be >= 1"), std::string::npos);
}

TEST(CheckpointDir, ResaveOfACompleteStepUncompletesItFirst) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  save(root, 10, 1);
  save(root, 20, 1);
  prepare_step_dir(root, 20);
  EXPECT_FALSE(is_complete(step_dir(root, 20)));
  EXPECT_TRUE(fs::is_empty(step_dir(root, 20)));
  EXPECT_EQ(latest_complete_step(root), 10);
  EXPECT_EQ(test::read_file(root + "/latest"), "step_00000010\n");
}

TEST(CheckpointDir, ResolveResume) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  std::string none = error_of([&] { resolve_resume("latest", root); });
  EXPECT_NE(none.find("no complete checkpoint in " + root), std::string::npos) << none;

  save(root, 10, 2);
  save(root, 20, 2);
  std::string crashed = crashed_save(root, 30);
  EXPECT_EQ(resolve_resume("latest", root), step_dir(root, 20));
  EXPECT_EQ(resolve_resume(root), step_dir(root, 20));  // a root means its newest
  EXPECT_EQ(resolve_resume(step_dir(root, 10)), step_dir(root, 10));
  EXPECT_EQ(resolve_resume(step_dir(root, 10) + "/"), step_dir(root, 10));
  EXPECT_EQ(resolve_resume(rank_file(step_dir(root, 10), 1)), step_dir(root, 10));
  EXPECT_EQ(resolve_resume("10", root), step_dir(root, 10));
  EXPECT_EQ(resolve_resume("step_00000020", root), step_dir(root, 20));

  std::string inc = error_of([&] { resolve_resume(crashed); });
  EXPECT_NE(inc.find(crashed + " is not a complete checkpoint (no COMPLETE marker)"), std::string::npos) << inc;
  std::string inc_file = error_of([&] { resolve_resume(rank_file(crashed, 0)); });
  EXPECT_NE(inc_file.find("is not a complete checkpoint"), std::string::npos) << inc_file;
  std::string inc_num = error_of([&] { resolve_resume("30", root); });
  EXPECT_NE(inc_num.find("is not a complete checkpoint"), std::string::npos) << inc_num;
  std::string missing = error_of([&] { resolve_resume(tmp / "elsewhere"); });
  EXPECT_NE(missing.find("does not exist"), std::string::npos) << missing;
  std::string empty_root = error_of([&] { resolve_resume(tmp.path()); });
  EXPECT_NE(empty_root.find("no complete checkpoint in"), std::string::npos) << empty_root;
}

// A kill between writing COMPLETE and updating `latest` leaves latest naming the previous
// step; startup (cleanup_stale, which the trainer runs) points it at the newest complete one.
TEST(CheckpointDir, StartupRepairsAStaleLatest) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  save(root, 10, 1);
  save(root, 20, 1);
  const std::string latest = root + "/latest";
  EXPECT_EQ(test::read_file(latest), "step_00000020\n");
  test::write_file(latest, "step_00000010\n");  // the state the kill left
  EXPECT_FALSE(cleanup_stale(root).size());
  EXPECT_EQ(test::read_file(latest), "step_00000020\n");
  EXPECT_FALSE(repair_latest(root));  // already right: untouched

  fs::remove(latest);  // killed before the first latest was written
  EXPECT_TRUE(repair_latest(root));
  EXPECT_EQ(test::read_file(latest), "step_00000020\n");
  test::write_file(latest, "garbage");
  EXPECT_TRUE(repair_latest(root));
  EXPECT_EQ(test::read_file(latest), "step_00000020\n");
  // A newer incomplete step is never what latest names.
  crashed_save(root, 30);
  EXPECT_FALSE(repair_latest(root));
  EXPECT_EQ(test::read_file(latest), "step_00000020\n");
}

TEST(CheckpointDir, LatestPointerFileResolvesToItsStep) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  save(root, 10, 1);
  save(root, 20, 1);
  const std::string latest = root + "/latest";
  EXPECT_EQ(follow_latest(latest), step_dir(root, 20));
  EXPECT_EQ(follow_latest(rank_file(step_dir(root, 20), 0)), std::nullopt);  // not a pointer
  EXPECT_EQ(resolve_resume(latest), step_dir(root, 20));
  test::write_file(latest, "step_00000010\n");
  EXPECT_EQ(resolve_resume(latest), step_dir(root, 10));  // it follows the pointer, whatever it names
  test::write_file(latest, "../../etc\n");
  std::string bad = error_of([&] { resolve_resume(latest); });
  EXPECT_NE(bad.find(latest), std::string::npos) << bad;
  EXPECT_NE(bad.find("should name a step directory"), std::string::npos) << bad;
  std::string dir = crashed_save(root, 30);
  test::write_file(latest, "step_00000030\n");
  std::string inc = error_of([&] { resolve_resume(latest); });
  EXPECT_NE(inc.find("not a complete checkpoint"), std::string::npos) << inc;
}

TEST(CheckpointDir, MarkCompleteValidatesTheIndex) {
  TmpDir tmp;
  std::string root = tmp / "checkpoints";
  std::string dir = prepare_step_dir(root, 7);
  write_rank(dir, 0, 7);
  EXPECT_NE(error_of([&] { mark_complete(dir, {{"world_size", 1}}); }).find("\"step\""), std::string::npos);
  EXPECT_NE(error_of([&] { mark_complete(dir, {{"step", 8}, {"world_size", 1}}); }).find("does not match"),
            std::string::npos);
  mark_complete(dir + "/", {{"step", 7}, {"world_size", 1}, {"config_hash", "abc"}});
  EXPECT_EQ(test::read_file(root + "/latest"), "step_00000007\n");
  EXPECT_FALSE(fs::exists(dir + "/latest"));
  nlohmann::json idx = read_complete(dir);
  EXPECT_EQ(idx["config_hash"], "abc");
  EXPECT_EQ(idx["files"], (nlohmann::json{"rank_00000.h5"}));
}

}  // namespace
}  // namespace lathe::train
