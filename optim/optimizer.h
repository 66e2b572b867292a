// Optimizer: parameter groups plus a per-parameter dictionary of state tensors.
//
// State is keyed by parameter name ("layers.0.attn.q_proj.weight") and state name
// ("exp_avg"), so a checkpoint, a ZeRO shard or a memory report treats every
// optimizer the same way. State tensors are allocated under MemCategory::optimizer_state.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lathe::optim {

struct ParamGroup {
  std::vector<std::pair<std::string, Tensor>> params;  // (name, leaf tensor)
  double lr = 1e-3;                                    // current learning rate (the schedule sets it)
  double weight_decay = 0.0;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;

  // Applies one update from the parameters' .grad(); parameters without a gradient are skipped.
  virtual void step() = 0;
  // Drops every parameter's gradient (the next backward allocates fresh ones).
  void zero_grad();

  std::vector<ParamGroup>& groups() { return groups_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Sets the learning rate of every group to base * group factor (factors default to 1).
  void set_lr(double lr);
  int64_t step_count() const { return step_; }

  // State as flat name -> tensor ("<param>/<state>", plus "__step__"): what a checkpoint stores.
  std::map<std::string, Tensor> state_dict() const;
  // Restores a state_dict; shapes and dtypes must match, every expected entry must be present.
  void load_state_dict(const std::map<std::string, Tensor>& sd);
  // Bytes of optimizer state per group (same order as groups()).
  std::vector<int64_t> state_bytes() const;

 protected:
  // Lazily creates a zero state tensor for a parameter.
  Tensor& state(const std::string& param, const std::string& key, const Shape& shape, DType dt);
  std::vector<ParamGroup> groups_;
  std::vector<double> lr_factor_;
  std::map<std::string, std::map<std::string, Tensor>> state_;
  int64_t step_ = 0;
};

// Global L2 norm of the gradients of `params`; when max_norm > 0 and the norm exceeds it,
// scales every gradient by max_norm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_).
// Returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace lathe::optim
