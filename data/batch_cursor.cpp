// Sample order and position of the data loaders; see batch_cursor.h.
#include "data/batch_cursor.h"

#include <algorithm>

#include "core/error.h"
#include "data/permutation.h"

namespace lathe::data {

TrainCursor::TrainCursor(int64_t size, const LMLoaderOptions& options, const std::string& owner,
                         const std::string& unit, const std::string& detail)
    : size_(size), options_(options), owner_(owner), unit_(unit) {
  LATHE_CHECK(options.micro_batch >= 1) << owner << ": micro_batch must be >= 1, got " << options.micro_batch;
  LATHE_CHECK(options.world_size >= 1) << owner << ": world_size must be >= 1, got " << options.world_size;
  LATHE_CHECK(options.rank >= 0 && options.rank < options.world_size)
      << owner << ": rank " << options.rank << " is outside world_size " << options.world_size;
  LATHE_CHECK(size_ >= global_batch()) << owner << ": the dataset has " << size_ << " " << unit << detail
                                       << ", fewer than one global batch (micro_batch " << options.micro_batch
                                       << " x world_size " << options.world_size << " = " << global_batch() << ")"
                                       << (unit == "windows" ? "; use more data, a shorter seq_len or smaller batches"
                                                             : "");
}

std::vector<int64_t> TrainCursor::epoch_order(int64_t epoch) const {
  LATHE_CHECK(epoch >= 0) << owner_ << ": negative epoch " << epoch;
  if (options_.shuffle) return loader_epoch_order(size_, options_.seed, epoch);
  std::vector<int64_t> order(static_cast<size_t>(size_));
  for (int64_t i = 0; i < size_; ++i) order[i] = i;
  return order;
}

const std::vector<int64_t>& TrainCursor::order_for(int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

void TrainCursor::normalise() {
  if (state_.index + global_batch() > size_) {
    ++state_.epoch;
    state_.index = 0;
  }
}

void TrainCursor::set_state(LoaderState s) {
  LATHE_CHECK(s.epoch >= 0 && s.index >= 0 && s.index <= size_)
      << owner_ << "::set_state: position {epoch " << s.epoch << ", index " << s.index
      << "} is invalid for a dataset of " << size_ << " " << unit_;
  state_ = s;
  normalise();
}

std::vector<int64_t> TrainCursor::next(int64_t* epoch, int64_t* step) {
  normalise();
  const std::vector<int64_t>& order = order_for(state_.epoch);
  const int64_t b = options_.micro_batch;
  const int64_t first = state_.index + options_.rank * b;
  std::vector<int64_t> picked(order.begin() + first, order.begin() + first + b);
  if (epoch) *epoch = state_.epoch;
  if (step) *step = state_.index / global_batch();
  state_.index += global_batch();
  normalise();
  return picked;
}

EvalCursor::EvalCursor(int64_t size, int64_t micro_batch, int64_t rank, int64_t world_size, const std::string& owner)
    : size_(size), micro_batch_(micro_batch), rank_(rank), world_size_(world_size) {
  LATHE_CHECK(micro_batch >= 1) << owner << ": micro_batch must be >= 1, got " << micro_batch;
  LATHE_CHECK(world_size >= 1 && rank >= 0 && rank < world_size)
      << owner << ": rank " << rank << " is outside world_size " << world_size;
}

int64_t EvalCursor::num_batches() const {
  const int64_t g = micro_batch_ * world_size_;
  return (size_ + g - 1) / g;
}

bool EvalCursor::next(std::vector<int64_t>& indices, int64_t& step) {
  if (next_ >= num_batches()) return false;
  const int64_t g = micro_batch_ * world_size_;
  const int64_t lo = std::min(size_, next_ * g + rank_ * micro_batch_);
  const int64_t hi = std::min(size_, lo + micro_batch_);
  indices.clear();
  for (int64_t i = lo; i < hi; ++i) indices.push_back(i);
  step = next_++;
  return true;
}

}  // namespace lathe::data
