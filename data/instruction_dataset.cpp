#include "data/instruction_dataset.h"

#include <algorithm>

#include "core/error.h"
#include "data/permutation.h"

namespace lathe::data {

// ---- InstructionDataset ---------------------------------------------------------------------

InstructionDataset::InstructionDataset(std::shared_ptr<const TokenIds> tokens,
                                       std::shared_ptr<const std::vector<uint8_t>> mask,
                                       std::vector<int64_t> doc_offsets, int64_t seq_len, int32_t pad_id)
    : tokens_(std::move(tokens)), mask_(std::move(mask)), offsets_(std::move(doc_offsets)), seq_len_(seq_len),
      pad_id_(pad_id) {
  LATHE_CHECK(tokens_ && mask_) << "InstructionDataset: tokens and loss mask are required";
  LATHE_CHECK(seq_len >= 1) << "InstructionDataset: seq_len must be >= 1, got " << seq_len;
  const int64_t n = static_cast<int64_t>(tokens_->size());
  LATHE_CHECK(static_cast<int64_t>(mask_->size()) == n)
      << "InstructionDataset: " << mask_->size() << " mask entries for " << n << " tokens";
  LATHE_CHECK(offsets_.size() >= 1 && offsets_.front() == 0 && offsets_.back() == n)
      << "InstructionDataset: document offsets must run from 0 to " << n;
  for (size_t d = 0; d + 1 < offsets_.size(); ++d) {
    const int64_t b = offsets_[d], e = offsets_[d + 1];
    LATHE_CHECK(e >= b) << "InstructionDataset: document offsets decrease at " << d;
    // Targets exist for positions t in [0, T) with t + 1 < L: tokens 1..min(L-1, T).
    const int64_t last = std::min(e - b - 1, seq_len_);
    bool any = false;
    for (int64_t k = 1; k <= last && !any; ++k) any = (*mask_)[b + k] != 0;
    if (any) docs_.push_back(static_cast<int64_t>(d));
  }
}

InstructionDataset::InstructionDataset(const ShardSet& s, int64_t seq_len, int32_t pad_id)
    : InstructionDataset(s.tokens,
                         [&] {
                           LATHE_CHECK(s.has_loss_mask())
                               << "InstructionDataset: " << s.path << " (" << s.split << ") is " << s.format
                               << " data without a loss mask; prepare instruction records (prompt/response, "
                               << "alpaca or chat JSONL), or use ShardSet::packed for plain text";
                           return s.loss_mask;
                         }(),
                         s.doc_offsets, seq_len, pad_id) {}

int64_t InstructionDataset::document(int64_t i) const {
  LATHE_CHECK(i >= 0 && i < size()) << "InstructionDataset: sample " << i << " out of range (" << size()
                                    << " samples)";
  return docs_[i];
}

void InstructionDataset::fill(int64_t i, int64_t* ids, int64_t* targets) const {
  const int64_t d = document(i);
  const int64_t b = offsets_[d], len = offsets_[d + 1] - b;
  const int32_t* x = tokens_->data() + b;
  const uint8_t* m = mask_->data() + b;
  for (int64_t t = 0; t < seq_len_; ++t) {
    ids[t] = t < len ? x[t] : pad_id_;
    targets[t] = (t + 1 < len && m[t + 1]) ? x[t + 1] : kIgnoreIndex;
  }
}

std::vector<int64_t> InstructionDataset::ids(int64_t i) const {
  std::vector<int64_t> a(seq_len_), b(seq_len_);
  fill(i, a.data(), b.data());
  return a;
}

std::vector<int64_t> InstructionDataset::targets(int64_t i) const {
  std::vector<int64_t> a(seq_len_), b(seq_len_);
  fill(i, a.data(), b.data());
  return b;
}

int64_t InstructionDataset::num_targets(int64_t i) const {
  const std::vector<int64_t> t = targets(i);
  return static_cast<int64_t>(std::count_if(t.begin(), t.end(), [](int64_t v) { return v != kIgnoreIndex; }));
}

namespace {
void fill_batch(const InstructionDataset& ds, const std::vector<int64_t>& samples, LMBatch& out) {
  const int64_t B = static_cast<int64_t>(samples.size()), T = ds.seq_len();
  out.ids = Tensor::empty({B, T}, DType::i64);
  out.targets = Tensor::empty({B, T}, DType::i64);
  int64_t* ids = out.ids.data<int64_t>();
  int64_t* tgt = out.targets.data<int64_t>();
  for (int64_t r = 0; r < B; ++r) ds.fill(samples[r], ids + r * T, tgt + r * T);
  out.windows = samples;
}
}  // namespace

// ---- InstructionLoader ----------------------------------------------------------------------

InstructionLoader::InstructionLoader(InstructionDataset dataset, const LMLoaderOptions& options)
    : dataset_(std::move(dataset)), options_(options) {
  LATHE_CHECK(options.micro_batch >= 1) << "InstructionLoader: micro_batch must be >= 1, got " << options.micro_batch;
  LATHE_CHECK(options.world_size >= 1) << "InstructionLoader: world_size must be >= 1, got " << options.world_size;
  LATHE_CHECK(options.rank >= 0 && options.rank < options.world_size)
      << "InstructionLoader: rank " << options.rank << " is outside world_size " << options.world_size;
  LATHE_CHECK(dataset_.size() >= global_batch())
      << "InstructionLoader: the dataset has " << dataset_.size() << " samples (" << dataset_.dropped()
      << " documents dropped for having no response token within seq_len " << dataset_.seq_len()
      << "), fewer than one global batch (micro_batch " << options.micro_batch << " x world_size "
      << options.world_size << " = " << global_batch() << ")";
}

std::vector<int64_t> InstructionLoader::epoch_order(int64_t epoch) const {
  LATHE_CHECK(epoch >= 0) << "InstructionLoader: negative epoch " << epoch;
  if (options_.shuffle) return loader_epoch_order(dataset_.size(), options_.seed, epoch);
  std::vector<int64_t> order(static_cast<size_t>(dataset_.size()));
  for (int64_t i = 0; i < dataset_.size(); ++i) order[i] = i;
  return order;
}

const std::vector<int64_t>& InstructionLoader::order_for(int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

void InstructionLoader::normalise() {
  if (state_.index + global_batch() > dataset_.size()) {
    ++state_.epoch;
    state_.index = 0;
  }
}

void InstructionLoader::set_state(State s) {
  LATHE_CHECK(s.epoch >= 0 && s.index >= 0 && s.index <= dataset_.size())
      << "InstructionLoader::set_state: position {epoch " << s.epoch << ", index " << s.index
      << "} is invalid for a dataset of " << dataset_.size() << " samples";
  state_ = s;
  normalise();
}

LMBatch InstructionLoader::next() {
  normalise();
  const std::vector<int64_t>& order = order_for(state_.epoch);
  const int64_t b = options_.micro_batch;
  const int64_t first = state_.index + options_.rank * b;
  std::vector<int64_t> samples(order.begin() + first, order.begin() + first + b);
  LMBatch out;
  fill_batch(dataset_, samples, out);
  out.epoch = state_.epoch;
  out.step = state_.index / global_batch();
  state_.index += global_batch();
  normalise();
  return out;
}

// ---- InstructionEvalLoader ------------------------------------------------------------------

InstructionEvalLoader::InstructionEvalLoader(InstructionDataset dataset, int64_t micro_batch, int64_t rank,
                                             int64_t world_size)
    : dataset_(std::move(dataset)), micro_batch_(micro_batch), rank_(rank), world_size_(world_size) {
  LATHE_CHECK(micro_batch >= 1) << "InstructionEvalLoader: micro_batch must be >= 1, got " << micro_batch;
  LATHE_CHECK(world_size >= 1 && rank >= 0 && rank < world_size)
      << "InstructionEvalLoader: rank " << rank << " is outside world_size " << world_size;
}

int64_t InstructionEvalLoader::num_batches() const {
  const int64_t g = micro_batch_ * world_size_;
  return (dataset_.size() + g - 1) / g;
}

bool InstructionEvalLoader::next(LMBatch& out) {
  if (next_ >= num_batches()) return false;
  const int64_t g = micro_batch_ * world_size_;
  const int64_t lo = std::min(dataset_.size(), next_ * g + rank_ * micro_batch_);
  const int64_t hi = std::min(dataset_.size(), lo + micro_batch_);
  std::vector<int64_t> samples;
  for (int64_t i = lo; i < hi; ++i) samples.push_back(i);
  fill_batch(dataset_, samples, out);
  out.epoch = 0;
  out.step = next_;
  ++next_;
  return true;
}

}  // namespace lathe::data
