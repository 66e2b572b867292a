// Sparse fine-tuning with SpIEL (Ansell et al., "Scaling Sparse Fine-Tuning to Large Language
// Models", 2024): a frozen weight W [out, in] plus a trainable sparse delta of k entries,
//   y = x (W + scatter(values -> indices))^T + b,
// values [k] (f32, trainable, zero at start) at flat row-major indices [k] (i64) into W.
//
// The delta's product and its backward touch only the selected entries: forward
// y += index_add over rows of (x[:, cols] * values), and backward
//   d values[n] = sum_t x[t, col_n] dy[t, row_n],   d x[:, col_n] += values[n] dy[:, row_n],
// so no dense weight gradient is formed (the reference clones W every call). Merge adds the
// values into W in f32 (unmerge subtracts them).
//
// Reselection (SpIEL-AG, accumulated gradients): drop the n smallest |values|, grow the n
// candidates with the largest accumulated |gradient| that are not active; the number of active
// entries stays exactly k. SpIEL-MA grows by the SM3 moments instead (row x column
// accumulators, no dense gradient). spiel_schedule says when a phase begins and when to
// reselect with which fraction. The trainer side (the dense gradients of a selection phase,
// the values' Adam with a per-element age, the optimizer state of replaced entries,
// checkpoints) is train/peft_spiel.h; the adapter file layout is peft/adapter_io.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "models/linear.h"

namespace lathe::peft {

// Flat row-major indices into an [out, in] matrix -> (rows, cols), i64 on the indices' device
// (through the host: done when the selection changes, not per step).
std::pair<Tensor, Tensor> sparse_rows_cols(const Tensor& indices, int64_t in);
// y = x[..., in] -> [..., out] of the delta alone: sum_n values[n] x[..., cols[n]] at rows[n].
// Differentiable in x and values (rows and cols are not). With `dense_sink` defined (f32
// [out, in]), backward also adds the dense weight gradient dy^T x into it (SpIEL-AG's
// selection phase; the one place a dense gradient is formed).
Tensor sparse_delta_linear(const Tensor& x, const Tensor& values, const Tensor& rows, const Tensor& cols, int64_t out,
                           const Tensor& dense_sink = Tensor());

// SpIEL's reselection schedule (SftSelector.step, run after every optimizer update with c =
// updates completed): a selection phase (gradients accumulated) begins when c + 1 is a
// multiple of reselection_steps (and at construction), and ends when c = accumulation_steps
// (mod reselection_steps), unless c > total_steps, with a reselection of fraction p: 1 at the
// first one (c = accumulation_steps, replacing the random init), else
// rate * (1 - c / T), or rate * (1 + cos(pi c / T)) / 2 under the cosine policy.
struct SpielSchedule {
  int64_t reselection_steps = 20;
  int64_t accumulation_steps = 5;
  int64_t total_steps = 0;
  double rate = 0.2;
  bool cosine = false;
};
struct SpielStep {
  bool begin_phase = false;
  bool reselect = false;
  double p = 0;  // when reselect
};
SpielStep spiel_schedule(const SpielSchedule& s, int64_t c);

// SpIEL's budget split: k_m = int(total * numel_m / sum numel) per module (numels in order).
std::vector<int64_t> spiel_budget(const std::vector<int64_t>& numels, int64_t total);

enum class SpielRegrow {
  ag,  // SpIEL-AG: the largest accumulated |gradient| over a selection phase
  ma,  // SpIEL-MA: the largest SM3 moment estimate row_acc[i] * col_acc[j]
};
struct SpielOptions {
  SpielRegrow regrow = SpielRegrow::ag;
  double density = 0.01;  // of all model parameters (embeddings included), when budget is 0
  int64_t budget = 0;     // entries over all targeted weights; 0 = density
  SpielSchedule schedule;  // total_steps filled in by the trainer
};

class SparseDeltaLinear : public models::LinearLayer {
 public:
  // k entries drawn uniformly without replacement from gen (sorted), values zero.
  SparseDeltaLinear(std::shared_ptr<models::LinearLayer> base, int64_t k, Generator& gen);
  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "SparseDeltaLinear"; }
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  Tensor base_weight() const override { return base_->base_weight(); }
  Tensor base_bias() const override { return base_->base_bias(); }
  void train(bool on = true) override;

  const std::shared_ptr<models::LinearLayer>& base() const { return base_; }
  Tensor values() const { return values_; }
  Tensor indices() const { return indices_; }
  // indices split into rows and columns of W (i64 [k], on the indices' device).
  Tensor rows() const { return rows_; }
  Tensor cols() const { return cols_; }
  int64_t budget() const { return values_.numel(); }
  // The delta as a dense [out, in] f32 matrix (no autograd history).
  Tensor delta_weight() const;
  void merge();
  void unmerge();
  bool merged() const { return merged_; }

  // SpIEL-AG's selection phase: while on, every backward adds dL/dW (dense, f32 [out, in],
  // summed over backwards) into dense_grad(); W itself stays frozen (no .grad, no state).
  void collect_dense_grad(bool on);
  bool collecting_dense_grad() const { return dense_grad_.defined(); }
  Tensor dense_grad() const { return dense_grad_; }

  // SpIEL-AG reselection with `grad_acc` [out, in] (accumulated gradient of W over the
  // selection phase) and fraction p of the budget: drops the int(k p) smallest |values|,
  // grows as many of the largest |grad_acc| entries that are not active; an index both
  // dropped and regrown stays where it is (with its value). New entries start at zero.
  // Returns the positions (into values/indices) that were replaced.
  std::vector<int64_t> reselect(const Tensor& grad_acc, double p);
  // The same with growth among `candidates` (flat indices) ranked by `scores` (largest first,
  // ties by the lower index): reselect() is this with every entry a candidate, scored |grad|.
  std::vector<int64_t> reselect_among(const std::vector<int64_t>& candidates, const std::vector<float>& scores,
                                      double p);
  // Replaces the indices (a checkpoint or an adapter file being loaded): k distinct flat
  // indices in [0, out * in), errors naming `what` otherwise.
  void set_indices(const Tensor& indices, const std::string& what);

 private:
  std::shared_ptr<models::LinearLayer> base_;
  Tensor values_, indices_;
  Tensor rows_, cols_;  // indices_ split (sparse_rows_cols), refreshed when indices_ change
  Tensor dense_grad_;   // defined while collecting
  bool merged_ = false;
};

}  // namespace lathe::peft
