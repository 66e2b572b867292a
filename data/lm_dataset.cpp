#include "data/lm_dataset.h"

#include "data/permutation.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace lathe::data {

// ---- PackedLMDataset ----------------------------------------------------------------------

PackedLMDataset::PackedLMDataset(std::shared_ptr<const TokenIds> tokens, int64_t seq_len, int64_t begin, int64_t end)
    : tokens_(std::move(tokens)), seq_len_(seq_len), begin_(begin) {
  LATHE_CHECK(tokens_ != nullptr) << "PackedLMDataset: no token vector";
  LATHE_CHECK(seq_len >= 1) << "PackedLMDataset: seq_len must be >= 1, got " << seq_len;
  const int64_t n = static_cast<int64_t>(tokens_->size());
  end_ = end < 0 ? n : end;
  LATHE_CHECK(begin_ >= 0 && begin_ <= end_ && end_ <= n)
      << "PackedLMDataset: token range [" << begin << ", " << end << ") is outside the " << n << " tokens";
  // A window needs seq_len + 1 tokens and the next one starts seq_len later.
  windows_ = end_ - begin_ > seq_len_ ? (end_ - begin_ - 1) / seq_len_ : 0;
}

int64_t PackedLMDataset::window_start(int64_t i) const {
  LATHE_CHECK(i >= 0 && i < windows_) << "PackedLMDataset: window " << i << " out of range (" << windows_
                                      << " windows of " << seq_len_ << " tokens)";
  return begin_ + i * seq_len_;
}

const int32_t* PackedLMDataset::window(int64_t i) const { return tokens_->data() + window_start(i); }

std::vector<int32_t> PackedLMDataset::input(int64_t i) const {
  const int32_t* w = window(i);
  return std::vector<int32_t>(w, w + seq_len_);
}

std::vector<int32_t> PackedLMDataset::target(int64_t i) const {
  const int32_t* w = window(i);
  return std::vector<int32_t>(w + 1, w + seq_len_ + 1);
}

std::pair<PackedLMDataset, PackedLMDataset> PackedLMDataset::split(double val_fraction) const {
  LATHE_CHECK(val_fraction >= 0.0 && val_fraction < 1.0)
      << "PackedLMDataset::split: validation fraction must be in [0, 1), got " << val_fraction;
  if (val_fraction == 0.0) return {*this, PackedLMDataset(tokens_, seq_len_, end_, end_)};
  const int64_t n_val = std::max<int64_t>(1, std::llround(static_cast<double>(windows_) * val_fraction));
  const int64_t val_tokens = n_val * seq_len_ + 1;
  const int64_t cut = end_ - val_tokens;
  PackedLMDataset train(tokens_, seq_len_, begin_, std::max(begin_, cut));
  LATHE_CHECK(cut >= begin_ && train.size() >= 1)
      << "PackedLMDataset::split: " << (end_ - begin_) << " tokens (" << windows_ << " windows of " << seq_len_
      << ") are too few to keep a validation fraction of " << val_fraction << " and still train";
  return {train, PackedLMDataset(tokens_, seq_len_, cut, end_)};
}

// ---- shared batch assembly ------------------------------------------------------------------

namespace {
void fill_batch(const PackedLMDataset& ds, const std::vector<int64_t>& windows, LMBatch& out) {
  const int64_t B = static_cast<int64_t>(windows.size()), T = ds.seq_len();
  out.ids = Tensor::empty({B, T}, DType::i64);
  out.targets = Tensor::empty({B, T}, DType::i64);
  int64_t* ids = out.ids.data<int64_t>();
  int64_t* tgt = out.targets.data<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* w = ds.window(windows[b]);
    for (int64_t t = 0; t < T; ++t) {
      ids[b * T + t] = w[t];
      tgt[b * T + t] = w[t + 1];
    }
  }
  out.windows = windows;
}
}  // namespace

// ---- LMLoader -------------------------------------------------------------------------------

LMLoader::LMLoader(PackedLMDataset dataset, const LMLoaderOptions& options)
    : dataset_(std::move(dataset)), options_(options) {
  LATHE_CHECK(options.micro_batch >= 1) << "LMLoader: micro_batch must be >= 1, got " << options.micro_batch;
  LATHE_CHECK(options.world_size >= 1) << "LMLoader: world_size must be >= 1, got " << options.world_size;
  LATHE_CHECK(options.rank >= 0 && options.rank < options.world_size)
      << "LMLoader: rank " << options.rank << " is outside world_size " << options.world_size;
  LATHE_CHECK(dataset_.size() >= global_batch())
      << "LMLoader: the dataset has " << dataset_.size() << " windows of " << dataset_.seq_len()
      << " tokens, fewer than one global batch (micro_batch " << options.micro_batch << " x world_size "
      << options.world_size << " = " << global_batch() << "); use more data, a shorter seq_len or smaller batches";
}

std::vector<int64_t> LMLoader::epoch_order(int64_t epoch) const {
  LATHE_CHECK(epoch >= 0) << "LMLoader: negative epoch " << epoch;
  const int64_t n = dataset_.size();
  if (!options_.shuffle) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    return order;
  }
  return loader_epoch_order(n, options_.seed, epoch);
}

const std::vector<int64_t>& LMLoader::order_for(int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

void LMLoader::normalise() {
  if (state_.index + global_batch() > dataset_.size()) {
    ++state_.epoch;
    state_.index = 0;
  }
}

void LMLoader::set_state(State s) {
  LATHE_CHECK(s.epoch >= 0 && s.index >= 0 && s.index <= dataset_.size())
      << "LMLoader::set_state: position {epoch " << s.epoch << ", index " << s.index
      << "} is invalid for a dataset of " << dataset_.size() << " windows";
  state_ = s;
  normalise();
}

LMBatch LMLoader::next() {
  normalise();
  const std::vector<int64_t>& order = order_for(state_.epoch);
  const int64_t b = options_.micro_batch;
  const int64_t first = state_.index + options_.rank * b;
  std::vector<int64_t> windows(order.begin() + first, order.begin() + first + b);
  LMBatch out;
  fill_batch(dataset_, windows, out);
  out.epoch = state_.epoch;
  out.step = state_.index / global_batch();
  state_.index += global_batch();
  normalise();
  return out;
}

// ---- LMEvalLoader ---------------------------------------------------------------------------

LMEvalLoader::LMEvalLoader(PackedLMDataset dataset, int64_t micro_batch, int64_t rank, int64_t world_size)
    : dataset_(std::move(dataset)), micro_batch_(micro_batch), rank_(rank), world_size_(world_size) {
  LATHE_CHECK(micro_batch >= 1) << "LMEvalLoader: micro_batch must be >= 1, got " << micro_batch;
  LATHE_CHECK(world_size >= 1 && rank >= 0 && rank < world_size)
      << "LMEvalLoader: rank " << rank << " is outside world_size " << world_size;
}

int64_t LMEvalLoader::num_batches() const {
  const int64_t g = micro_batch_ * world_size_;
  return (dataset_.size() + g - 1) / g;
}

bool LMEvalLoader::next(LMBatch& out) {
  if (next_ >= num_batches()) return false;
  const int64_t g = micro_batch_ * world_size_;
  const int64_t lo = std::min(dataset_.size(), next_ * g + rank_ * micro_batch_);
  const int64_t hi = std::min(dataset_.size(), lo + micro_batch_);
  std::vector<int64_t> windows;
  for (int64_t i = lo; i < hi; ++i) windows.push_back(i);
  fill_batch(dataset_, windows, out);
  out.epoch = 0;
  out.step = next_;
  ++next_;
  return true;
}

}  // namespace lathe::data
