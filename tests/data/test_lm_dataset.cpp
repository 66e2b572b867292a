// Packed LM windows, train/validation split, the shuffled resumable rank-aware loader,
// the evaluation loader, and the text source.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "data/lm_dataset.h"
#include "tests/common/test_helpers.h"
#include "data/text_source.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::data;

namespace {

// Token t at position i is 3*i + 1, so a token identifies its position.
std::shared_ptr<const TokenIds> make_tokens(int64_t n) {
  auto v = std::make_shared<TokenIds>();
  for (int64_t i = 0; i < n; ++i) v->push_back(static_cast<int32_t>(3 * i + 1));
  return v;
}
int64_t position_of(int64_t token) { return (token - 1) / 3; }

using lathe::test::expect_error;

std::vector<int64_t> row(const Tensor& t, int64_t r) { return t.select(0, r).to_vector<int64_t>(); }

}  // namespace

TEST(PackedLMDataset, WindowsAndShiftedTargets) {
  auto tokens = make_tokens(23);
  PackedLMDataset ds(tokens, 5);
  EXPECT_EQ(ds.size(), 4);  // windows start at 0, 5, 10, 15; the one at 20 would need 26 tokens
  for (int64_t i = 0; i < ds.size(); ++i) {
    auto in = ds.input(i), tg = ds.target(i);
    ASSERT_EQ(in.size(), 5u);
    ASSERT_EQ(tg.size(), 5u);
    for (int64_t t = 0; t < 5; ++t) {
      EXPECT_EQ(position_of(in[t]), 5 * i + t);
      EXPECT_EQ(position_of(tg[t]), 5 * i + t + 1);
    }
  }
  // Exactly enough tokens for one window, one short of it, and a sub-range.
  EXPECT_EQ(PackedLMDataset(make_tokens(6), 5).size(), 1);
  EXPECT_EQ(PackedLMDataset(make_tokens(5), 5).size(), 0);
  EXPECT_EQ(PackedLMDataset(make_tokens(21), 5).size(), 4);
  PackedLMDataset sub(tokens, 2, 7, 14);
  EXPECT_EQ(sub.size(), 3);
  EXPECT_EQ(position_of(sub.input(0)[0]), 7);
  EXPECT_EQ(position_of(sub.target(2)[1]), 13);
  expect_error([&] { ds.window(4); }, {"window 4", "4 windows"});
  expect_error([&] { PackedLMDataset(tokens, 0); }, {"seq_len"});
  expect_error([&] { PackedLMDataset(tokens, 4, 10, 30); }, {"[10, 30)", "23 tokens"});
}

TEST(PackedLMDataset, SplitIsTheDisjointTail) {
  auto tokens = make_tokens(101);
  PackedLMDataset ds(tokens, 4);
  ASSERT_EQ(ds.size(), 25);
  for (double f : {0.04, 0.2, 0.5}) {
    auto [train, val] = ds.split(f);
    EXPECT_EQ(val.size(), std::llround(25 * f)) << f;
    EXPECT_GE(train.size() + val.size(), 24) << f;  // at most one window lost to the gap
    int64_t max_train = -1, min_val = 1 << 30;
    for (int64_t i = 0; i < train.size(); ++i) max_train = std::max<int64_t>(max_train, position_of(train.target(i).back()));
    for (int64_t i = 0; i < val.size(); ++i) min_val = std::min<int64_t>(min_val, position_of(val.input(i)[0]));
    EXPECT_LT(max_train, min_val) << "train and validation share a token at fraction " << f;
    EXPECT_EQ(val.end(), 101);  // validation is the tail
    EXPECT_EQ(train.begin(), 0);
  }
  auto [all, none] = ds.split(0.0);
  EXPECT_EQ(all.size(), 25);
  EXPECT_EQ(none.size(), 0);
  // A tiny fraction still gives one validation window.
  EXPECT_EQ(ds.split(0.001).second.size(), 1);
  expect_error([&] { ds.split(1.0); }, {"[0, 1)"});
  expect_error([&] { PackedLMDataset(make_tokens(9), 4).split(0.5); }, {"too few"});
}

TEST(LMLoader, BatchesHoldTheirWindows) {
  PackedLMDataset ds(make_tokens(200), 6);
  LMLoader loader(ds, {4, 0, 1, 11, true});
  for (int step = 0; step < 10; ++step) {
    LMBatch b = loader.next();
    ASSERT_EQ(b.ids.shape(), (Shape{4, 6}));
    ASSERT_EQ(b.targets.shape(), (Shape{4, 6}));
    EXPECT_EQ(b.ids.dtype(), DType::i64);
    EXPECT_EQ(b.targets.dtype(), DType::i64);
    for (int64_t r = 0; r < 4; ++r) {
      const auto in = ds.input(b.windows[r]), tg = ds.target(b.windows[r]);
      EXPECT_EQ(row(b.ids, r), std::vector<int64_t>(in.begin(), in.end()));
      EXPECT_EQ(row(b.targets, r), std::vector<int64_t>(tg.begin(), tg.end()));
    }
  }
}

TEST(LMLoader, EpochOrderIsDeterministicAndAPermutation) {
  PackedLMDataset ds(make_tokens(24 * 5 + 1), 5);
  ASSERT_EQ(ds.size(), 24);
  LMLoaderOptions o{3, 0, 1, 42, true};
  LMLoader a(ds, o), b(ds, o);
  o.seed = 43;
  LMLoader other_seed(ds, o);
  EXPECT_EQ(a.batches_per_epoch(), 8);
  std::vector<std::vector<int64_t>> epochs(3);
  for (int e = 0; e < 3; ++e) {
    for (int s = 0; s < 8; ++s) {
      LMBatch x = a.next(), y = b.next();
      EXPECT_EQ(x.windows, y.windows);
      EXPECT_EQ(x.epoch, e);
      EXPECT_EQ(x.step, s);
      epochs[e].insert(epochs[e].end(), x.windows.begin(), x.windows.end());
    }
    // Every window exactly once per epoch, and the epoch's order is what epoch_order says.
    std::vector<int64_t> sorted = epochs[e];
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(sorted[i], i);
    EXPECT_EQ(epochs[e], a.epoch_order(e));
  }
  EXPECT_EQ(a.state(), (LMLoader::State{3, 0}));  // epochs wrap on their own
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  EXPECT_NE(a.epoch_order(0), other_seed.epoch_order(0));
  // Not shuffled: the identity every epoch.
  LMLoader plain(ds, {3, 0, 1, 42, false});
  std::vector<int64_t> identity(24);
  for (int64_t i = 0; i < 24; ++i) identity[i] = i;
  EXPECT_EQ(plain.epoch_order(5), identity);
}

TEST(LMLoader, ShuffleIsUniform) {
  // Over many epochs each window lands in each position about equally often (a biased or
  // cyclic (Sattolo) shuffle fails this: Sattolo never leaves a window in place).
  PackedLMDataset ds(make_tokens(10 * 2 + 1), 2);
  ASSERT_EQ(ds.size(), 10);
  LMLoader loader(ds, {1, 0, 1, 5, true});
  const int epochs = 4000;
  std::vector<std::vector<int>> freq(10, std::vector<int>(10, 0));
  for (int e = 0; e < epochs; ++e) {
    auto order = loader.epoch_order(e);
    for (int p = 0; p < 10; ++p) ++freq[p][order[p]];
  }
  for (int p = 0; p < 10; ++p)
    for (int w = 0; w < 10; ++w) EXPECT_NEAR(freq[p][w] / double(epochs), 0.1, 0.025) << p << " " << w;
}

TEST(LMLoader, PartialEpochSkipsTheRemainder) {
  PackedLMDataset ds(make_tokens(26 * 3 + 1), 3);
  ASSERT_EQ(ds.size(), 26);
  LMLoader loader(ds, {4, 0, 1, 9, true});
  EXPECT_EQ(loader.batches_per_epoch(), 6);
  std::set<int64_t> seen;
  for (int s = 0; s < 6; ++s) {
    LMBatch b = loader.next();
    EXPECT_EQ(b.epoch, 0);
    for (int64_t w : b.windows) EXPECT_TRUE(seen.insert(w).second) << "window " << w << " twice in one epoch";
  }
  EXPECT_EQ(seen.size(), 24u);
  EXPECT_EQ(loader.state(), (LMLoader::State{1, 0}));
  EXPECT_EQ(loader.next().epoch, 1);
}

TEST(LMLoader, RestoredStateContinuesTheIdenticalStream) {
  PackedLMDataset ds(make_tokens(30 * 4 + 1), 4);
  LMLoaderOptions o{4, 0, 1, 123, true};  // 7 batches per epoch, 2 windows skipped
  LMLoader a(ds, o);
  for (int i = 0; i < 5; ++i) a.next();
  const LMLoader::State saved = a.state();
  EXPECT_EQ(saved, (LMLoader::State{0, 20}));
  std::vector<LMBatch> expected;
  for (int i = 0; i < 12; ++i) expected.push_back(a.next());  // crosses into epochs 1 and 2
  EXPECT_EQ(expected.back().epoch, 2);

  LMLoader b(ds, o);
  b.next();  // a different position first, to show set_state really moves it
  b.set_state(saved);
  EXPECT_EQ(b.state(), saved);
  for (const LMBatch& e : expected) {
    LMBatch got = b.next();
    EXPECT_EQ(got.windows, e.windows);
    EXPECT_EQ(got.epoch, e.epoch);
    EXPECT_EQ(got.step, e.step);
    EXPECT_EQ(got.ids.to_vector<int64_t>(), e.ids.to_vector<int64_t>());
    EXPECT_EQ(got.targets.to_vector<int64_t>(), e.targets.to_vector<int64_t>());
  }
  EXPECT_EQ(b.state(), a.state());
  // A position with no full batch left moves to the next epoch; nonsense is refused.
  b.set_state({4, 29});
  EXPECT_EQ(b.state(), (LMLoader::State{5, 0}));
  expect_error([&] { b.set_state({0, 31}); }, {"index 31", "30 windows"});
  expect_error([&] { b.set_state({-1, 0}); }, {"epoch -1"});
}

TEST(LMLoader, RankShardsConcatenateToTheSingleRankBatch) {
  PackedLMDataset ds(make_tokens(45 * 3 + 1), 3);
  ASSERT_EQ(ds.size(), 45);
  const int64_t b = 3;
  for (int64_t world : {2, 3}) {
    LMLoader single(ds, {world * b, 0, 1, 77, true});
    std::vector<LMLoader> ranks;
    for (int64_t r = 0; r < world; ++r) ranks.emplace_back(ds, LMLoaderOptions{b, r, world, 77, true});
    EXPECT_EQ(single.batches_per_epoch(), ranks[0].batches_per_epoch());
    for (int step = 0; step < 3 * single.batches_per_epoch() + 1; ++step) {
      LMBatch whole = single.next();
      std::vector<int64_t> windows, ids;
      for (auto& rl : ranks) {
        LMBatch part = rl.next();
        EXPECT_EQ(part.ids.shape(), (Shape{b, 3}));
        EXPECT_EQ(part.step, whole.step);
        EXPECT_EQ(part.epoch, whole.epoch);
        windows.insert(windows.end(), part.windows.begin(), part.windows.end());
        auto v = part.ids.to_vector<int64_t>();
        ids.insert(ids.end(), v.begin(), v.end());
      }
      EXPECT_EQ(windows, whole.windows) << "world " << world << " step " << step;
      EXPECT_EQ(ids, whole.ids.to_vector<int64_t>());
      for (auto& rl : ranks) EXPECT_EQ(rl.state(), single.state());
    }
  }
}

TEST(LMLoader, BadOptions) {
  PackedLMDataset ds(make_tokens(41), 4);  // 10 windows
  expect_error([&] { LMLoader(ds, {2, 2, 2, 0, true}); }, {"rank 2", "world_size 2"});
  expect_error([&] { LMLoader(ds, {0, 0, 1, 0, true}); }, {"micro_batch"});
  expect_error([&] { LMLoader(ds, {6, 0, 2, 0, true}); }, {"10 windows", "= 12"});
}

TEST(LMEvalLoader, InOrderEveryWindowOnceAcrossRanks) {
  PackedLMDataset ds(make_tokens(11 * 2 + 1), 2);
  ASSERT_EQ(ds.size(), 11);
  const int64_t world = 2, b = 2;  // global batch 4: batches [0..3] [4..7] [8..10]
  std::vector<int64_t> all;
  for (int64_t r = 0; r < world; ++r) {
    LMEvalLoader ev(ds, b, r, world);
    EXPECT_EQ(ev.num_batches(), 3);
    LMBatch batch;
    std::vector<int64_t> sizes;
    int n = 0;
    while (ev.next(batch)) {
      sizes.push_back(batch.ids.size(0));
      EXPECT_EQ(batch.step, n++);
      for (size_t i = 0; i < batch.windows.size(); ++i) {
        const auto in = ds.input(batch.windows[i]);
        EXPECT_EQ(row(batch.ids, static_cast<int64_t>(i)), std::vector<int64_t>(in.begin(), in.end()));
      }
      all.insert(all.end(), batch.windows.begin(), batch.windows.end());
    }
    EXPECT_EQ(sizes, r == 0 ? (std::vector<int64_t>{2, 2, 2}) : (std::vector<int64_t>{2, 2, 1}));
    ev.reset();
    ASSERT_TRUE(ev.next(batch));
    EXPECT_EQ(batch.windows[0], r * b);
  }
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expect(11);
  for (int64_t i = 0; i < 11; ++i) expect[i] = i;
  EXPECT_EQ(all, expect);
  // With more ranks than rows left, a rank's last batch is empty but still arrives.
  LMEvalLoader last(ds, 2, 3, 4);  // global batch 8: rank 3 gets [6, 8) then nothing of [8, 11)
  LMBatch batch;
  ASSERT_TRUE(last.next(batch));
  EXPECT_EQ(batch.windows, (std::vector<int64_t>{6, 7}));
  ASSERT_TRUE(last.next(batch));
  EXPECT_EQ(batch.ids.shape(), (Shape{0, 2}));
  EXPECT_FALSE(last.next(batch));
}

// ---- text source ---------------------------------------------------------------------------

class TextSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { fs::create_directories(dir_ / "sub"); }
  void write(const std::string& rel, const std::string& text) {
    std::ofstream f(dir_ / rel, std::ios::binary);
    f << text;
  }
  std::string p(const std::string& rel) const { return (dir_ / rel).string(); }
  test::TmpDir tmp_{"lathe_text"};
  fs::path dir_{tmp_.path()};
};

TEST_F(TextSourceTest, FilesAndSortedDirectories) {
  write("b.txt", "bee\n");
  write("a.txt", "ay");
  write("c.md", "not text");
  write("empty.txt", "");
  write("sub/d.txt", "dee");
  EXPECT_EQ(read_text(p("a.txt")), "ay");
  EXPECT_EQ(read_text(dir_.string()), "ay\nbee\n");
  TextSourceOptions o;
  o.separator = "<|sep|>";
  EXPECT_EQ(read_text(dir_.string(), o), "ay<|sep|>bee\n");
  o.recursive = true;
  EXPECT_EQ(read_text(dir_.string(), o), "ay<|sep|>bee\n<|sep|>dee");
  o.extension = "";
  o.recursive = false;
  EXPECT_EQ(read_text(dir_.string(), o), "ay<|sep|>bee\n<|sep|>not text");
  auto files = list_text_files(dir_.string());
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(fs::path(files[0]).filename(), "a.txt");
  EXPECT_EQ(fs::path(files[2]).filename(), "empty.txt");
}

TEST_F(TextSourceTest, ClearErrors) {
  expect_error([&] { read_text(p("nope.txt")); }, {"nope.txt", "does not exist"});
  write("empty.txt", "");
  expect_error([&] { read_text(p("empty.txt")); }, {"empty.txt", "is empty"});
  expect_error([&] { read_text(p("sub")); }, {"sub", "no *.txt files"});
  expect_error([&] { read_text(dir_.string()); }, {"every file", "is empty"});
  expect_error([&] { list_text_files(p("empty.txt")); }, {"not a directory"});
  if (::geteuid() != 0) {  // root reads anything, so only an ordinary user can see this error
    write("secret.txt", "x");
    fs::permissions(p("secret.txt"), fs::perms::none);
    expect_error([&] { read_text(p("secret.txt")); }, {"secret.txt", "cannot read"});
  }
}
