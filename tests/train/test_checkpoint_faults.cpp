// Checkpoints under faults: a disk that fills during a save (a test hook pointing HDF5's
// descriptor at /dev/full, and a real 64 KiB tmpfs where mounting is permitted), flipped data bytes, truncated files,
// missing datasets and a damaged COMPLETE marker. Each must be a CheckpointError (exit 3 in
// the CLI) naming the file, with no HDF5 id left open (an id left open after a failed close
// crashed HDF5's exit-time cleanup) and no .tmp file left behind.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <fstream>
#include <random>

#include "parallel/single_process_communicator.h"
#include "tests/common/test_helpers.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/crc32c.h"
#include "train/hdf5_io.h"
#include "train/metrics.h"

namespace lathe::train {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;

// HDF5 ids still open anywhere in the process (files, datasets, groups, types, attributes).
ssize_t open_h5_ids() { return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); }

Tensor random_f32(const Shape& shape, uint32_t seed) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = u(rng);
  return t;
}

// A part writing `n` tensors of `numel` floats each as model/w<i>.
struct TensorsPart : CheckpointPart {
  int n;
  int64_t numel;
  std::vector<Tensor> loaded;
  TensorsPart(int n_, int64_t numel_) : n(n_), numel(numel_) {}
  std::string name() const override { return "tensors"; }
  void save(H5Writer& w) const override {
    write_i64(w, "state/step", 7);  // the header read_rank_checkpoint expects
    write_i64(w, "state/tokens_seen", 0);
    for (int i = 0; i < n; ++i) w.write_tensor("model/w" + std::to_string(i), random_f32({numel}, 10 + i));
  }
  void load(const H5Reader& r) override {
    loaded.clear();
    for (int i = 0; i < n; ++i) loaded.push_back(r.read_tensor("model/w" + std::to_string(i)));
  }
};

CheckpointMeta meta_at(int64_t step) {
  CheckpointMeta m;
  m.step = step;
  m.config_text = "name: \"faults\"\n";
  return m;
}

// Runs fn, which must throw a CheckpointError; returns its message.
template <typename F>
std::string checkpoint_error_of(F&& fn) {
  try {
    fn();
  } catch (const CheckpointError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a CheckpointError, got: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a CheckpointError, nothing was thrown";
  return "";
}

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// ---- a full disk -----------------------------------------------------------------------

// Runs fn in a child process that then exits normally, so HDF5's exit-time cleanup runs as
// it does in lathe (a half-closed file id crashed it there with SIGSEGV). Returns the exit
// code, or 128 + the signal that killed the child. fn returns 0 when all its checks held.
int in_child(const std::function<int()>& fn) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 99;
    try {
      rc = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: unexpected exception: %s\n", e.what());
    }
    std::exit(rc);  // runs atexit handlers, HDF5's H5close among them
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

#define CHILD_CHECK(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "child check failed at line %d: %s\n", __LINE__, #cond);   \
      return __LINE__ % 100 + 1;                                                       \
    }                                                                                  \
  } while (0)

// Writes with H5Writer on a disk that fills right after the file is created (the test hook
// points the descriptor at /dev/full); the failure comes at a dataset write, a dataset close
// or the final flush, depending on what HDF5 still buffers.
int writer_on_full_disk(const std::string& path, int64_t numel, int n, bool call_close) {
  h5writer_full_disk_for_testing(true);
  const ssize_t before = open_h5_ids();
  std::string msg;
  try {
    H5Writer w(path);
    for (int i = 0; i < n; ++i) w.write_tensor("model/t" + std::to_string(i), random_f32({numel}, 1 + i));
    if (call_close) w.close();
  } catch (const IoError& e) {
    msg = e.what();
  }
  if (call_close || !msg.empty()) {
    CHILD_CHECK(has(msg, path));
    CHILD_CHECK(has(msg, "No space left on device"));
  }
  CHILD_CHECK(open_h5_ids() == before);
  CHILD_CHECK(!fs::exists(path));
  return 0;
}

TEST(DiskFull, H5WriterFailsCleanlyAtEveryPointAndTheProcessExitsNormally) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "/dev/full is missing";
  TmpDir tmp;
  const std::string path = tmp / "a.h5";
  // 1 MiB tensors: the dataset write itself fails. 64-element ones: HDF5 buffers them and
  // the failure shows at a dataset close or at close()'s flush. Without close(): the
  // destructor's flush fails, and the writer must still release everything.
  EXPECT_EQ(in_child([&] { return writer_on_full_disk(path, 1 << 18, 2, true); }), 0);
  EXPECT_EQ(in_child([&] { return writer_on_full_disk(path, 64, 3, true); }), 0);
  EXPECT_EQ(in_child([&] { return writer_on_full_disk(path, 64, 3, false); }), 0);
}

TEST(DiskFull, RankCheckpointIsACheckpointErrorAndTheTmpIsRemoved) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "/dev/full is missing";
  TmpDir tmp;
  const std::string file = tmp / "rank_00000.h5";
  for (int64_t numel : {int64_t{1} << 18, int64_t{30}}) {
    SCOPED_TRACE(numel);
    EXPECT_EQ(in_child([&] {
                h5writer_full_disk_for_testing(true);
                TensorsPart part(3, numel);
                const ssize_t before = open_h5_ids();
                std::string msg;
                try {
                  write_rank_checkpoint(file, {&part}, meta_at(5));
                } catch (const CheckpointError& e) {
                  msg = e.what();
                }
                CHILD_CHECK(has(msg, file));
                CHILD_CHECK(has(msg, "No space left on device"));
                CHILD_CHECK(open_h5_ids() == before);
                CHILD_CHECK(!fs::exists(tmp_path(file)));
                CHILD_CHECK(!fs::exists(file));
                return 0;
              }),
              0);
  }
}

// The .tmp name a symlink to /dev/full: the very first write (the superblock, in
// H5Fcreate) hits the "full disk".
TEST(DiskFull, DevFullAtCreateIsACheckpointErrorNamingTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "/dev/full is missing";
  TmpDir tmp;
  const std::string file = tmp / "rank_00000.h5";
  fs::create_symlink("/dev/full", tmp_path(file));
  EXPECT_EQ(in_child([&] {
              TensorsPart part(3, 16);
              const ssize_t before = open_h5_ids();
              std::string msg;
              try {
                write_rank_checkpoint(file, {&part}, meta_at(5));
              } catch (const CheckpointError& e) {
                msg = e.what();
              }
              CHILD_CHECK(has(msg, file));
              CHILD_CHECK(has(msg, "No space left on device"));
              CHILD_CHECK(open_h5_ids() == before);
              CHILD_CHECK(!fs::exists(fs::symlink_status(tmp_path(file))));
              return 0;
            }),
            0);
}

// metrics.jsonl on a full disk: IoError (exit 3), not a plain runtime error (exit 1).
TEST(DiskFull, MetricsWritesAreIoErrors) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "/dev/full is missing";
  TmpDir tmp;
  fs::create_symlink("/dev/full", tmp / "metrics.jsonl");
  JsonlWriter* jsonl = nullptr;
  std::unique_ptr<JsonlWriter> keep;
  try {
    keep = std::make_unique<JsonlWriter>(tmp / "metrics.jsonl");
    jsonl = keep.get();
    jsonl->write({{"step", 1}, {"loss", 2.5}});
    ADD_FAILURE() << "writing metrics to /dev/full succeeded";
  } catch (const IoError& e) {
    EXPECT_TRUE(has(e.what(), tmp / "metrics.jsonl")) << e.what();
    EXPECT_TRUE(has(e.what(), "No space left on device")) << e.what();
  }
  // Through the logger, as the trainer logs a step.
  MetricsOptions mo;
  mo.jsonl_path = tmp / "metrics.jsonl";
  mo.console = false;
  EXPECT_THROW(MetricsLogger(mo, nullptr), IoError);

}

// A real full disk: a 64 KiB tmpfs (needs root and mount permission; skips otherwise).
class TinyTmpfs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_ / "fs";
    fs::create_directories(dir_);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=64k") != 0)
      GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "); the /dev/full tests cover this";
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpDir tmp_;
  std::string dir_;
  bool mounted_ = false;
};

TEST_F(TinyTmpfs, SaveCheckpointOnAFullDiskFailsCleanly) {
  const std::string root = dir_ + "/checkpoints";
  parallel::SingleProcessCommunicator comm;
  TensorsPart small(1, 64);
  ASSERT_NO_THROW(save_checkpoint(root, {&small}, meta_at(1), comm, 0));
  TensorsPart big(4, 8192);  // 128 KiB of tensors on a 64 KiB disk
  const ssize_t before = open_h5_ids();
  const std::string msg = checkpoint_error_of([&] { save_checkpoint(root, {&big}, meta_at(2), comm, 0); });
  EXPECT_TRUE(has(msg, "No space left on device")) << msg;
  EXPECT_TRUE(has(msg, rank_file(step_dir(root, 2), 0))) << msg;
  EXPECT_EQ(open_h5_ids(), before);
  EXPECT_FALSE(fs::exists(tmp_path(rank_file(step_dir(root, 2), 0))));
  EXPECT_FALSE(is_complete(step_dir(root, 2)));
  // The earlier checkpoint is untouched and still the one to resume from.
  EXPECT_EQ(resolve_resume("latest", root), step_dir(root, 1));
  TensorsPart back(1, 64);
  load_checkpoint(step_dir(root, 1), {&back}, comm);
  ASSERT_EQ(back.loaded.size(), 1u);
  EXPECT_EQ(0, std::memcmp(back.loaded[0].raw_data(), random_f32({64}, 10).raw_data(), 64 * 4));
}

// ---- corrupt files ---------------------------------------------------------------------

// The file offset of a contiguous dataset's first data byte.
haddr_t data_offset(const std::string& file, const std::string& name) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
  haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return off;
}

void flip_byte(const std::string& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

class Corrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_ / "checkpoints";
    TensorsPart part(3, 1000);
    save_checkpoint(root_, {&part}, meta_at(7), comm_, 0);
    dir_ = step_dir(root_, 7);
    file_ = rank_file(dir_, 0);
  }
  std::string load_error() {
    TensorsPart part(3, 1000);
    return checkpoint_error_of([&] { load_checkpoint(dir_, {&part}, comm_); });
  }
  TmpDir tmp_;
  parallel::SingleProcessCommunicator comm_;
  std::string root_, dir_, file_;
};

TEST_F(Corrupt, IntactFileLoadsAndEveryDatasetCarriesAChecksum) {
  TensorsPart part(3, 1000);
  load_checkpoint(dir_, {&part}, comm_);
  ASSERT_EQ(part.loaded.size(), 3u);
  EXPECT_EQ(0, std::memcmp(part.loaded[2].raw_data(), random_f32({1000}, 12).raw_data(), 4000));
  H5Reader r(file_);
  for (const std::string& n : r.list_datasets("/")) EXPECT_TRUE(r.has_checksum(n)) << n;
  // The attribute holds the CRC-32C of the element bytes.
  Tensor w1 = random_f32({1000}, 11);
  EXPECT_EQ(r.attr_int("model/w1", "crc32c"), static_cast<int64_t>(crc32c(w1.raw_data(), w1.nbytes())));
}

TEST_F(Corrupt, FlippedDataByteNamesTheTensorAndTheFile) {
  flip_byte(file_, data_offset(file_, "model/w1") + 1234);
  const std::string msg = load_error();
  EXPECT_TRUE(has(msg, "checksum mismatch")) << msg;
  EXPECT_TRUE(has(msg, "model/w1")) << msg;
  EXPECT_TRUE(has(msg, file_)) << msg;
}

TEST_F(Corrupt, TruncatedFileNamesTheFile) {
  for (double frac : {0.9, 0.5, 0.1}) {
    SetUp();  // a fresh checkpoint each time
    fs::resize_file(file_, static_cast<uintmax_t>(fs::file_size(file_) * frac));
    const std::string msg = load_error();
    EXPECT_TRUE(has(msg, file_)) << frac << ": " << msg;
  }
}

TEST_F(Corrupt, MissingDatasetNamesItAndTheFile) {
  hid_t f = H5Fopen(file_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(H5Ldelete(f, "model/w2", H5P_DEFAULT), 0);
  H5Fclose(f);
  const std::string msg = load_error();
  EXPECT_TRUE(has(msg, "model/w2")) << msg;
  EXPECT_TRUE(has(msg, file_)) << msg;
  EXPECT_TRUE(has(msg, "no such dataset")) << msg;
}

TEST_F(Corrupt, FlippedByteAnywhereIsAnErrorOrAnExactLoad) {
  // Every 97th byte of the file, one at a time: the load either fails with a
  // CheckpointError naming the file or returns exactly the tensors that were written (a
  // byte HDF5 never reads, such as free space). Never a crash, never different data.
  const std::string pristine = tmp_ / "pristine.h5";
  fs::copy_file(file_, pristine);
  const uintmax_t size = fs::file_size(pristine);
  int errors = 0, exact = 0;
  for (uintmax_t off = 0; off < size; off += 97) {
    fs::copy_file(pristine, file_, fs::copy_options::overwrite_existing);
    flip_byte(file_, off);
    TensorsPart part(3, 1000);
    try {
      load_checkpoint(dir_, {&part}, comm_);
      ASSERT_EQ(part.loaded.size(), 3u);
      for (int i = 0; i < 3; ++i)
        ASSERT_EQ(0, std::memcmp(part.loaded[i].raw_data(), random_f32({1000}, 10 + i).raw_data(), 4000))
            << "byte " << off << " flipped: tensor w" << i << " loaded with different data";
      ++exact;
    } catch (const CheckpointError& e) {
      ASSERT_TRUE(has(e.what(), file_)) << "byte " << off << ": " << e.what();
      ++errors;
    }
  }
  EXPECT_GT(errors, 100);  // the 12 KB of tensor data alone give ~124 offsets
  EXPECT_GT(exact, 0);  // some bytes are never read (free space, padding)
  EXPECT_EQ(open_h5_ids(), 0);
}

TEST_F(Corrupt, FilesWithoutChecksumsStillLoad) {
  // A file written before checksums existed: the same datasets, no crc32c attributes.
  hid_t f = H5Fopen(file_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  for (const char* n : {"model/w0", "model/w1", "model/w2", "config"}) ASSERT_GE(H5Adelete_by_name(f, n, "crc32c", H5P_DEFAULT), 0);
  H5Fclose(f);
  {
    H5Reader r(file_);
    EXPECT_FALSE(r.has_checksum("model/w0"));
  }
  TensorsPart part(3, 1000);
  load_checkpoint(dir_, {&part}, comm_);
  EXPECT_EQ(0, std::memcmp(part.loaded[0].raw_data(), random_f32({1000}, 10).raw_data(), 4000));
}

TEST_F(Corrupt, CompleteMarkerWithoutWorldSizeIsACheckpointError) {
  const std::string marker = dir_ + "/COMPLETE";
  test::write_file(marker, "{\"step\": 7, \"files\": [\"rank_00000.h5\"]}\n");
  std::string msg = load_error();
  EXPECT_TRUE(has(msg, marker)) << msg;
  EXPECT_TRUE(has(msg, "world_size")) << msg;
  test::write_file(marker, "{\"step\": 7, \"world_size\": \"one\"}\n");
  msg = load_error();
  EXPECT_TRUE(has(msg, "world_size")) << msg;
  test::write_file(marker, "[1, 2]\n");
  msg = load_error();
  EXPECT_TRUE(has(msg, marker)) << msg;
  test::write_file(marker, "{\"step\": 7, \"wor");
  msg = load_error();
  EXPECT_TRUE(has(msg, marker)) << msg;
}

}  // namespace
}  // namespace lathe::train
