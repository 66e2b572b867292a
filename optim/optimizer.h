// Optimizer: parameter groups plus a per-parameter dictionary of state tensors.
//
// An optimizer is two per-parameter functions (so GaLore, 8-bit states or SGD are additions,
// not rewrites of the loop, the checkpoint or the memory report):
//   init_state(name, param, group) -> named tensors of any shape and dtype, on param's device
//   update(name, param, grad, state, group, step)
// step() runs update over every parameter with a gradient; step_param(name) runs it for one
// (layer-wise updates from a gradient-ready hook). Each parameter counts its own steps.
//
// State is keyed by parameter name ("layers.0.attn.q_proj.weight") and state name
// ("exp_avg"), so a checkpoint, a ZeRO shard or a memory report treats every optimizer the
// same way. State tensors are allocated under MemCategory::optimizer_state.
//
// Groups carry their own options (lr scale, weight decay, and an open map of method options
// such as rank or block size); parameters are matched to groups by a regex on their name,
// the first matching group winning (assign_groups).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "core/tensor.h"

namespace lathe::optim {

using NamedParams = std::vector<std::pair<std::string, Tensor>>;
using StateMap = std::map<std::string, Tensor>;
// A method option's value (rank: int, scale: double, proj_type: string, ...).
using OptionValue = std::variant<int64_t, double, bool, std::string>;

struct ParamGroup {
  NamedParams params;        // (name, leaf tensor)
  double lr = 1e-3;          // current learning rate: the schedule's lr times lr_scale
  double weight_decay = 0.0;
  double lr_scale = 1.0;
  std::map<std::string, OptionValue> options;  // method options, read with the getters below
  std::string name;                            // for errors and reports ("" = unnamed)

  // Typed reads of `options`: `fallback` when absent, an error naming group and key when the
  // stored value has another type (an int is accepted where a double is asked for).
  int64_t option_int(const std::string& key, int64_t fallback) const;
  double option_double(const std::string& key, double fallback) const;
  bool option_bool(const std::string& key, bool fallback) const;
  std::string option_string(const std::string& key, const std::string& fallback) const;
};

// How assign_groups forms a group: which parameters it takes and the options it gives them.
struct GroupSpec {
  std::string name;
  // ECMAScript regex matched against the whole parameter name; "" matches every name.
  std::string pattern;
  // Only parameters with at most this many dims (-1: any). Expresses "no decay on 1-D params",
  // which is a property of the shape, not the name.
  int64_t max_dim = -1;
  double lr_scale = 1.0;
  // Unset: the fallback group's weight decay (so a group that only sets, say, a rank keeps the
  // configured decay).
  std::optional<double> weight_decay;
  std::map<std::string, OptionValue> options;
};

// Puts each trainable parameter (requires_grad) into the first spec that matches it, else into
// `fallback` (whose pattern and max_dim are ignored; its unset weight_decay means 0). Groups that receive no parameter are left
// out; the rest keep the order of `specs`, the fallback last. Errors name a bad regex.
std::vector<ParamGroup> assign_groups(const NamedParams& named, const std::vector<GroupSpec>& specs,
                                      const GroupSpec& fallback);

// Paged optimizer state (QLoRA's paged optimizers; core/paged.h): state tensors with at least
// min_numel elements are allocated from the device's paged allocator (CUDA managed memory,
// prefetched before each update; on the CPU a file-backed mapping under dir).
struct PagingOptions {
  bool enabled = false;
  int64_t min_numel = 100000;
  std::string dir;  // CPU backing files; "" = the system temp directory
};

class Optimizer {
 public:
  explicit Optimizer(std::vector<ParamGroup> groups);
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;

  // The state a parameter starts with (zeros, usually), created on param.device(). The same
  // call tells load_state_dict which keys, shapes and dtypes a checkpoint must hold.
  virtual StateMap init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const = 0;
  // One update of `param` in place from `grad`. `step` is this parameter's update count,
  // 1 on its first update.
  virtual void update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
                      const ParamGroup& group, int64_t step) = 0;

  // Updates every parameter that has a .grad(); the others keep their state and step count.
  virtual void step();
  // Updates one parameter from its .grad() (layer-wise updates). Returns false when it has no
  // gradient; unknown names are an error.
  bool step_param(const std::string& name);
  // Counts one optimizer step whose parameters are updated one at a time through step_param
  // (layer-wise updates, train/layerwise.h), so step_count() and the checkpointed __step__
  // mean the same as with step().
  void count_step() { begin_step(); }
  // Drops every parameter's gradient (the next backward allocates fresh ones).
  void zero_grad();

  // Options (lr, weight_decay, lr_scale, method options) may be edited; the parameter lists not.
  std::vector<ParamGroup>& groups() { return groups_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Sets the learning rate of every group to lr * its lr_scale.
  void set_lr(double lr);
  // Calls of step() so far.
  int64_t step_count() const { return step_; }
  // Updates applied to one parameter so far (0 for one never updated).
  int64_t param_step(const std::string& name) const;
  // The state of one parameter (empty before its first update).
  const StateMap& param_state(const std::string& name) const;

  // State as flat name -> tensor: "<param>/<state>", "<param>/__step__" (i64) per updated
  // parameter, and "__step__" (step_count()). What a checkpoint stores.
  std::map<std::string, Tensor> state_dict() const;
  // Restores a state_dict. Each parameter's entries must be exactly the keys init_state gives
  // it, with those shapes and dtypes (errors name the parameter and the key); tensors land on
  // the device init_state would use. A parameter with state now must have state in `sd`.
  void load_state_dict(const std::map<std::string, Tensor>& sd);
  // Bytes of optimizer state per group (same order as groups()).
  std::vector<int64_t> state_bytes() const;
  // The part of state_bytes() in paged memory, per group.
  std::vector<int64_t> paged_state_bytes() const;

  // Paged state for the state created from now on (set it before the first step).
  void set_paging(PagingOptions p) { paging_ = std::move(p); }
  const PagingOptions& paging() const { return paging_; }

 protected:
  std::vector<ParamGroup> groups_;

  // init_state under the optimizer-state memory category and, when paging is on, the paged
  // allocation guard; what every creation of state goes through.
  StateMap make_state(const std::string& name, const Tensor& param, const ParamGroup& group) const;
  // Moves the paged tensors of `state` to their device ahead of the update (no-op otherwise).
  static void prefetch_state(const StateMap& state);

  // For a step() that updates several parameters in one call (AdamW's multi-tensor kernel):
  // begin_step() counts the step; pending_updates(g) lists what step() would update in group
  // g (parameters with a gradient, their state, created by init_state on first use, and the
  // step number each update takes); commit_updates() records those that went through.
  struct PendingUpdate {
    std::string name;
    Tensor param, grad;
    StateMap* state;  // owned by the optimizer; stable until load_state_dict
    int64_t step;
  };
  void begin_step() { ++step_; }
  std::vector<PendingUpdate> pending_updates(size_t group);
  void commit_updates(const std::vector<PendingUpdate>& done);

 private:
  struct Slot {
    size_t group, index;
  };
  const Slot& slot_of(const std::string& name) const;
  void update_one(const Slot& s);

  std::map<std::string, Slot> slots_;             // parameter name -> where it lives in groups_
  std::map<std::string, StateMap> state_;         // parameter name -> state
  std::map<std::string, int64_t> param_steps_;    // parameter name -> updates applied
  int64_t step_ = 0;
  PagingOptions paging_;
};

// Squared L2 norm of all gradients of `params` as a 0-d f32 tensor on their device, with no
// host sync: one norm per gradient on the device, summed there. Gradients that are undefined
// are skipped; with none at all the result is a CPU zero.
Tensor grad_norm_squared(const std::vector<Tensor>& params);

// Global L2 norm of the gradients of `params`; when max_norm > 0 and the norm exceeds it,
// scales every gradient by max_norm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_).
// Returns the norm before clipping; the only host sync is the one read of the total.
// all_reduce_sq, when set, is applied to the squared-norm tensor before the square root: for
// sharded parameters it sums the shards' contributions across ranks.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm,
                      const std::function<void(Tensor&)>& all_reduce_sq = {});

}  // namespace lathe::optim
