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
    : dataset_(std::move(dataset)),
      cursor_(dataset_.size(), options, "InstructionLoader", "samples",
              " (" + std::to_string(dataset_.dropped()) + " documents dropped for having no response token within "
              "seq_len " + std::to_string(dataset_.seq_len()) + ")") {}

LMBatch InstructionLoader::next() {
  LMBatch out;
  const std::vector<int64_t> samples = cursor_.next(&out.epoch, &out.step);
  fill_batch(dataset_, samples, out);
  return out;
}

// ---- InstructionEvalLoader ------------------------------------------------------------------

InstructionEvalLoader::InstructionEvalLoader(InstructionDataset dataset, int64_t micro_batch, int64_t rank,
                                             int64_t world_size)
    : dataset_(std::move(dataset)), cursor_(dataset_.size(), micro_batch, rank, world_size, "InstructionEvalLoader") {}

bool InstructionEvalLoader::next(LMBatch& out) {
  std::vector<int64_t> samples;
  int64_t step = 0;
  if (!cursor_.next(samples, step)) return false;
  fill_batch(dataset_, samples, out);
  out.epoch = 0;
  out.step = step;
  return true;
}

}  // namespace lathe::data
