// HDF5 shard files: round trip of data and attributes, the checks on reading (truncated,
// damaged, inconsistent files), and the atomic file write.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "tests/common/test_helpers.h"
#include "core/rng.h"
#include "data/shards.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::data;

namespace {

using lathe::test::expect_error;

std::string tmp_dir(const std::string& name) { return test::fresh_dir("lathe_test_shards_" + name); }

// Random documents: lengths in [0, 40), ids in [0, vocab), mask bits random.
ShardData random_shard(uint64_t seed, int64_t docs, int32_t vocab, bool with_mask) {
  Generator g(seed);
  ShardData d;
  for (int64_t i = 0; i < docs; ++i) {
    const int64_t len = g.next_u32() % 40;
    for (int64_t t = 0; t < len; ++t) {
      d.tokens.push_back(static_cast<int32_t>(g.next_u32() % vocab));
      if (with_mask) d.loss_mask.push_back(g.next_u32() & 1);
    }
    d.doc_offsets.push_back(static_cast<int64_t>(d.tokens.size()));
  }
  return d;
}

ShardMeta meta_for(const std::string& format, const std::string& split = "train") {
  ShardMeta m;
  m.tokenizer_id = "bpe:0123456789abcdef";
  m.vocab_size = 1000;
  m.format = format;
  m.split = split;
  m.shard_index = 3;
  m.sources = {"a.txt", "dir/b \"quoted\".jsonl"};
  m.prompt_template = format == "instruction" ? "default" : "";
  m.eos_id = 999;
  m.bos_id = -1;
  return m;
}

}  // namespace

TEST(Shards, RoundTripLmAndInstruction) {
  const std::string dir = tmp_dir("roundtrip");
  for (const std::string format : {"lm", "instruction"}) {
    const std::string path = dir + "/" + format + ".h5";
    ShardData d = random_shard(format.size(), 50, 1000, format == "instruction");
    write_shard(path, meta_for(format), d);
    ShardMeta m;
    ShardData r = read_shard(path, &m);
    EXPECT_EQ(r.tokens, d.tokens);
    EXPECT_EQ(r.doc_offsets, d.doc_offsets);
    EXPECT_EQ(r.loss_mask, d.loss_mask);
    EXPECT_EQ(m.tokenizer_id, "bpe:0123456789abcdef");
    EXPECT_EQ(m.vocab_size, 1000);
    EXPECT_EQ(m.format, format);
    EXPECT_EQ(m.split, "train");
    EXPECT_EQ(m.shard_index, 3);
    EXPECT_EQ(m.sources, (std::vector<std::string>{"a.txt", "dir/b \"quoted\".jsonl"}));
    EXPECT_EQ(m.eos_id, 999);
    EXPECT_EQ(m.bos_id, -1);
    EXPECT_EQ(m.num_documents, 50);
    EXPECT_EQ(m.num_tokens, static_cast<int64_t>(d.tokens.size()));
    EXPECT_EQ(m.lathe_version, kLatheVersion);
    // No temporary file is left beside it.
    int files = 0;
    for (auto& e : fs::directory_iterator(dir)) files += e.path().filename().string().find(".tmp") != std::string::npos;
    EXPECT_EQ(files, 0);
  }
  // An empty shard (no documents) is valid too.
  write_shard(dir + "/empty.h5", meta_for("lm"), ShardData());
  ShardData e = read_shard(dir + "/empty.h5");
  EXPECT_TRUE(e.tokens.empty());
  EXPECT_EQ(e.doc_offsets, std::vector<int64_t>{0});
  fs::remove_all(dir);
}

TEST(Shards, HdfLayoutIsPlain) {
  // What h5py would see: int32 tokens, int64 offsets, uint8 mask, string attributes.
  const std::string dir = tmp_dir("layout");
  const std::string path = dir + "/s.h5";
  write_shard(path, meta_for("instruction"), random_shard(1, 5, 1000, true));
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  auto type_of = [&](const char* name, H5T_class_t& cls, size_t& size, H5T_sign_t& sign) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t t = H5Dget_type(d);
    cls = H5Tget_class(t);
    size = H5Tget_size(t);
    sign = H5Tget_sign(t);
    H5Tclose(t);
    H5Dclose(d);
  };
  H5T_class_t cls;
  size_t size;
  H5T_sign_t sign;
  type_of("tokens", cls, size, sign);
  EXPECT_TRUE(cls == H5T_INTEGER && size == 4 && sign == H5T_SGN_2);
  type_of("doc_offsets", cls, size, sign);
  EXPECT_TRUE(cls == H5T_INTEGER && size == 8 && sign == H5T_SGN_2);
  type_of("loss_mask", cls, size, sign);
  EXPECT_TRUE(cls == H5T_INTEGER && size == 1 && sign == H5T_SGN_NONE);
  for (const char* a : {"tokenizer_id", "vocab_size", "format", "split", "sources", "num_documents", "num_tokens",
                        "lathe_version", "template", "eos_id"})
    EXPECT_GT(H5Aexists(f, a), 0) << a;
  H5Fclose(f);
  fs::remove_all(dir);
}

TEST(Shards, WriteRejectsInconsistentData) {
  const std::string dir = tmp_dir("bad_write");
  ShardData d = random_shard(2, 4, 1000, false);
  d.doc_offsets.back() -= 1;
  expect_error([&] { write_shard(dir + "/x.h5", meta_for("lm"), d); }, {dir + "/x.h5", "doc_offsets end at"});
  ShardData m = random_shard(3, 4, 1000, true);
  m.loss_mask.pop_back();
  expect_error([&] { write_shard(dir + "/y.h5", meta_for("instruction"), m); }, {"loss_mask has"});
  expect_error([&] { write_shard(dir + "/z.h5", meta_for("lm"), m); }, {"no loss_mask"});
  ShardMeta bad = meta_for("lm");
  bad.format = "chat";
  expect_error([&] { write_shard(dir + "/w.h5", bad, ShardData()); }, {"format", "chat"});
  EXPECT_TRUE(fs::is_empty(dir));  // nothing written, no temporaries left
  fs::remove_all(dir);
}

TEST(Shards, ReadRejectsTruncatedAndDamagedFiles) {
  const std::string dir = tmp_dir("bad_read");
  const std::string good = dir + "/good.h5";
  write_shard(good, meta_for("lm"), random_shard(4, 200, 1000, false));
  const auto size = fs::file_size(good);
  // Truncated to half, to a few bytes, and empty.
  for (uintmax_t keep : {size / 2, uintmax_t{100}, uintmax_t{0}}) {
    const std::string p = dir + "/cut_" + std::to_string(keep) + ".h5";
    fs::copy_file(good, p);
    fs::resize_file(p, keep);
    expect_error([&] { read_shard(p); }, {p});
  }
  // A text file with an .h5 name.
  std::ofstream(dir + "/text.h5") << "not hdf5";
  expect_error([&] { read_shard(dir + "/text.h5"); }, {dir + "/text.h5", "not a readable HDF5 file"});
  expect_error([&] { read_shard(dir + "/missing.h5"); }, {dir + "/missing.h5", "does not exist"});

  // Tokens outside the vocabulary.
  ShardMeta small = meta_for("lm");
  small.vocab_size = 10;
  ShardData d = random_shard(5, 3, 10, false);
  d.tokens.push_back(10);
  d.doc_offsets.back() += 1;
  write_shard(dir + "/vocab.h5", small, d);
  expect_error([&] { read_shard(dir + "/vocab.h5"); }, {dir + "/vocab.h5", "outside the vocabulary of 10"});

  // An HDF5 file that is not a shard.
  hid_t f = H5Fcreate((dir + "/other.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(f);
  expect_error([&] { read_shard(dir + "/other.h5"); }, {dir + "/other.h5", "shard_format", "missing"});
  fs::remove_all(dir);
}

TEST(Shards, OpenSingleFileChecksSplitAndTokenizer) {
  const std::string dir = tmp_dir("single");
  ShardData d = random_shard(6, 20, 1000, false);
  write_shard(dir + "/val_00000.h5", meta_for("lm", "val"), d);
  ShardSet s = open_shards(dir + "/val_00000.h5", "val");
  EXPECT_EQ(*s.tokens, d.tokens);
  EXPECT_EQ(s.doc_offsets, d.doc_offsets);
  EXPECT_FALSE(s.has_loss_mask());
  EXPECT_EQ(open_shards(dir + "/val_00000.h5", "").split, "val");
  expect_error([&] { open_shards(dir + "/val_00000.h5", "train"); }, {"belongs to split 'val'"});
  expect_error([&] { open_shards(dir + "/val_00000.h5", "val", "byte"); },
               {"bpe:0123456789abcdef", "'byte'", dir + "/val_00000.h5"});
  // A directory without index.json.
  expect_error([&] { open_shards(dir, "val"); }, {dir, "no index.json"});
  fs::remove_all(dir);
}

TEST(Shards, AtomicFileWrite) {
  const std::string dir = tmp_dir("atomic");
  write_file_atomic(dir + "/a.json", "first");
  write_file_atomic(dir + "/a.json", "second, longer");
  std::ifstream in(dir + "/a.json");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "second, longer");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  expect_error([&] { write_file_atomic(dir + "/no/such/dir/a.json", "x"); }, {"no/such/dir"});
  fs::remove_all(dir);
}
