// Which samples come next: the batching and position logic shared by the training and
// evaluation loaders of every kind of data (packed LM windows, instruction samples). A
// loader owns a cursor over its dataset's size and only turns the indices it hands out into
// a batch, so the order, rank slicing, epoch wrap and resume rules live in one place.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lathe::data {

struct LMLoaderOptions {
  int64_t micro_batch = 1;  // rows per rank per batch
  int64_t rank = 0;
  int64_t world_size = 1;
  uint64_t seed = 0;
  bool shuffle = true;  // false: samples in order every epoch
};

// Position of the next global batch: epoch and its first entry in that epoch's order. It
// counts samples, not steps, so a saved state stays meaningful under another batch size.
struct LoaderState {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderState& o) const { return epoch == o.epoch && index == o.index; }
  bool operator!=(const LoaderState& o) const { return !(*this == o); }
};

// Training order over `size` samples (the contract is spelled out at data::LMLoader): each
// epoch is a permutation drawn from (seed, epoch), a global batch is micro_batch * world_size
// consecutive entries of it, rank r takes entries [r*b, (r+1)*b), and the tail that does not
// fill a global batch is skipped.
class TrainCursor {
 public:
  // `owner` and `unit` name the loader and what it counts in error messages ("LMLoader",
  // "windows"); `detail` is appended to the too-small error (what to try).
  TrainCursor(int64_t size, const LMLoaderOptions& options, const std::string& owner, const std::string& unit,
              const std::string& detail = "");

  // This rank's sample indices of the next global batch; advances. epoch/step (may be null)
  // receive the batch's epoch and its index within that epoch.
  std::vector<int64_t> next(int64_t* epoch = nullptr, int64_t* step = nullptr);
  LoaderState state() const { return state_; }
  // Validates and normalises (an index with no full global batch left moves to the next epoch).
  void set_state(LoaderState s);

  int64_t size() const { return size_; }
  int64_t global_batch() const { return options_.micro_batch * options_.world_size; }
  int64_t batches_per_epoch() const { return size_ / global_batch(); }
  const LMLoaderOptions& options() const { return options_; }
  // The sample order of an epoch (identity when shuffle is off).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  void normalise();
  const std::vector<int64_t>& order_for(int64_t epoch);

  int64_t size_;
  LMLoaderOptions options_;
  std::string owner_, unit_;
  LoaderState state_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

// Evaluation order: every sample once, in order, no wrap. Global batch k holds samples
// [k*G, min((k+1)*G, size)), G = micro_batch * world_size; rank r takes rows [r*b, (r+1)*b)
// of it, so every rank runs the same number of batches (its last may be short or empty).
class EvalCursor {
 public:
  EvalCursor(int64_t size, int64_t micro_batch, int64_t rank, int64_t world_size, const std::string& owner);
  int64_t num_batches() const;  // the same on every rank
  // False when the pass is over; else this rank's indices of the next batch and its number.
  bool next(std::vector<int64_t>& indices, int64_t& step);
  void reset() { next_ = 0; }

 private:
  int64_t size_, micro_batch_, rank_, world_size_;
  int64_t next_ = 0;
};

}  // namespace lathe::data
