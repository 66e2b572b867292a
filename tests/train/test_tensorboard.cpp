#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/common/test_helpers.h"
#include "train/crc32c.h"
#include "train/tensorboard.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

using test::error_of;
using test::TmpDir;

uint64_t le(const std::string& s, size_t pos, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[pos + i])) << (8 * i);
  return v;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(static_cast<char>(x));
  return s;
}

// The wire bytes of Event{wall_time: 1.0, step: 5, summary {value {tag: "a" simple_value: 1.0}}},
// worked out by hand from the protobuf encoding rules.
TEST(TensorBoard, EventWireFormat) {
  std::string expect = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F,  // field 1, fixed64: 1.0
                              0x10, 0x05,                          // field 2, varint: 5
                              0x2A, 0x0A,                          // field 5, 10 bytes: Summary
                              0x0A, 0x08,                          //   field 1, 8 bytes: Value
                              0x0A, 0x01, 'a',                     //     tag "a"
                              0x15, 0, 0, 0x80, 0x3F});            //     fixed32: 1.0f
  EXPECT_EQ(encode_tb_event(1.0, 5, "", {{"a", 1.0f}}), expect);
  std::string header = bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00, 0x1A, 0x0D}) + "brain.Event:2";
  EXPECT_EQ(encode_tb_event(0.0, 0, "brain.Event:2", {}), header);

  // Large and negative steps use the full varint range.
  for (int64_t step : {int64_t{300}, int64_t{-1}, int64_t{1} << 40}) {
    TbEvent ev = decode_tb_event(encode_tb_event(2.5, step, "", {{"x/y", -0.25f}}));
    EXPECT_EQ(ev.step, step);
    EXPECT_EQ(ev.wall_time, 2.5);
    ASSERT_EQ(ev.scalars.size(), 1u);
    EXPECT_EQ(ev.scalars[0].first, "x/y");
    EXPECT_EQ(ev.scalars[0].second, -0.25f);
  }
}

TEST(TensorBoard, RecordFraming) {
  std::string data = "hello";
  std::string rec = encode_tfrecord(data);
  ASSERT_EQ(rec.size(), 8 + 4 + data.size() + 4);
  EXPECT_EQ(le(rec, 0, 8), data.size());
  EXPECT_EQ(le(rec, 8, 4), crc32c_mask(crc32c(rec.data(), 8)));
  EXPECT_EQ(rec.substr(12, data.size()), data);
  EXPECT_EQ(le(rec, 12 + data.size(), 4), crc32c_mask(crc32c(data)));
}

std::string write_three(const std::string& logdir) {
  TensorBoardWriter w(logdir);
  w.add_scalar("train/loss", 1, 2.5, 1000.0);
  w.add_scalar("train/loss", 2, 2.25, 1001.0);
  w.add_scalar("train/lr", 2, 3e-4, 1001.5);
  w.close();
  return w.path();
}

TEST(TensorBoard, WriteAndReadBackScalars) {
  TmpDir tmp;
  std::string path = write_three(tmp / "tb");
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  std::string fname = fs::path(path).filename().string();
  EXPECT_EQ(fname.rfind("events.out.tfevents.", 0), 0u) << fname;
  EXPECT_NE(fname.find(host), std::string::npos) << fname;

  // Walk the framing by hand: 4 records (version header + 3 scalars), CRCs valid.
  std::string raw = test::read_file(path);
  size_t pos = 0, n = 0;
  while (pos < raw.size()) {
    ASSERT_LE(pos + 12, raw.size());
    uint64_t len = le(raw, pos, 8);
    EXPECT_EQ(le(raw, pos + 8, 4), crc32c_mask(crc32c(raw.data() + pos, 8)));
    ASSERT_LE(pos + 16 + len, raw.size());
    EXPECT_EQ(le(raw, pos + 12 + len, 4), crc32c_mask(crc32c(raw.data() + pos + 12, len)));
    pos += 16 + len;
    ++n;
  }
  EXPECT_EQ(pos, raw.size());
  EXPECT_EQ(n, 4u);

  std::vector<TbEvent> ev = read_tb_events(path);
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].file_version, "brain.Event:2");
  EXPECT_TRUE(ev[0].scalars.empty());
  struct Want {
    int64_t step;
    double wall;
    const char* tag;
    float value;
  } want[] = {{1, 1000.0, "train/loss", 2.5f}, {2, 1001.0, "train/loss", 2.25f}, {2, 1001.5, "train/lr", 3e-4f}};
  for (int i = 0; i < 3; ++i) {
    const TbEvent& e = ev[i + 1];
    EXPECT_EQ(e.step, want[i].step);
    EXPECT_EQ(e.wall_time, want[i].wall);
    EXPECT_TRUE(e.file_version.empty());
    ASSERT_EQ(e.scalars.size(), 1u);
    EXPECT_EQ(e.scalars[0].first, want[i].tag);
    EXPECT_EQ(e.scalars[0].second, want[i].value);
  }
}

TEST(TensorBoard, CorruptionIsACrcError) {
  TmpDir tmp;
  std::string path = write_three(tmp / "tb");
  const std::string good = test::read_file(path);
  size_t first_len = static_cast<size_t>(le(good, 0, 8));
  size_t second = 16 + first_len;  // start of record 1

  std::string bad = good;
  bad[second + 12 + 3] ^= 0x01;  // one byte inside record 1's data
  test::write_file(path, bad);
  std::string msg = error_of([&] { read_tb_events(path); });
  EXPECT_NE(msg.find("data CRC mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("record 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;

  bad = good;
  bad[second + 1] ^= 0x40;  // record 1's length
  test::write_file(path, bad);
  msg = error_of([&] { read_tb_events(path); });
  EXPECT_NE(msg.find("length CRC mismatch"), std::string::npos) << msg;

  test::write_file(path, good.substr(0, good.size() - 3));
  msg = error_of([&] { read_tb_events(path); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("record 3"), std::string::npos) << msg;
}

TEST(TensorBoard, TwoWritersInOneDirectoryGetDistinctFiles) {
  TmpDir tmp;
  TensorBoardWriter a(tmp / "tb");
  TensorBoardWriter b(tmp / "tb");
  EXPECT_NE(a.path(), b.path());
  a.add_scalars(3, {{"loss", 1.0}, {"lr", 0.5}}, 5.0);
  a.flush();
  std::vector<TbEvent> ev = read_tb_events(a.path());
  ASSERT_EQ(ev.size(), 2u);
  ASSERT_EQ(ev[1].scalars.size(), 2u);
  EXPECT_EQ(ev[1].scalars[0], (std::pair<std::string, float>{"loss", 1.0f}));
  EXPECT_EQ(ev[1].scalars[1], (std::pair<std::string, float>{"lr", 0.5f}));
}

}  // namespace
}  // namespace lathe::train
