// The batches a run trains and evaluates on, whatever the data: packed LM windows
// (data::LMLoader / LMEvalLoader) or instruction samples with masked prompts
// (data::InstructionLoader / InstructionEvalLoader). Both loaders share LMLoader::State, so a
// checkpoint stores the data position (epoch, index) the same way for both and a resumed run
// continues with exactly the batch it would have drawn next.
#pragma once

#include <memory>

#include "data/instruction_dataset.h"
#include "data/lm_dataset.h"
#include "models/model.h"
#include "parallel/communicator.h"
#include "train/run_setup.h"
#include "train/trainer.h"

namespace lathe::train {

class TrainBatches {
 public:
  using State = data::LMLoader::State;

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

// Mean next-token loss of `model` over the scored targets (response tokens) of the first
// max_batches global batches of ds (0 = all), like evaluate() for packed windows: each rank
// scores its rows and (loss sum, target count) is reduced over comm. Eval mode, no gradients.
EvalResult evaluate(models::CausalLM& model, const data::InstructionDataset& ds, int64_t micro_batch,
                    int64_t max_batches, parallel::Communicator& comm);

// The validation loss of a run's data (windows or instruction samples); data.val_size() > 0.
EvalResult evaluate_val(models::CausalLM& model, const RunData& data, int64_t micro_batch, int64_t max_batches,
                        parallel::Communicator& comm);

}  // namespace lathe::train
