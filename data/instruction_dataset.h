// Instruction data as training samples: one document (prompt + response, data/instruction.h)
// per sample, cut or padded to seq_len, with targets only where the loss mask is 1.
//
// Sample of document d with tokens x[0..L) and mask m[0..L), T = seq_len, t in [0, T):
//   ids[t]     = x[t]                 for t < L, pad_id after (padding)
//   targets[t] = x[t+1]               where t + 1 < L and m[t+1] = 1 (a response token)
//              = ignore_index (-100)  elsewhere: prompt tokens, padding, past the cut
// So the model at position t is trained to write the next token exactly when that token is
// part of a response; documents longer than T + 1 tokens lose their end. A document whose
// trained tokens all fall past the cut (a prompt of T tokens or more) would give a row with
// no target at all; such documents are left out (dropped() counts them), so every row of
// every batch carries at least one target.
//
// The loaders mirror LMLoader / LMEvalLoader (data/lm_dataset.h) exactly, with samples in
// place of windows: the same (seed, epoch) permutation (data/permutation.h), the same global
// batch and rank slicing, the same State (LMLoader::State), and LMBatch as the batch type
// (its `windows` holds each row's sample index).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/lm_dataset.h"
#include "data/shards.h"

namespace lathe::data {

// PyTorch's CrossEntropyLoss default; the loss kernels skip targets equal to it.
inline constexpr int64_t kIgnoreIndex = -100;

class InstructionDataset {
 public:
  InstructionDataset() = default;
  // Over tokens/mask with document boundaries doc_offsets (D+1 entries, from 0 to
  // tokens->size(), non-decreasing); mask has one entry per token.
  InstructionDataset(std::shared_ptr<const TokenIds> tokens, std::shared_ptr<const std::vector<uint8_t>> mask,
                     std::vector<int64_t> doc_offsets, int64_t seq_len, int32_t pad_id = 0);
  // Over a loaded split of instruction data (open_shards); lm data (no mask) is an error.
  InstructionDataset(const ShardSet& shards, int64_t seq_len, int32_t pad_id = 0);

  int64_t size() const { return static_cast<int64_t>(docs_.size()); }  // samples
  int64_t seq_len() const { return seq_len_; }
  int64_t num_documents() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t dropped() const { return num_documents() - size(); }
  int32_t pad_id() const { return pad_id_; }
  // The document sample i is made of.
  int64_t document(int64_t i) const;

  // Writes sample i's T ids and T targets.
  void fill(int64_t i, int64_t* ids, int64_t* targets) const;
  std::vector<int64_t> ids(int64_t i) const;
  std::vector<int64_t> targets(int64_t i) const;
  // Number of targets that are not ignore_index in sample i.
  int64_t num_targets(int64_t i) const;

 private:
  std::shared_ptr<const TokenIds> tokens_;
  std::shared_ptr<const std::vector<uint8_t>> mask_;
  std::vector<int64_t> offsets_;
  std::vector<int64_t> docs_;  // kept documents, in order
  int64_t seq_len_ = 0;
  int32_t pad_id_ = 0;
};

// Training loader over instruction samples; the contract of LMLoader (see lm_dataset.h).
class InstructionLoader {
 public:
  using State = LoaderState;

  InstructionLoader(InstructionDataset dataset, const LMLoaderOptions& options);

  LMBatch next();
  State state() const { return cursor_.state(); }
  void set_state(State s) { cursor_.set_state(s); }

  int64_t global_batch() const { return cursor_.global_batch(); }
  int64_t batches_per_epoch() const { return cursor_.batches_per_epoch(); }
  const InstructionDataset& dataset() const { return dataset_; }
  const LMLoaderOptions& options() const { return cursor_.options(); }
  std::vector<int64_t> epoch_order(int64_t epoch) const { return cursor_.epoch_order(epoch); }

 private:
  InstructionDataset dataset_;
  TrainCursor cursor_;
};

// Evaluation loader: every sample once, in order; the contract of LMEvalLoader.
class InstructionEvalLoader {
 public:
  InstructionEvalLoader(InstructionDataset dataset, int64_t micro_batch, int64_t rank = 0, int64_t world_size = 1);
  int64_t num_batches() const { return cursor_.num_batches(); }
  bool next(LMBatch& out);
  void reset() { cursor_.reset(); }

 private:
  InstructionDataset dataset_;
  EvalCursor cursor_;
};

}  // namespace lathe::data
