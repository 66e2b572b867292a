// safetensors: round trips for every dtype (bit exact), a hand-built file read without the
// writer, sharded checkpoints, and every class of corrupt file naming the file and tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/memory.h"
#include "models/safetensors.h"

namespace fs = std::filesystem;
using namespace lathe;
using lathe::models::NamedTensors;
using lathe::models::SafetensorsFile;
using lathe::models::SafetensorsLoader;

namespace {

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("lathe_st_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

// Tensor of the given dtype whose bytes are random bit patterns (any pattern must survive).
Tensor random_bits(const Shape& shape, DType dt, Generator& gen) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(gen.next_u32());
  return t;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.raw_data());
  return std::vector<uint8_t>(p, p + c.nbytes());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// 8-byte LE length + header + buffer.
std::string st_file(const std::string& header, const std::string& buffer) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + buffer;
}

// Runs fn, expects a lathe::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks \"" << p << "\": " << msg;
    return;
  }
  ADD_FAILURE() << "expected a lathe::Error";
}

const std::vector<DType> kAllDTypes = {DType::f64, DType::f32, DType::bf16, DType::f16,
                                       DType::i64, DType::i32, DType::u8,   DType::i8};

}  // namespace

TEST_F(SafetensorsTest, RoundTripEveryDtypeBitExact) {
  Generator gen(7);
  NamedTensors ts;
  for (DType dt : kAllDTypes) {
    const std::string d = dtype_name(dt);
    ts.emplace_back(d + ".mat", random_bits({3, 5}, dt, gen));
    // A non-contiguous view: the writer must pack it in logical (C) order.
    ts.emplace_back(d + ".transposed", random_bits({4, 3}, dt, gen).transpose(0, 1));
    ts.emplace_back(d + ".scalar", random_bits({}, dt, gen));
    ts.emplace_back(d + ".empty", Tensor::empty({0, 4}, dt));
    ts.emplace_back(d + ".odd", random_bits({7}, dt, gen));  // odd byte counts shift later offsets
  }
  const std::string file = path("all.safetensors");
  models::save_safetensors(file, ts, {{{"format", "pt"}, {"note", "round trip"}}});

  const int64_t other_before = memory_stats().current_of(MemCategory::other);
  int64_t total_before = memory_stats().total_current;
  std::vector<Tensor> loaded;
  {
    SafetensorsFile f(file);
    EXPECT_EQ(f.size(), ts.size());
    EXPECT_EQ(f.metadata().at("format"), "pt");
    EXPECT_EQ(f.metadata().at("note"), "round trip");
    EXPECT_EQ(f.data_start() % 8, 0u) << "header must be padded to an 8-byte boundary";
    for (const auto& [name, t] : ts) {
      ASSERT_TRUE(f.contains(name));
      Tensor r = f.get(name);
      EXPECT_EQ(r.dtype(), t.dtype()) << name;
      EXPECT_EQ(r.shape(), t.shape()) << name;
      EXPECT_TRUE(r.is_contiguous());
      EXPECT_EQ(bytes_of(r), bytes_of(t)) << name;
      loaded.push_back(r);
    }
    // Views of the mapping allocate nothing that the accounting sees.
    EXPECT_EQ(memory_stats().current_of(MemCategory::other), other_before);
    EXPECT_EQ(memory_stats().total_current, total_before);
    // Two reads of one tensor view the same mapped bytes.
    EXPECT_EQ(f.get("f32.mat").raw_data(), f.get("f32.mat").raw_data());
  }
  // The mapping outlives the SafetensorsFile as long as a tensor views it.
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(bytes_of(loaded[i]), bytes_of(ts[i].second)) << ts[i].first;
  // Writing into a loaded tensor changes this process's copy, never the file.
  Tensor m = loaded[0];
  ASSERT_EQ(m.dtype(), DType::f64);
  m.fill_(42.0);
  SafetensorsFile again(file);
  EXPECT_EQ(bytes_of(again.get(ts[0].first)), bytes_of(ts[0].second));
}

TEST_F(SafetensorsTest, LayoutOrderAndPadding) {
  NamedTensors ts = {{"zeta", Tensor::arange(0, 3, 1, DType::f32)},
                     {"alpha", Tensor::arange(0, 5, 1, DType::i64)},
                     {"mid", Tensor::scalar(2.5, DType::f16)}};
  const std::string given = path("given.safetensors"), sorted = path("sorted.safetensors"),
                    aligned = path("aligned.safetensors");
  models::save_safetensors(given, ts, {{}, models::SafetensorsOrder::given});
  models::save_safetensors(sorted, ts, {{}, models::SafetensorsOrder::by_name});
  models::save_safetensors(aligned, ts);
  SafetensorsFile g(given), s(sorted), a(aligned);
  EXPECT_EQ(g.entry("zeta").begin, 0u);
  EXPECT_EQ(g.entry("alpha").begin, 12u);
  EXPECT_EQ(g.entry("mid").begin, 52u);
  EXPECT_EQ(s.entry("alpha").begin, 0u);
  EXPECT_EQ(s.entry("mid").begin, 40u);
  EXPECT_EQ(s.entry("zeta").begin, 42u);
  // Aligned: 8-byte elements first, then 4, then 2.
  EXPECT_EQ(a.entry("alpha").begin, 0u);
  EXPECT_EQ(a.entry("zeta").begin, 40u);
  EXPECT_EQ(a.entry("mid").begin, 52u);
  // Misaligned tensors (alpha at 12 in `given`, zeta at 42 in `sorted`) still read right.
  for (const SafetensorsFile* f : {&g, &s, &a}) {
    EXPECT_EQ(f->get("alpha").to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4})) << f->path();
    EXPECT_EQ(f->get("zeta").to_vector<float>(), (std::vector<float>{0, 1, 2})) << f->path();
    EXPECT_EQ(f->get("mid").item(), 2.5) << f->path();
  }
  EXPECT_TRUE(g.metadata().empty());
  for (const std::string& f : {given, sorted, aligned}) {
    EXPECT_EQ(SafetensorsFile(f).data_start() % 8, 0u);
    // The header (bytes 8..data_start) is JSON followed only by spaces.
    std::ifstream in(f, std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string header = all.substr(8, SafetensorsFile(f).data_start() - 8);
    size_t close = header.rfind('}');
    ASSERT_NE(close, std::string::npos);
    EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);
    EXPECT_EQ(header.size() - close - 1, (8 - (8 + close + 1) % 8) % 8);
  }
  // Re-saving over an existing file replaces it and leaves no temp file behind.
  models::save_safetensors(given, {{"only", Tensor::ones({2}, DType::i32)}});
  EXPECT_EQ(SafetensorsFile(given).names(), std::vector<std::string>{"only"});
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

// A file built byte by byte here (not by the writer) must read back the intended values.
TEST_F(SafetensorsTest, HandBuiltFileParses) {
  std::string buf;
  auto put = [&](std::initializer_list<int> bytes) {
    for (int b : bytes) buf.push_back(static_cast<char>(b));
  };
  put({0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0});              // [0,8)   F32 [2]: 1.5, -2.0
  put({0x07, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF});              // [8,16)  I32 [2]: 7, -1
  put({0x80, 0x3F});                                                  // [16,18) BF16 []: 1.0
  put({0x01, 0x00, 0x01});                                            // [18,21) BOOL [3]: 1 0 1
  put({0x00, 0x3C});                                                  // [21,23) F16 [1]: 1.0 (misaligned)
  put({0x00});                                                        // [23,24) U8 [1]: padding, no hole
  put({0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00});              // [24,32) I64 []: 2^40 + 3
  put({0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xD0, 0xBF});              // [32,40) F64 [1,1]: -0.25
  put({0x80, 0x7F});                                                  // [40,42) I8 [2]: -128, 127
  put({0xFE});                                                        // [42,43) U8 [1]: 254
  std::string header =
      R"({"__metadata__":{"format":"pt","source":"hand"},)"
      R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("ids":{"dtype":"I32","shape":[2],"data_offsets":[8,16]},)"
      R"("s":{"dtype":"BF16","shape":[],"data_offsets":[16,18]},)"
      R"("mask":{"dtype":"BOOL","shape":[3],"data_offsets":[18,21]},)"
      R"("h":{"dtype":"F16","shape":[1],"data_offsets":[21,23]},)"
      R"("pad":{"dtype":"U8","shape":[1],"data_offsets":[23,24]},)"
      R"("big":{"dtype":"I64","shape":[],"data_offsets":[24,32]},)"
      R"("d":{"dtype":"F64","shape":[1,1],"data_offsets":[32,40]},)"
      R"("c":{"dtype":"I8","shape":[2],"data_offsets":[40,42]},)"
      R"("u":{"dtype":"U8","shape":[1],"data_offsets":[42,43]},)"
      R"("none":{"dtype":"F32","shape":[0,3],"data_offsets":[43,43]}})";
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  const std::string file = path("hand.safetensors");
  write_bytes(file, st_file(header, buf));

  SafetensorsFile f(file);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"big", "c", "d", "h", "ids", "mask", "none", "pad", "s", "u", "w"}));
  EXPECT_EQ(f.metadata().at("source"), "hand");
  EXPECT_EQ(f.get("w").to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f.get("ids").to_vector<int32_t>(), (std::vector<int32_t>{7, -1}));
  EXPECT_EQ(f.get("s").dim(), 0);
  EXPECT_EQ(f.get("s").item(), 1.0);
  EXPECT_EQ(f.entry("mask").dtype_name, "BOOL");
  EXPECT_EQ(f.get("mask").dtype(), DType::u8);
  EXPECT_EQ(f.get("mask").to_vector<uint8_t>(), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(f.get("h").dtype(), DType::f16);
  EXPECT_EQ(f.get("h").to_vector<float>(), std::vector<float>{1.0f});
  EXPECT_EQ(f.get("big").data<int64_t>()[0], (int64_t{1} << 40) + 3);
  EXPECT_EQ(f.get("d").shape(), (Shape{1, 1}));
  EXPECT_EQ(f.get("d").at({0, 0}), -0.25);
  EXPECT_EQ(f.get("c").to_vector<int32_t>(), (std::vector<int32_t>{-128, 127}));
  EXPECT_EQ(f.get("u").to_vector<int32_t>(), std::vector<int32_t>{254});
  EXPECT_EQ(f.get("none").shape(), (Shape{0, 3}));
  EXPECT_EQ(f.get("none").numel(), 0);

  // The loader takes a single file too.
  SafetensorsLoader l(file);
  EXPECT_EQ(l.size(), 11u);
  EXPECT_EQ(l.get("w").to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(l.metadata().at("format"), "pt");
}

TEST_F(SafetensorsTest, ShardedWriteAndRead) {
  Generator gen(3);
  NamedTensors ts;
  // 100 x f32 = 400 bytes each, one 2000-byte tensor larger than a shard, some small ones.
  for (int i = 0; i < 5; ++i) ts.emplace_back("layers." + std::to_string(i) + ".w", random_bits({10, 10}, DType::f32, gen));
  ts.emplace_back("embed", random_bits({250}, DType::f64, gen));
  ts.emplace_back("bias", random_bits({3}, DType::bf16, gen));
  ts.emplace_back("empty", Tensor::empty({0}, DType::i8));
  const std::string dir = path("ckpt");
  auto written = models::save_safetensors_sharded(dir, ts, 900, {{{"format", "pt"}}});

  // Aligned order: embed(2000, f64) layers.0..4 (400 each, f32) bias(6, bf16) empty(0, i8)
  // -> shards [embed] [l0, l1] [l2, l3] [l4, bias, empty]
  ASSERT_EQ(written.size(), 5u);
  EXPECT_EQ(written[0], "model-00001-of-00004.safetensors");
  EXPECT_EQ(written[3], "model-00004-of-00004.safetensors");
  EXPECT_EQ(written[4], "model.safetensors.index.json");
  for (const auto& w : written) EXPECT_TRUE(fs::exists(fs::path(dir) / w)) << w;

  std::ifstream in(fs::path(dir) / "model.safetensors.index.json");
  nlohmann::json index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 5u * 400 + 2000 + 6);
  EXPECT_EQ(index["weight_map"]["embed"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.1.w"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.2.w"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.4.w"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["bias"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["empty"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"].size(), ts.size());

  for (const std::string& open_as : {dir, dir + "/model.safetensors.index.json"}) {
    SafetensorsLoader l(open_as);
    EXPECT_EQ(l.size(), ts.size());
    EXPECT_EQ(l.files().size(), 4u);
    EXPECT_EQ(l.metadata().at("total_size"), std::to_string(5 * 400 + 2000 + 6));
    for (const auto& [name, t] : ts) {
      Tensor r = l.get(name);
      EXPECT_EQ(r.shape(), t.shape()) << name;
      EXPECT_EQ(r.dtype(), t.dtype()) << name;
      EXPECT_EQ(bytes_of(r), bytes_of(t)) << name;
    }
    EXPECT_NE(l.file_of("layers.3.w").find("model-00003-of-00004"), std::string::npos);
    // Each shard carries the metadata.
    EXPECT_EQ(SafetensorsFile(l.file_of("embed")).metadata().at("format"), "pt");
  }

  // Everything fitting in one shard gives a single model.safetensors and removes the stale index.
  auto single = models::save_safetensors_sharded(dir, ts, 0);
  EXPECT_EQ(single, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  SafetensorsLoader l(dir);
  EXPECT_EQ(l.files().size(), 1u);
  EXPECT_EQ(bytes_of(l.get("embed")), bytes_of(ts[5].second));
}

TEST_F(SafetensorsTest, TruncatedFilesAreClearErrors) {
  const std::string good = path("good.safetensors");
  models::save_safetensors(good, {{"a", Tensor::ones({4}, DType::f32)}, {"b", Tensor::ones({8}, DType::f64)}});
  std::ifstream in(good, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  const std::string cut = path("cut.safetensors");
  write_bytes(cut, all.substr(0, all.size() - 5));  // loses the end of "a" (f64 "b" comes first)
  expect_error([&] { SafetensorsFile f(cut); }, {cut, "\"a\"", "[64, 80]", "75 bytes", "truncated"});

  const std::string tiny = path("tiny.safetensors");
  write_bytes(tiny, all.substr(0, 5));
  expect_error([&] { SafetensorsFile f(tiny); }, {tiny, "truncated"});

  const std::string header_cut = path("header_cut.safetensors");
  write_bytes(header_cut, all.substr(0, 30));  // inside the JSON header
  expect_error([&] { SafetensorsFile f(header_cut); }, {header_cut, "exceeds the file size"});

  expect_error([&] { SafetensorsFile f(path("missing.safetensors")); }, {"missing.safetensors", "cannot open"});
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFile) {
  const std::string file = path("long.safetensors");
  std::string bytes = st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  bytes[0] = static_cast<char>(0xE8);  // N = 1000
  bytes[1] = 0x03;
  write_bytes(file, bytes);
  expect_error([&] { SafetensorsFile f(file); }, {file, "header length 1000", "exceeds the file size"});
  // An absurd length (all bits set) must be caught before any allocation.
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(0xFF);
  write_bytes(file, bytes);
  expect_error([&] { SafetensorsFile f(file); }, {file, "exceeds the file size"});
}

TEST_F(SafetensorsTest, CorruptHeadersNameFileAndTensor) {
  struct Case {
    std::string header, buffer;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, '\0'), {"\"a\"", "\"b\"", "overlap"}},
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(12, '\0'),
       {"\"w\"", "span 8 bytes", "needs 12"}},
      {R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,0]}})", std::string(16, '\0'), {"\"w\"", "begin > end"}},
      {R"({"q":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0'),
       {"\"q\"", "unsupported dtype", "F8_E4M3"}},
      {R"({"q":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0'), {"\"q\"", "C64"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", std::string(8, '\0'), {"malformed JSON"}},
      {R"([1,2,3])", "", {"JSON object"}},
      {R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
       std::string(2, '\0'), {"duplicate key", "\"a\""}},
      {R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", std::string(1, '\0'), {"\"a\"", "non-negative"}},
      {R"({"a":{"dtype":"U8","shape":[1]}})", std::string(1, '\0'), {"\"a\"", "data_offsets"}},
      {R"({"a":{"dtype":"U8","shape":[4611686018427387903,4611686018427387903],"data_offsets":[0,1]}})",
       std::string(1, '\0'), {"\"a\"", "more than 2^64"}},
      {R"({"__metadata__":{"format":3}})", "", {"__metadata__", "must be a string"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string file = path("bad" + std::to_string(i) + ".safetensors");
    write_bytes(file, st_file(cases[i].header, cases[i].buffer));
    std::vector<std::string> expect = cases[i].expect;
    expect.push_back(file);
    SCOPED_TRACE(cases[i].header);
    expect_error([&] { SafetensorsFile f(file); }, expect);
  }
}

TEST_F(SafetensorsTest, LoaderAndWriterErrors) {
  const std::string file = path("x.safetensors");
  models::save_safetensors(file, {{"a", Tensor::ones({2})}});
  expect_error([&] { SafetensorsFile(file).get("nope"); }, {file, "\"nope\""});
  expect_error([&] { SafetensorsLoader(file).get("nope"); }, {file, "\"nope\""});
  expect_error([&] { SafetensorsLoader l(path("empty_dir_missing")); }, {"does not exist"});
  expect_error([&] { SafetensorsLoader l(dir_.string()); }, {"model.safetensors.index.json"});

  // An index that names a missing shard, or a tensor its shard lacks.
  const std::string idx_dir = path("idx");
  fs::create_directories(idx_dir);
  models::save_safetensors(idx_dir + "/part.safetensors", {{"a", Tensor::ones({2})}});
  write_bytes(idx_dir + "/model.safetensors.index.json",
              R"({"metadata":{},"weight_map":{"a":"part.safetensors","b":"part.safetensors"}})");
  expect_error([&] { SafetensorsLoader l(idx_dir); }, {"\"b\"", "part.safetensors", "no such tensor"});
  write_bytes(idx_dir + "/model.safetensors.index.json", R"({"weight_map":{"a":"gone.safetensors"}})");
  expect_error([&] { SafetensorsLoader l(idx_dir); }, {"gone.safetensors", "does not exist"});
  write_bytes(idx_dir + "/model.safetensors.index.json", R"({"metadata":{}})");
  expect_error([&] { SafetensorsLoader l(idx_dir); }, {"weight_map"});

  expect_error([&] { models::save_safetensors(file, {{"a", Tensor::ones({1})}, {"a", Tensor::ones({1})}}); },
               {"\"a\"", "twice"});
  expect_error([&] { models::save_safetensors(file, {{"__metadata__", Tensor::ones({1})}}); }, {"reserved"});
  expect_error([&] { models::save_safetensors(file, {{"u", Tensor()}}); }, {"\"u\"", "undefined"});
  expect_error([&] { models::save_safetensors(path("no/such/dir/f.safetensors"), {{"a", Tensor::ones({1})}}); },
               {"cannot create"});
  // The failed saves left the earlier file intact.
  EXPECT_EQ(SafetensorsFile(file).get("a").to_vector<float>(), (std::vector<float>{1, 1}));
}

// A header length off by one shifts every tensor by a byte. Cutting one padding space off
// the header still leaves valid JSON, so only the layout check can notice: the tensors no
// longer fill the data buffer exactly.
TEST_F(SafetensorsTest, TensorsMustFillTheDataBufferExactly) {
  const std::string good = path("good.safetensors");
  models::save_safetensors(good, {{"a", Tensor::ones({4}, DType::f32)}, {"b", Tensor::ones({3}, DType::f32)}});
  std::ifstream in(good, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  std::memcpy(&n, all.data(), 8);
  ASSERT_EQ(all[8 + n - 1], ' ') << "the writer pads the header with spaces";  // so n-1 still parses

  std::string shifted = all;
  const uint64_t m = n - 1;
  std::memcpy(&shifted[0], &m, 8);
  const std::string off = path("off_by_one.safetensors");
  write_bytes(off, shifted);
  expect_error([&] { SafetensorsFile f(off); }, {off, "fill", "header length"});

  // Trailing bytes after the last tensor.
  const std::string trail = path("trailing.safetensors");
  write_bytes(trail, all + "xx");
  expect_error([&] { SafetensorsFile f(trail); }, {trail, "tensors end at byte 28", "has 30 bytes"});

  // A gap between tensors, and a first tensor that does not start at 0.
  const std::string gap = path("gap.safetensors");
  write_bytes(gap, st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                           R"("b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})",
                           "xyz"));
  expect_error([&] { SafetensorsFile f(gap); }, {gap, "\"b\"", "starts at byte 2", "\"a\" ends at 1"});
  const std::string late = path("late.safetensors");
  write_bytes(late, st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", "xy"));
  expect_error([&] { SafetensorsFile f(late); }, {late, "\"a\"", "must start at 0"});
  // Empty tensors sit anywhere along the chain; a file with only those has an empty buffer.
  const std::string empties = path("empties.safetensors");
  write_bytes(empties, st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                               R"("e":{"dtype":"F32","shape":[0],"data_offsets":[1,1]},)"
                               R"("b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                               "xy"));
  EXPECT_EQ(SafetensorsFile(empties).size(), 3u);
}

TEST_F(SafetensorsTest, FirstNonFiniteFindsNanAndInfinityInEveryFloatDtype) {
  const std::string file = path("nf.safetensors");
  Tensor f32 = Tensor::from_vector(std::vector<float>{1.f, -2.f, 3.f, 4.f}, {4});
  Tensor f64 = Tensor::from_vector(std::vector<double>{1.0, 2.0, -INFINITY}, {3});
  Tensor bf = Tensor::from_vector(std::vector<float>{0.5f, NAN}, {2}).to(DType::bf16);
  Tensor h = Tensor::from_vector(std::vector<float>{65504.f, 1.f, 0.f}, {3}).to(DType::f16);  // f16 max is finite
  Tensor i = Tensor::from_vector(std::vector<int32_t>{-1, 0x7f800000}, {2});  // inf's bits as an int: finite
  models::save_safetensors(file, {{"f32", f32}, {"f64", f64}, {"bf", bf}, {"h", h}, {"i", i}});
  SafetensorsFile f(file);
  EXPECT_EQ(f.first_non_finite("f32"), -1);
  EXPECT_EQ(f.first_non_finite("f64"), 2);
  EXPECT_EQ(f.first_non_finite("bf"), 1);
  EXPECT_EQ(f.first_non_finite("h"), -1);
  EXPECT_EQ(f.first_non_finite("i"), -1);
  f32.data<float>()[3] = INFINITY;
  models::save_safetensors(file, {{"f32", f32}});
  EXPECT_EQ(SafetensorsLoader(file).first_non_finite("f32"), 3);
}
