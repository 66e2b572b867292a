// Data parallelism: every rank holds a full replica, computes gradients on its own rows,
// and the gradients are averaged over ranks before each optimizer step.
//
// BucketReducer does the averaging the way PyTorch DDP does (Li et al., "PyTorch
// Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020):
// - Parameters are packed into buckets of about bucket_mb MiB, in the REVERSE of their
//   registration order, which is roughly the order backward finishes their gradients
//   (the last layers first).
// - A gradient-ready hook (autograd/hooks.h) on every parameter copies its final gradient
//   into its bucket's flat buffer; when the last gradient of a bucket arrives, the bucket's
//   all-reduce starts asynchronously while backward goes on with earlier layers.
// - Buckets start strictly in bucket order on every rank, whatever order the hooks fire in
//   (a bucket that is full waits for the ones before it), so all ranks issue the same
//   collectives in the same order, as MPI requires.
// - finish(), after backward, starts whatever is left (buckets holding a parameter that got
//   no gradient in this backward), waits for every bucket and writes the mean over ranks
//   back into each parameter's .grad.
//
// Parameters without a gradient: each bucket carries one presence flag per parameter next
// to the gradients (reduced with them). A parameter that has no .grad on a rank contributes
// zeros there; if no rank had a gradient for it, its .grad stays undefined on every rank
// (what one process would see, so the optimizer skips it the same way); otherwise every
// rank gets the mean (the missing ranks counting as zero, as in DDP).
//
// Gradient accumulation: arm(false) before the backward of every micro-batch but the last
// (hooks do nothing, gradients accumulate locally), arm(true) before the last one; the
// hooks then see the accumulated gradient.
//
// Layer-wise updates (set_on_reduced): instead of writing the means into .grad at the end,
// the reducer hands each parameter's mean to a function as soon as its bucket's all-reduce
// has completed, usually from a later hook while backward still runs, so the optimizer can
// step that parameter at once (train/layerwise.h). In that mode no whole-model gradient is
// kept: a parameter's .grad is released as soon as its copy is in the bucket, a bucket's
// buffer is allocated when its first gradient arrives and released once handed over, and at
// most max_in_flight buckets travel at a time (the hook that would start one more first
// waits for the oldest), so the gradient memory is bounded by those buckets plus the ones
// being filled, not by the model.
//
// Progress: Open MPI moves a non-blocking collective along only inside MPI calls. Every
// hook call tests the oldest bucket in flight (MPI_Test), which is frequent enough to let
// most buckets finish during backward without a progress thread taking a core (2 ranks, a
// 3.3M-parameter GPT-2, 2 MiB buckets: about 83% of the buckets were complete when
// backward ended; a polling progress thread was tried and did worse on 2 shared cores).
// The bucket holding the first-registered parameters (the embeddings) can only start when
// backward ends, so its all-reduce is always exposed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace lathe::parallel {

struct BucketReducerOptions {
  double bucket_mb = 25;  // bucket capacity in MiB (2^20 bytes); > 0
  // false: the hooks only record readiness and finish() packs and reduces every bucket
  // after backward (no overlap; the baseline for measuring what overlap hides).
  bool overlap = true;
};

// Running totals over the synchronized backwards (finish() calls) of a reducer.
struct BucketReducerStats {
  int64_t syncs = 0;             // finish() calls that reduced
  int64_t buckets_early = 0;     // buckets started from a hook, during backward
  int64_t buckets_late = 0;      // buckets started by finish(), after backward
  int64_t buckets_done_early = 0;  // buckets already complete when backward ended
  int64_t bytes = 0;             // bytes all-reduced (flags included)
  double backward_s = 0;         // armed backward: from arm(true) to finish()
  double finish_s = 0;           // time in finish(): the communication left exposed
  double wait_s = 0;             // part of finish_s blocked waiting for buckets
  // Layer-wise mode (set_on_reduced):
  int64_t handed_over = 0;        // means handed to the function
  int64_t handed_over_early = 0;  // of which before finish(), during backward
  double room_wait_s = 0;         // time hooks waited for a bucket in flight to make room
};

class BucketReducer {
 public:
  struct Bucket {
    std::vector<size_t> params;   // indices into the constructor's list, in bucket order
    std::vector<int64_t> offsets; // element offset of each parameter in the flat buffer
    int64_t numel = 0;            // gradient elements (the presence flags follow them)
    DType dtype = DType::f32;
    Device device;
  };

  // params: (name, tensor) in registration order; every tensor must require grad and be a
  // leaf; names must be unique (they appear in error messages). Registers one
  // gradient-ready hook per parameter (removed by the destructor). comm is shared by
  // everything that uses it: all ranks must build the reducer over the same parameter
  // shapes, in the same order.
  BucketReducer(std::vector<std::pair<std::string, Tensor>> params, std::shared_ptr<Communicator> comm,
                BucketReducerOptions opts = {});
  ~BucketReducer();
  BucketReducer(const BucketReducer&) = delete;
  BucketReducer& operator=(const BucketReducer&) = delete;

  // Before each backward: sync = true when this backward's gradients are the ones to
  // average (the last micro-batch of a step). Throws when a synchronized backward was
  // armed and not yet finished.
  void arm(bool sync);
  // After the armed backward: starts the remaining buckets, waits for all of them and
  // writes the averages into .grad. Does nothing when the last arm() was arm(false).
  void finish();
  bool armed() const { return armed_; }

  // Layer-wise mode (see the top of this file): fn(name, param, mean) receives a parameter's
  // mean gradient over ranks, a view into the bucket buffer that is valid only during the
  // call, once its bucket's all-reduce has completed; in bucket order,
  // from hooks during backward or from finish(). Parameters that no rank had a gradient for
  // are not handed over (their .grad stays undefined, as in one process). Nothing is
  // written into .grad. max_in_flight >= 1 bounds the buckets started and not yet handed
  // over. Call between syncs (not while armed); an empty fn returns to the default mode.
  using ReducedFn = std::function<void(const std::string& name, const Tensor& param, const Tensor& mean_grad)>;
  void set_on_reduced(ReducedFn fn, int max_in_flight = 2);

  const std::vector<Bucket>& buckets() const { return buckets_; }
  const BucketReducerStats& stats() const { return stats_; }
  const std::shared_ptr<Communicator>& comm() const { return comm_; }

 private:
  struct Slot {
    std::string name;
    Tensor param;
    size_t bucket = 0;
    size_t pos = 0;        // index within its bucket
    int64_t hook_id = -1;
    bool ready = false;    // gradient final in the armed backward
    bool packed = false;   // copied into the flat buffer
  };
  struct BucketState {
    Tensor flat;           // numel + params.size() elements
    size_t pending = 0;    // members not ready yet
    WorkPtr work;
    bool done = false;     // work completed (observed by test/wait)
  };

  void on_grad_ready(size_t i, const Tensor& grad);
  // Copies parameter i's gradient (grad, or its current .grad, or zeros) into its bucket.
  void pack(size_t i, const Tensor& grad);
  void launch_ready_prefix();
  void launch(size_t b);
  void drive_progress();
  // Layer-wise mode: hands bucket b's members to on_reduced_ and releases its buffer.
  void hand_over(size_t b);
  void allocate_flat(size_t b);
  bool sync_seen_any() const;  // a hook fired since arm(true)

  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<BucketState> state_;
  std::shared_ptr<Communicator> comm_;
  BucketReducerOptions opts_;
  ReducedFn on_reduced_;   // set: layer-wise mode
  int max_in_flight_ = 2;
  bool armed_ = false;
  bool in_finish_ = false;
  size_t next_launch_ = 0;   // buckets [0, next_launch_) are started in this sync
  size_t first_open_ = 0;    // buckets [0, first_open_) are known complete
  double arm_time_ = 0;
  BucketReducerStats stats_;

};

// The buckets BucketReducer forms: parameters taken in reverse order, a bucket closing
// before a parameter that would take it past cap_bytes, or that has another dtype or
// device; a parameter larger than cap_bytes gets a bucket of its own. Returns, per bucket,
// the indices into `params`.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<Tensor>& params, int64_t cap_bytes);

// Every tensor on every rank becomes its value on `root` (in place, in order).
void broadcast_tensors(const std::vector<Tensor>& tensors, Communicator& comm, int root = 0);

// A 64-bit hash of a tensor's dtype, shape and bytes (for replica checks, not security).
uint64_t tensor_checksum(const Tensor& t);

// Collective: throws lathe::Error naming the first tensor whose checksum differs between
// ranks, and `what` (e.g. "parameters after resume"), e.g.
//   "lathe: rank 1: parameters after resume differ between ranks, first at
//    layers.0.attn.q_proj.weight (...)"
// One all-reduce of 4 integers per tensor.
void check_replicas_identical(const std::vector<std::pair<std::string, Tensor>>& named, Communicator& comm,
                              const std::string& what);

}  // namespace lathe::parallel
