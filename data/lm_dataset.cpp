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
    : dataset_(std::move(dataset)),
      cursor_(dataset_.size(), options, "LMLoader", "windows",
              " of " + std::to_string(dataset_.seq_len()) + " tokens") {}

LMBatch LMLoader::next() {
  LMBatch out;
  const std::vector<int64_t> windows = cursor_.next(&out.epoch, &out.step);
  fill_batch(dataset_, windows, out);
  return out;
}

// ---- LMEvalLoader ---------------------------------------------------------------------------

LMEvalLoader::LMEvalLoader(PackedLMDataset dataset, int64_t micro_batch, int64_t rank, int64_t world_size)
    : dataset_(std::move(dataset)), cursor_(dataset_.size(), micro_batch, rank, world_size, "LMEvalLoader") {}

bool LMEvalLoader::next(LMBatch& out) {
  std::vector<int64_t> windows;
  int64_t step = 0;
  if (!cursor_.next(windows, step)) return false;
  fill_batch(dataset_, windows, out);
  out.epoch = 0;
  out.step = step;
  return true;
}

}  // namespace lathe::data
