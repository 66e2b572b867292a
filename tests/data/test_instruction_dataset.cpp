// Instruction samples (ids, masked next-token targets, padding, truncation, dropped
// documents) against a reference loop, and the loaders' contract: LMLoader's permutation,
// rank sharding equal to one big batch, exact resume from a saved State, evaluation coverage.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "data/instruction_dataset.h"
#include "data/permutation.h"
#include "data/prepare.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::data;

namespace {

struct Docs {
  std::shared_ptr<TokenIds> tokens = std::make_shared<TokenIds>();
  std::shared_ptr<std::vector<uint8_t>> mask = std::make_shared<std::vector<uint8_t>>();
  std::vector<int64_t> offsets{0};
  // Appends a document: `prompt` untrained tokens then `response` trained ones; token
  // values encode (document, position) so any misplacement shows.
  void add(int64_t prompt, int64_t response) {
    const int64_t d = static_cast<int64_t>(offsets.size()) - 1;
    for (int64_t t = 0; t < prompt + response; ++t) {
      tokens->push_back(static_cast<int32_t>(1000 * (d + 1) + t));
      mask->push_back(t >= prompt ? 1 : 0);
    }
    offsets.push_back(static_cast<int64_t>(tokens->size()));
  }
};

// Random documents: prompt in [0, 12), response in [1, 8).
Docs random_docs(int64_t n, uint64_t seed) {
  Generator g(seed);
  Docs d;
  for (int64_t i = 0; i < n; ++i) d.add(g.next_u32() % 12, 1 + g.next_u32() % 7);
  return d;
}

std::vector<int64_t> row(const Tensor& t, int64_t r) { return t.select(0, r).to_vector<int64_t>(); }

}  // namespace

TEST(InstructionDataset, SamplesMatchReferenceLoop) {
  Docs docs = random_docs(40, 3);
  const int64_t T = 10;
  const int32_t pad = 77;
  InstructionDataset ds(docs.tokens, docs.mask, docs.offsets, T, pad);
  // Reference: a document is kept when one of its tokens 1..min(L-1, T) is trained.
  int64_t kept = 0;
  for (int64_t d = 0; d < 40; ++d) {
    const int64_t b = docs.offsets[d], L = docs.offsets[d + 1] - b;
    bool any = false;
    for (int64_t k = 1; k < L && k <= T; ++k) any = any || (*docs.mask)[b + k];
    if (!any) continue;
    ASSERT_LT(kept, ds.size());
    EXPECT_EQ(ds.document(kept), d);
    const auto ids = ds.ids(kept), tg = ds.targets(kept);
    int64_t n_targets = 0;
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(ids[t], t < L ? (*docs.tokens)[b + t] : pad) << "doc " << d << " t " << t;
      const bool trained = t + 1 < L && (*docs.mask)[b + t + 1];
      EXPECT_EQ(tg[t], trained ? (*docs.tokens)[b + t + 1] : kIgnoreIndex) << "doc " << d << " t " << t;
      n_targets += trained;
    }
    EXPECT_EQ(ds.num_targets(kept), n_targets);
    EXPECT_GT(n_targets, 0);
    ++kept;
  }
  EXPECT_EQ(ds.size(), kept);
  EXPECT_EQ(ds.dropped(), 40 - kept);
  EXPECT_GT(ds.dropped(), 0);  // prompts of 10+ tokens leave nothing inside T = 10
  EXPECT_GT(kept, 20);
}

TEST(InstructionDataset, ExactSmallCase) {
  Docs docs;
  docs.add(2, 2);  // tokens 1000 1001 | 1002 1003 (mask 0 0 1 1)
  docs.add(5, 1);  // prompt fills the window: dropped at T = 4
  InstructionDataset ds(docs.tokens, docs.mask, docs.offsets, 4, -1);
  ASSERT_EQ(ds.size(), 1);
  EXPECT_EQ(ds.ids(0), (std::vector<int64_t>{1000, 1001, 1002, 1003}));
  EXPECT_EQ(ds.targets(0), (std::vector<int64_t>{-100, 1002, 1003, -100}));
  InstructionDataset wide(docs.tokens, docs.mask, docs.offsets, 6, 0);
  ASSERT_EQ(wide.size(), 2);
  EXPECT_EQ(wide.ids(0), (std::vector<int64_t>{1000, 1001, 1002, 1003, 0, 0}));
  EXPECT_EQ(wide.targets(0), (std::vector<int64_t>{-100, 1002, 1003, -100, -100, -100}));
  EXPECT_EQ(wide.targets(1), (std::vector<int64_t>{-100, -100, -100, -100, 2005, -100}));
  // Inconsistent inputs.
  auto short_mask = std::make_shared<std::vector<uint8_t>>(docs.mask->begin(), docs.mask->end() - 1);
  EXPECT_THROW(InstructionDataset(docs.tokens, short_mask, docs.offsets, 4), Error);
  EXPECT_THROW(InstructionDataset(docs.tokens, docs.mask, {0, 4}, 4), Error);
  EXPECT_THROW(InstructionDataset(docs.tokens, docs.mask, docs.offsets, 0), Error);
}

TEST(InstructionLoader, UsesLMLoaderPermutation) {
  // The shared permutation is LMLoader's own order, so both loaders shuffle alike.
  auto toks = std::make_shared<TokenIds>(200, 1);
  LMLoaderOptions lo;
  lo.seed = 1234;
  LMLoader lm(PackedLMDataset(toks, 7), lo);
  for (int64_t epoch : {0, 1, 5}) EXPECT_EQ(lm.epoch_order(epoch), loader_epoch_order(lm.dataset().size(), 1234, epoch));
  Docs docs = random_docs(30, 4);
  InstructionLoader il(InstructionDataset(docs.tokens, docs.mask, docs.offsets, 16), lo);
  for (int64_t epoch : {0, 3}) {
    auto order = il.epoch_order(epoch);
    EXPECT_EQ(order, loader_epoch_order(il.dataset().size(), 1234, epoch));
    EXPECT_EQ(std::set<int64_t>(order.begin(), order.end()).size(), order.size());
  }
  EXPECT_NE(il.epoch_order(0), il.epoch_order(1));
}

TEST(InstructionLoader, RankShardingEqualsOneBigBatch) {
  Docs docs = random_docs(50, 5);
  InstructionDataset ds(docs.tokens, docs.mask, docs.offsets, 12);
  LMLoaderOptions one;
  one.micro_batch = 6;
  one.seed = 9;
  InstructionLoader big(ds, one);
  std::vector<InstructionLoader> ranks;
  for (int64_t r = 0; r < 3; ++r) {
    LMLoaderOptions o = one;
    o.micro_batch = 2;
    o.world_size = 3;
    o.rank = r;
    ranks.emplace_back(ds, o);
  }
  ASSERT_EQ(big.batches_per_epoch(), ds.size() / 6);
  // Two epochs and a bit: rows of rank-major concatenation equal the big batch's rows.
  for (int64_t step = 0; step < 2 * big.batches_per_epoch() + 2; ++step) {
    LMBatch g = big.next();
    for (int64_t r = 0; r < 3; ++r) {
      LMBatch b = ranks[r].next();
      EXPECT_EQ(b.epoch, g.epoch);
      EXPECT_EQ(b.step, g.step);
      ASSERT_EQ(b.ids.shape(), (Shape{2, 12}));
      for (int64_t i = 0; i < 2; ++i) {
        EXPECT_EQ(b.windows[i], g.windows[2 * r + i]);
        EXPECT_EQ(row(b.ids, i), row(g.ids, 2 * r + i));
        EXPECT_EQ(row(b.targets, i), row(g.targets, 2 * r + i));
        EXPECT_EQ(row(b.targets, i), ds.targets(b.windows[i]));
      }
    }
  }
}

TEST(InstructionLoader, ResumeFromStateIsExact) {
  Docs docs = random_docs(23, 6);
  InstructionDataset ds(docs.tokens, docs.mask, docs.offsets, 12);
  LMLoaderOptions o;
  o.micro_batch = 2;
  o.world_size = 2;
  o.rank = 1;
  o.seed = 77;
  InstructionLoader a(ds, o);
  std::vector<LMBatch> ref;
  for (int i = 0; i < 20; ++i) ref.push_back(a.next());
  for (int cut : {0, 1, 4, 5, 13}) {
    InstructionLoader x(ds, o);
    for (int i = 0; i < cut; ++i) x.next();
    const InstructionLoader::State s = x.state();
    InstructionLoader y(ds, o);  // a fresh process restoring the saved position
    y.set_state(s);
    for (int i = cut; i < 20; ++i) {
      LMBatch b = y.next();
      EXPECT_EQ(b.windows, ref[i].windows) << "cut " << cut << " batch " << i;
      EXPECT_EQ(b.epoch, ref[i].epoch);
      EXPECT_EQ(b.ids.to_vector<int64_t>(), ref[i].ids.to_vector<int64_t>());
      EXPECT_EQ(b.targets.to_vector<int64_t>(), ref[i].targets.to_vector<int64_t>());
    }
  }
  // Each epoch covers distinct samples; the last size % G are skipped.
  InstructionLoader e(ds, o);
  EXPECT_EQ(e.batches_per_epoch(), ds.size() / 4);
  EXPECT_THROW(e.set_state({0, ds.size() + 1}), Error);
  EXPECT_THROW(e.set_state({-1, 0}), Error);
  LMLoaderOptions too_big = o;
  too_big.micro_batch = 100;
  EXPECT_THROW(InstructionLoader(ds, too_big), Error);
}

TEST(InstructionLoader, EvalLoaderCoversEverySampleOnce) {
  Docs docs = random_docs(17, 8);
  InstructionDataset ds(docs.tokens, docs.mask, docs.offsets, 12);
  std::vector<int64_t> seen;
  int64_t batches = -1;
  for (int64_t r = 0; r < 2; ++r) {
    InstructionEvalLoader ev(ds, 3, r, 2);
    if (batches < 0) batches = ev.num_batches();
    EXPECT_EQ(ev.num_batches(), batches);
    LMBatch b;
    int64_t n = 0;
    while (ev.next(b)) {
      for (size_t i = 0; i < b.windows.size(); ++i) {
        seen.push_back(b.windows[i]);
        EXPECT_EQ(row(b.targets, static_cast<int64_t>(i)), ds.targets(b.windows[i]));
      }
      ++n;
    }
    EXPECT_EQ(n, batches);
  }
  std::sort(seen.begin(), seen.end());
  std::vector<int64_t> all(static_cast<size_t>(ds.size()));
  for (int64_t i = 0; i < ds.size(); ++i) all[i] = i;
  EXPECT_EQ(seen, all);
}

TEST(InstructionLoader, FromPreparedChatShards) {
  // prepare -> open_shards -> InstructionDataset: every target is a response token.
  const std::string out =
      (fs::temp_directory_path() / ("lathe_test_instr_ds_" + std::to_string(::getpid()))).string();
  PrepareOptions o;
  o.inputs = {"tests/fixtures/data/chat.jsonl", "tests/fixtures/data/alpaca.jsonl"};
  o.output_dir = out;
  o.quiet = true;
  PrepareStats st = prepare(o);
  ShardSet s = open_shards(out, "train", "byte");
  InstructionDataset ds(s, 256);
  EXPECT_EQ(ds.size(), 7);
  int64_t targets = 0;
  for (int64_t i = 0; i < ds.size(); ++i) {
    const auto [b, e] = s.document(ds.document(i));
    const auto tg = ds.targets(i);
    for (int64_t t = 0; t < 256; ++t) {
      const bool trained = b + t + 1 < e && (*s.loss_mask)[b + t + 1];
      EXPECT_EQ(tg[t], trained ? (*s.tokens)[b + t + 1] : kIgnoreIndex);
      targets += tg[t] != kIgnoreIndex;
    }
  }
  // Every trained token but a document's first is a target (no document starts with one).
  EXPECT_EQ(targets, st.train.trained_tokens);
  // Plain-text shards have no mask to train on.
  PrepareOptions p = o;
  p.inputs = {"tests/fixtures/data/text_records.jsonl"};
  prepare(p);
  EXPECT_THROW(InstructionDataset(open_shards(out, "train"), 16), Error);
  fs::remove_all(out);
}
