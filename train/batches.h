// The batches a run trains and evaluates on, whatever the data: packed LM windows
// (data::LMLoader / LMEvalLoader) or instruction samples with masked prompts
// (data::InstructionLoader / InstructionEvalLoader). Both kinds share data::TrainCursor's
// position (epoch, index), so a checkpoint stores the data position the same way for both
// and a resumed run continues with exactly the batch it would have drawn next.
#pragma once

#include <memory>

#include "core/device.h"
#include "data/instruction_dataset.h"
#include "data/lm_dataset.h"
#include "models/model.h"
#include "parallel/communicator.h"
#include "train/run_setup.h"
#include "train/trainer.h"

namespace lathe::train {

class TrainBatches {
 public:
  using State = data::LoaderState;

  // Over data.train (LM) or data.train_instr (instruction), with the loader options of LMLoader.
  TrainBatches(const RunData& data, const data::LMLoaderOptions& options);

  data::LMBatch next();
  State state() const;
  void set_state(State s);  // validated by the loader (throws lathe::Error)
  int64_t batches_per_epoch() const;
  int64_t global_batch() const;
  int64_t size() const;  // windows or samples in the training split
  bool instruction() const { return instr_ != nullptr; }

 private:
  std::unique_ptr<data::LMLoader> lm_;
  std::unique_ptr<data::InstructionLoader> instr_;
};

// One evaluation pass over either kind of data: every window or sample once, in order.
class EvalBatches {
 public:
  EvalBatches(const data::PackedLMDataset& ds, int64_t micro_batch, int64_t rank, int64_t world);
  EvalBatches(const data::InstructionDataset& ds, int64_t micro_batch, int64_t rank, int64_t world);

  int64_t num_batches() const;  // the same on every rank
  bool next(data::LMBatch& out);
  int64_t size() const { return size_; }   // windows or samples
  const char* unit() const { return lm_ ? "windows" : "samples"; }

 private:
  std::unique_ptr<data::LMEvalLoader> lm_;
  std::unique_ptr<data::InstructionEvalLoader> instr_;
  int64_t size_ = 0;
};

// The evaluation routine behind every evaluate(): mean next-token loss over the scored
// targets (targets != data::kIgnoreIndex: every token of packed windows, the response tokens
// of instruction samples) of the first max_batches global batches (0 = all). Each rank scores
// its rows on `model`'s device and (loss sum, target count) is reduced over comm. Eval mode
// without gradients; restores the training mode. Under bf16 `compute`, the forward runs in
// models::Autocast like training's.
EvalResult evaluate(models::CausalLM& model, EvalBatches& batches, int64_t max_batches, parallel::Communicator& comm,
                    DType compute = DType::f32);

// evaluate() over instruction samples (the packed-window overload is in trainer.h).
EvalResult evaluate(models::CausalLM& model, const data::InstructionDataset& ds, int64_t micro_batch,
                    int64_t max_batches, parallel::Communicator& comm);

// The validation loss of a run's data (windows or instruction samples); data.val_size() > 0.
EvalResult evaluate_val(models::CausalLM& model, const RunData& data, int64_t micro_batch, int64_t max_batches,
                        parallel::Communicator& comm, DType compute = DType::f32);

}  // namespace lathe::train
