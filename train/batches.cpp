// Training and evaluation batches over either kind of data; see batches.h.
#include "train/batches.h"

#include <cmath>
#include <optional>

#include "autograd/autograd.h"
#include "models/autocast.h"

namespace lathe::train {

TrainBatches::TrainBatches(const RunData& data, const data::LMLoaderOptions& options) {
  if (data.instruction)
    instr_ = std::make_unique<data::InstructionLoader>(data.train_instr, options);
  else
    lm_ = std::make_unique<data::LMLoader>(data.train, options);
}

data::LMBatch TrainBatches::next() { return instr_ ? instr_->next() : lm_->next(); }
TrainBatches::State TrainBatches::state() const { return instr_ ? instr_->state() : lm_->state(); }
void TrainBatches::set_state(State s) {
  if (instr_)
    instr_->set_state(s);
  else
    lm_->set_state(s);
}
int64_t TrainBatches::batches_per_epoch() const { return instr_ ? instr_->batches_per_epoch() : lm_->batches_per_epoch(); }
int64_t TrainBatches::global_batch() const { return instr_ ? instr_->global_batch() : lm_->global_batch(); }
int64_t TrainBatches::size() const { return instr_ ? instr_->dataset().size() : lm_->dataset().size(); }

EvalBatches::EvalBatches(const data::PackedLMDataset& ds, int64_t micro_batch, int64_t rank, int64_t world)
    : lm_(std::make_unique<data::LMEvalLoader>(ds, micro_batch, rank, world)), size_(ds.size()) {}
EvalBatches::EvalBatches(const data::InstructionDataset& ds, int64_t micro_batch, int64_t rank, int64_t world)
    : instr_(std::make_unique<data::InstructionEvalLoader>(ds, micro_batch, rank, world)), size_(ds.size()) {}
int64_t EvalBatches::num_batches() const { return lm_ ? lm_->num_batches() : instr_->num_batches(); }
bool EvalBatches::next(data::LMBatch& out) { return lm_ ? lm_->next(out) : instr_->next(out); }

EvalResult evaluate(models::CausalLM& model, EvalBatches& batches, int64_t max_batches, parallel::Communicator& comm,
                    DType compute) {
  const bool was_training = model.is_training();
  model.eval();
  autograd::NoGradGuard no_grad;
  std::optional<models::Autocast> autocast;
  if (compute != DType::f32) autocast.emplace(compute);
  const Device device = model.device();
  int64_t n = batches.num_batches();
  if (max_batches > 0) n = std::min(n, max_batches);
  double loss_sum = 0, targets = 0;
  data::LMBatch b;
  for (int64_t i = 0; i < n && batches.next(b); ++i) {
    if (b.ids.size(0) == 0) continue;
    // Counted on the host, where the loader built the batch.
    int64_t scored = 0;
    for (int64_t t : b.targets.to_vector<int64_t>()) scored += t != data::kIgnoreIndex;
    if (scored == 0) continue;
    // model.loss is the mean over this batch's scored targets; weighting it by their count
    // gives the mean over every scored target of the pass (a short last batch included).
    const Tensor loss = model.loss(b.ids.to(device), b.targets.to(device), data::kIgnoreIndex);
    loss_sum += loss.item() * static_cast<double>(scored);
    targets += static_cast<double>(scored);
  }
  model.train(was_training);
  std::vector<double> tot = {loss_sum, targets};
  if (comm.size() > 1) {
    Tensor t = Tensor::from_vector<double>(tot, {2});
    comm.all_reduce(t, parallel::ReduceOp::sum);
    tot = t.to_vector<double>();
  }
  LATHE_CHECK(tot[1] > 0) << "evaluate: the dataset has no target to score (" << batches.size() << " "
                          << batches.unit() << ")";
  EvalResult res;
  res.loss = tot[0] / tot[1];
  res.perplexity = std::exp(res.loss);
  res.tokens = static_cast<int64_t>(tot[1]);
  res.batches = n;
  return res;
}

EvalResult evaluate(models::CausalLM& model, const data::PackedLMDataset& ds, int64_t micro_batch,
                    int64_t max_batches, parallel::Communicator& comm) {
  EvalBatches batches(ds, micro_batch, comm.rank(), comm.size());
  return evaluate(model, batches, max_batches, comm);
}

EvalResult evaluate(models::CausalLM& model, const data::InstructionDataset& ds, int64_t micro_batch,
                    int64_t max_batches, parallel::Communicator& comm) {
  EvalBatches batches(ds, micro_batch, comm.rank(), comm.size());
  return evaluate(model, batches, max_batches, comm);
}

EvalResult evaluate_val(models::CausalLM& model, const RunData& data, int64_t micro_batch, int64_t max_batches,
                        parallel::Communicator& comm, DType compute) {
  if (data.instruction) {
    EvalBatches batches(data.val_instr, micro_batch, comm.rank(), comm.size());
    return evaluate(model, batches, max_batches, comm, compute);
  }
  EvalBatches batches(data.val, micro_batch, comm.rank(), comm.size());
  return evaluate(model, batches, max_batches, comm, compute);
}

}  // namespace lathe::train
