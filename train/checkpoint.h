// Saving and loading the full state of a training run (specs/core.md "Checkpoints").
//
// Each rank writes <ckpt_root>/step_%08d/rank_%05d.h5 (through train/checkpoint_dir.h's
// atomic protocol: .tmp, fsync, rename; COMPLETE written last by rank 0 after a barrier).
// One rank file holds, readable by h5py/h5dump under these names:
//   model/<param name>            every parameter, e.g. model/layers.0.attn.q_proj.weight
//   optim/<param name>/<state>    optimizer state (AdamW: exp_avg, exp_avg_sq)
//   optim/__step__                the optimizer's update count (0-d i64)
//   state/step                    optimizer steps completed (0-d i64)
//   state/tokens_seen             training tokens consumed, all ranks (0-d i64)
//   state/loader_epoch, state/loader_index     data::LMLoader::State of the next batch
//   state/rng_dropout_seed, state/rng_dropout_offset   the model's dropout Generator
//                                 (the seed is a uint64 stored as its int64 bit pattern)
//   state/lr                      learning rate of the last update (f64; the schedule is a
//                                 function of the step, this records where it stood)
//   config                        the resolved RunConfig, text format (string dataset)
// and root attributes: format = "lathe-checkpoint", format_version, rank, world_size, step,
// optimizer (its name), config (the same text as the dataset).
//
// A rank file is a header (the config and the root attributes) plus a list of named parts
// (CheckpointPart): the trainer's are model, optimizer, progress (step, tokens, lr), data
// position and RNG, each writing the names above. A later layer (adapters, federation state)
// adds a part instead of editing this file; a part owns its own HDF5 names and must not
// reuse another's.
#pragma once

#include <functional>
#include <memory>

#include <cstdint>
#include <string>
#include <vector>

#include "autograd/module.h"
#include "core/error.h"
#include "core/fs.h"
#include "data/lm_dataset.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"
#include "train/hdf5_io.h"

namespace lathe::train {

// A file the run needs that cannot be written or read (run directory, metrics, a full
// disk): exit code 3 in the CLI. It lives in core/fs.h, whose writers throw it.
using IoError = lathe::IoError;
// A checkpoint that cannot be written, read, or used for this run (also exit code 3).
class CheckpointError : public IoError {
 public:
  explicit CheckpointError(const std::string& msg) : IoError("checkpoint", msg) {}
};

constexpr int64_t kCheckpointFormatVersion = 1;

// Everything besides the tensors that a run needs to continue exactly.
struct TrainState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  data::LMLoader::State loader;
  uint64_t dropout_seed = 0;
  uint64_t dropout_offset = 0;
  double lr = 0.0;
  int world_size = 1;
  int rank = 0;
  std::string config_text;  // resolved RunConfig (configs::to_text)
};

// One named, stateful piece of a run that a checkpoint saves and restores.
class CheckpointPart {
 public:
  virtual ~CheckpointPart() = default;
  // Names the part in errors ("model", "optimizer", "data position").
  virtual std::string name() const = 0;
  // Writes the part's datasets (and attributes, if any) into a rank file.
  virtual void save(H5Writer& w) const = 0;
  // Reads them back from r (r.path() names the file in errors); throws CheckpointError (or
  // lathe::Error, which the caller wraps) when the file does not fit this run.
  virtual void load(const H5Reader& r) = 0;
};

// The parameters of a module as model/<name>. load: every parameter must be present with
// its shape and dtype, and the file may hold no parameter the module lacks.
// With `trainable_only` (adapter fine-tuning, peft/) only the parameters that require grad
// are saved and expected back: the frozen base comes from model.init_from, not the checkpoint.
class ModelPart : public CheckpointPart {
 public:
  explicit ModelPart(autograd::Module& model, bool trainable_only = false)
      : model_(&model), trainable_only_(trainable_only) {}
  std::string name() const override { return "model"; }
  void save(H5Writer& w) const override;
  void load(const H5Reader& r) override;

 private:
  autograd::Module* model_;
  bool trainable_only_;
};

// The optimizer's state_dict as optim/<key>, and its name as the root attribute
// "optimizer". load moves the stored state to `state_device` (the parameters' device)
// before handing it to the optimizer.
class OptimizerPart : public CheckpointPart {
 public:
  explicit OptimizerPart(optim::Optimizer& opt, Device state_device = Device::cpu())
      : opt_(&opt), device_(state_device) {}
  std::string name() const override { return "optimizer"; }
  void save(H5Writer& w) const override;
  void load(const H5Reader& r) override;

 private:
  optim::Optimizer* opt_;
  Device device_;
};

// A part made of two functions, for small pieces of state (a step count, an RNG position).
class FunctionPart : public CheckpointPart {
 public:
  FunctionPart(std::string name, std::function<void(H5Writer&)> save, std::function<void(const H5Reader&)> load)
      : name_(std::move(name)), save_(std::move(save)), load_(std::move(load)) {}
  std::string name() const override { return name_; }
  void save(H5Writer& w) const override { save_(w); }
  void load(const H5Reader& r) override { load_(r); }

 private:
  std::string name_;
  std::function<void(H5Writer&)> save_;
  std::function<void(const H5Reader&)> load_;
};

// 0-d i64 datasets (exact; a double round trip would lose bits above 2^53), for parts.
void write_i64(H5Writer& w, const std::string& name, int64_t v);
int64_t read_i64(const H5Reader& r, const std::string& name);

// What the header of a rank file records besides its parts.
struct CheckpointMeta {
  int64_t step = 0;
  int64_t tokens_seen = 0;  // also recorded in the step's COMPLETE index
  int world_size = 1;
  int rank = 0;
  std::string config_text;
  // The parallel layout the tensors are sharded for (parallel::layout_name, "dp2 x tp2 x sp1");
  // "" = not recorded (then taken as world_size data-parallel ranks).
  std::string layout;
};

using CheckpointParts = std::vector<CheckpointPart*>;

// Writes one rank file of `parts` atomically (tmp, fsync, rename); CheckpointError naming
// the path and the part that failed.
void write_rank_checkpoint(const std::string& path, const CheckpointParts& parts, const CheckpointMeta& meta);
// Checks that `path` is a lathe checkpoint of this format version and loads `parts` from it
// in order. Returns its header.
CheckpointMeta read_rank_checkpoint(const std::string& path, const CheckpointParts& parts);
// Collective over comm: every rank writes its file of `parts`, then rank 0 marks the step
// COMPLETE, points `latest` at it and keeps the newest keep_last steps (0 = all). Returns
// the step directory.
std::string save_checkpoint(const std::string& ckpt_root, const CheckpointParts& parts, const CheckpointMeta& meta,
                            parallel::Communicator& comm, int keep_last);
// Collective: each rank loads `parts` from its own file of a complete step directory.
// Refuses a checkpoint written by another number of ranks (CheckpointError saying both) and,
// when `layout` is given, one written with another parallel layout (naming both layouts;
// resharding is not supported).
CheckpointMeta load_checkpoint(const std::string& step_dir, const CheckpointParts& parts,
                               parallel::Communicator& comm, const std::string& layout = "");

// ---- the fixed set of parts of a training run (model, optimizer, TrainState) ------------

// Writes one rank's file at `path` atomically (tmp, fsync, rename). opt may be null
// (weights-only file). Throws CheckpointError naming the path.
void write_rank_checkpoint(const std::string& path, const autograd::Module& model, const optim::Optimizer* opt,
                           const TrainState& st);

// Reads the TrainState (and config text) of a rank file without touching a model.
TrainState read_train_state(const std::string& path);

// Loads a rank file into `model` (every parameter must be present with the same shape and
// dtype, and the file may hold no parameter the model lacks: errors name the parameter and
// both shapes) and, when opt is given, the optimizer state. Returns the TrainState.
TrainState read_rank_checkpoint(const std::string& path, autograd::Module& model, optim::Optimizer* opt);

// Collective over comm: every rank writes its file for `st.step`, then rank 0 marks the step
// COMPLETE, points `latest` at it and keeps the newest keep_last steps (0 = all). Returns
// the step directory.
std::string save_checkpoint(const std::string& ckpt_root, const autograd::Module& model, const optim::Optimizer& opt,
                            const TrainState& st, parallel::Communicator& comm, int keep_last);

// Collective: each rank loads its own file of a complete step directory. Refuses a
// checkpoint written by another number of ranks (CheckpointError saying both counts).
TrainState load_checkpoint(const std::string& step_dir, autograd::Module& model, optim::Optimizer* opt,
                           parallel::Communicator& comm);

// ---- inspection (lathe inspect) ----------------------------------------------------------
struct TensorEntry {
  std::string name;  // HDF5 path, e.g. "model/embed.weight"
  Shape shape;
  DType dtype;
  int64_t bytes;
};
struct CheckpointInfo {
  std::string file;        // the rank file described
  std::string step_dir;    // its directory
  bool complete = false;   // COMPLETE marker present
  TrainState state;
  std::vector<TensorEntry> tensors;  // every tensor dataset, sorted by name
  bool verified = false;             // verify: every tensor was read and checked
  int64_t checksummed = 0;           // verify: how many of them carry a checksum (older files: none)
};
// Describes a checkpoint given as a rank file, a step directory (its rank 0 file), a
// checkpoint root, a run directory (their newest complete step) or a `latest` pointer file.
// verify: also reads every tensor, checking its checksum (CheckpointError naming the tensor
// and the file on a mismatch).
CheckpointInfo inspect_checkpoint(const std::string& path, bool verify = false);

// The rank-0 file of a checkpoint given as a rank file, step directory, checkpoint root,
// run directory (<dir>/checkpoints) or "latest" of ckpt_root; throws CheckpointError.
std::string find_checkpoint_file(const std::string& path, const std::string& ckpt_root = "");

}  // namespace lathe::train
