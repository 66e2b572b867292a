// SpIEL (peft/spiel.h) in the training loop: the values' optimizer, the selection phases and
// reselections between steps, and their checkpoint part.
//
// Optimizer: SpielOptimizer wraps the run's optimizer (optimizer.type) and takes over the
// `<module>.sft_values` tensors: Adam whose bias correction uses a per-element age
// (SftAdamW): c1 = 1 - beta1^age, c2 = 1 - beta2^age, torch's form (decoupled decay
// p -= lr wd p first, eps outside the correction), beta1, beta2, eps from the optimizer
// section and lr, weight decay from the values' group. State: exp_avg, exp_avg_sq, age (f32,
// per element), and with SpIEL-MA the SM3 accumulators sm3_row [out] and sm3_col [in]:
// nu = min(row[r], col[c]) + g^2 per entry, max-ed into its row and column. Every other
// trainable tensor (modules_to_save, biases) goes to the wrapped optimizer unchanged.
//
// Selection (SftSelector.step after every update, c = steps completed):
//   SpIEL-AG: during a phase the sparse delta's backward also forms the dense gradient of W
//   (SparseDeltaLinear::collect_dense_grad; only then: outside a phase no weight gradient is
//   formed, and W never requires grad, so it has no .grad, no optimizer state and no place in
//   the checkpoint). The first step's gradient G picks
//   k candidates per module (top-k |G|), then every step of the phase (the first included)
//   adds G and G^2 at the candidates (all-reduced over data-parallel ranks) and counts n. At
//   the reselection the int(k p) smallest |values| are dropped and the largest |sum G| grown
//   (peft/spiel.h reselect_among); a grown entry starts at 0 with its Adam state seeded so
//   that the bias-corrected moments are the phase's means: m = mean G (1 - beta1^n),
//   v = mean G^2 (1 - beta2^n), age = n.
//   SpIEL-MA: no phase; at a reselection the score of every entry is row[i] * col[j] from the
//   SM3 accumulators; a grown entry's Adam state restarts (m = v = 0, age = 0).
// The unit is the optimizer step (its gradient summed over micro-batches), so age counts
// the updates an entry has seen, as the reference's n / grad_accum does.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/model.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"
#include "peft/inject.h"
#include "train/checkpoint.h"

namespace lathe::train {

struct SpielAdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool sm3 = false;  // keep the SM3 accumulators (SpIEL-MA)
};

// One aged-Adam update of values (f32 [k]) from grad, in place, on any device (no host sync).
// m, v, age: f32 [k]. With row/col defined (SM3 accumulators) they are updated too from the
// entries' rows and cols.
void spiel_adam_update(const Tensor& values, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& age,
                       double lr, double weight_decay, const SpielAdamOptions& o);
// The SM3 accumulators' update: nu = min(row[rows], col[cols]) + g^2, row/col = max(row/col, nu).
// indices: the entries' flat indices into [out, in] (rows * in + cols).
void spiel_sm3_update(const Tensor& grad, const Tensor& indices, const Tensor& rows, const Tensor& cols,
                      const Tensor& row, const Tensor& col);

class SpielOptimizer final : public optim::Optimizer {
 public:
  // Takes inner's groups; `layers`: parameter name (<module>.sft_values) -> its layer.
  SpielOptimizer(std::unique_ptr<optim::Optimizer> inner, std::map<std::string, peft::SparseDeltaLinear*> layers,
                 SpielAdamOptions o);
  const char* name() const override { return "SpIEL-AdamW"; }
  optim::StateMap init_state(const std::string& name, const Tensor& param, const optim::ParamGroup& group) const override;
  void update(const std::string& name, const Tensor& param, const Tensor& grad, optim::StateMap& state,
              const optim::ParamGroup& group, int64_t step) override;
  const SpielAdamOptions& options() const { return o_; }

 private:
  std::unique_ptr<optim::Optimizer> inner_;
  std::map<std::string, peft::SparseDeltaLinear*> layers_;
  SpielAdamOptions o_;
};

class SpielSelector {
 public:
  SpielSelector(models::CausalLM& model, const peft::SpielOptions& opts, parallel::Communicator& comm);
  // Replaces the run's optimizer by a SpielOptimizer around it (betas and eps from `cfg`).
  std::unique_ptr<optim::Optimizer> wrap(std::unique_ptr<optim::Optimizer> inner, double beta1, double beta2,
                                         double eps);
  // A fresh start: the first selection phase begins (SpIEL-AG).
  void start();
  // After the update that completed step c (>= 1).
  void after_step(int64_t c);
  // The selection state (phase, candidates, sums) for checkpoints; the indices are in
  // frozen_adapter_part (train/peft_setup.h).
  std::shared_ptr<CheckpointPart> checkpoint_part();
  bool in_phase() const { return in_phase_; }
  // Reselections done so far (for tests and logs).
  int64_t reselections() const { return reselections_; }

 private:
  struct Layer {
    std::string name;
    peft::SparseDeltaLinear* l;
    Tensor cand, sum, sq;  // AG: candidate flat indices (i64 [k]), sums of G and G^2 there (f32 [k])
  };
  void set_phase(bool on);
  void accumulate();
  void reselect(double p);

  models::CausalLM& model_;
  peft::SpielOptions opts_;
  parallel::Communicator& comm_;
  std::vector<Layer> layers_;
  SpielOptimizer* opt_ = nullptr;
  bool in_phase_ = false;
  bool has_cand_ = false;
  int64_t n_ = 0;  // steps accumulated in this phase
  int64_t reselections_ = 0;
};

}  // namespace lathe::train
