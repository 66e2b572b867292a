// Packed language-model windows over one token stream, and the deterministic, resumable,
// rank-aware loader that batches them.
//
// Windows: window i covers tokens [s, s + T + 1) with s = begin + i*T (T = seq_len); its
// input is the first T tokens and its target the last T (the input shifted by one). Windows
// share only their boundary token, so every token is predicted exactly once per epoch.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "data/batch_cursor.h"

namespace lathe::data {

using TokenIds = std::vector<int32_t>;

class PackedLMDataset {
 public:
  PackedLMDataset() = default;
  // Windows over tokens[begin, end) (end = -1: to the end of the vector).
  PackedLMDataset(std::shared_ptr<const TokenIds> tokens, int64_t seq_len, int64_t begin = 0, int64_t end = -1);

  int64_t size() const { return windows_; }  // (end - begin - 1) / seq_len, or 0
  int64_t seq_len() const { return seq_len_; }
  int64_t begin() const { return begin_; }  // token range this dataset draws from
  int64_t end() const { return end_; }
  const std::shared_ptr<const TokenIds>& tokens() const { return tokens_; }

  // Index of window i's first token in the token vector.
  int64_t window_start(int64_t i) const;
  // Pointer to window i's seq_len + 1 tokens (input = [0, T), target = [1, T + 1)).
  const int32_t* window(int64_t i) const;
  std::vector<int32_t> input(int64_t i) const;
  std::vector<int32_t> target(int64_t i) const;

  // (train, validation): validation takes the last round(size * val_fraction) windows' worth
  // of tokens (at least one window when val_fraction > 0), train the tokens before them, so
  // the two share no token at all. Train may lose one window to that gap. val_fraction must
  // be in [0, 1); throws when the data is too short to give both parts a window.
  std::pair<PackedLMDataset, PackedLMDataset> split(double val_fraction) const;

 private:
  std::shared_ptr<const TokenIds> tokens_;
  int64_t seq_len_ = 0;
  int64_t begin_ = 0;
  int64_t end_ = 0;
  int64_t windows_ = 0;
};

// One rank's micro-batch.
struct LMBatch {
  Tensor ids;                    // [B, T] i64
  Tensor targets;                // [B, T] i64
  std::vector<int64_t> windows;  // the dataset window of each row
  int64_t epoch = 0;
  int64_t step = 0;  // index of the global batch within its epoch
};

// LMLoaderOptions: data/batch_cursor.h.


// Training loader. Each epoch visits the windows in a permutation drawn from (seed, epoch):
// Fisher-Yates driven by the Philox stream of core/rng.h (key = seed ^ a fixed tag, counter
// from epoch * 2^40), so the order depends only on (seed, epoch), never on rank count or
// history. A global batch is G = micro_batch * world_size consecutive entries of that order;
// rank r takes entries [r*b, (r+1)*b) of it. So world_size ranks with micro-batch b see,
// concatenated rank-major, exactly the batches one rank with micro-batch world_size*b sees.
// The last size % G windows of each epoch's order are skipped (every rank gets equal batches;
// which windows those are changes every epoch); epochs follow one another automatically.
class LMLoader {
 public:
  // Position of the next global batch (data/batch_cursor.h): epoch and its first entry in
  // that epoch's order, counted in samples so it survives a change of batch size.
  using State = LoaderState;

  LMLoader(PackedLMDataset dataset, const LMLoaderOptions& options);

  LMBatch next();
  State state() const { return cursor_.state(); }
  // Validates and normalises (an index with no full global batch left moves to the next epoch).
  void set_state(State s) { cursor_.set_state(s); }

  int64_t global_batch() const { return cursor_.global_batch(); }
  int64_t batches_per_epoch() const { return cursor_.batches_per_epoch(); }
  const PackedLMDataset& dataset() const { return dataset_; }
  const LMLoaderOptions& options() const { return cursor_.options(); }
  // The window order of an epoch (identity when shuffle is off).
  std::vector<int64_t> epoch_order(int64_t epoch) const { return cursor_.epoch_order(epoch); }

 private:
  PackedLMDataset dataset_;
  TrainCursor cursor_;
};

// Evaluation loader: every window once, in order, no shuffling and no wrap-around. Global
// batch k holds windows [k*G, min((k+1)*G, size)), G = micro_batch * world_size, and rank r
// takes rows [r*b, (r+1)*b) of it, so every rank runs the same number of batches; in the last
// one a rank's batch may be short or even empty ([0, T]), and callers weight losses by rows.
class LMEvalLoader {
 public:
  LMEvalLoader(PackedLMDataset dataset, int64_t micro_batch, int64_t rank = 0, int64_t world_size = 1);

  int64_t num_batches() const { return cursor_.num_batches(); }  // the same on every rank
  // Fills `out` with the next batch; false (out untouched) when the pass is over.
  bool next(LMBatch& out);
  void reset() { cursor_.reset(); }

 private:
  PackedLMDataset dataset_;
  EvalCursor cursor_;
};

}  // namespace lathe::data
