// Communicator: the one interface every parallel layout talks through.
//
// Collectives work on whole tensors; every one exists blocking and async (the async
// form returns a Work handle). Backends: MpiCommunicator (host tensors, over MPI) and
// SingleProcessCommunicator (size 1, no MPI); an NCCL backend for CUDA tensors can
// slot in behind the same interface.
//
// Rules shared by every backend:
// - All ranks must issue the same collectives in the same order, with tensors of the
//   same dtype and element count (checked across ranks only when debug checks are on:
//   set_debug_checks(true) or LATHE_COMM_DEBUG=1; local size rules are always checked
//   and throw lathe::Error naming the op and the shapes).
// - Tensors of any layout are accepted; non-contiguous tensors are staged through a
//   contiguous copy (written back on completion). bf16/f16 reductions run in f32.
// - Chunked collectives (reduce_scatter, all_gather, all_to_all) split the flattened
//   row-major tensor into `size()` equal blocks, which is a split along dim 0 when that
//   dim divides evenly.
// - An async op's tensors must stay untouched until its Work completes; the Work keeps
//   the storage alive, and dropping an unfinished Work waits for it.
// - Waits are bounded by timeout() seconds (from when wait() starts). On expiry the
//   job ends: the MPI backend prints
//     lathe: rank R: <op> #<seq> did not complete within T s (a peer rank may have died)
//   followed, for a collective, by what a short probe of the peers found (a waiting rank
//   answers it; a hung or dead one cannot):
//     ; rank(s) not answering: 1, 3
//     ; rank(s) answering but not yet at collective #<seq>: 2 (last entered #<n>)
//   and calls MPI_Abort with exit code 70 (kCommTimeoutExitCode: `mpirun` exits 70), or
//   throws, with TimeoutAction::throw_error.
//
// Measurement knob (MPI backend): LATHE_COMM_LATENCY_US=N makes every all_reduce complete no
// earlier than N microseconds after it was issued, modelling a slower interconnect. The delay
// runs concurrently with whatever the caller does until it waits (so overlap can hide it);
// a blocking all_reduce pays it in full.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace lathe::parallel {

enum class ReduceOp { sum, avg, max, min };
const char* reduce_op_name(ReduceOp op);  // "sum", "avg", ...

// What a wait does when the timeout expires.
enum class TimeoutAction {
  abort,        // print the message and end the whole job (default)
  throw_error,  // throw lathe::Error; the communicator is unusable afterwards if a
                // collective was abandoned (later ops throw)
};

// Handle of an operation in flight.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation completes (bounded by the communicator timeout);
  // rethrows the op's error, if any, on every call.
  virtual void wait() = 0;
  // Non-blocking: true once the operation has completed (its results are then in place).
  // Also drives progress of the operation, so calling it now and then helps overlap.
  virtual bool test() = 0;
  // "all_reduce #3" (the op and its sequence number on this communicator).
  virtual std::string describe() const = 0;
};
using WorkPtr = std::shared_ptr<Work>;

class Communicator {
 public:
  Communicator();
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "mpi", "single"

  // ---- async forms (each backend implements these) ---------------------------------
  // In place: t becomes the reduction of every rank's t. avg needs a floating dtype.
  virtual WorkPtr all_reduce_async(const Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  // out (numel n) = block rank() of the reduction of every rank's in (numel n * size()).
  virtual WorkPtr reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op = ReduceOp::sum) = 0;
  // out (numel n * size()) = concatenation over ranks of in (numel n), in rank order.
  virtual WorkPtr all_gather_async(const Tensor& in, const Tensor& out) = 0;
  // in and out have the same numel, divisible by size(); in's dim 0 divisible by size().
  // Block j of in goes to rank j; block j of out comes from rank j.
  virtual WorkPtr all_to_all_async(const Tensor& in, const Tensor& out) = 0;
  // t on every rank becomes t of `root`.
  virtual WorkPtr broadcast_async(const Tensor& t, int root) = 0;
  // Point to point: recv's t must have the numel (and dtype) of the matching send.
  virtual WorkPtr send_async(const Tensor& t, int dst, int tag = 0) = 0;
  virtual WorkPtr recv_async(const Tensor& t, int src, int tag = 0) = 0;
  virtual WorkPtr barrier_async() = 0;

  // ---- blocking forms (the async form, then wait) ------------------------------------
  void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::sum) { all_reduce_async(t, op)->wait(); }
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(in, out, op)->wait();
  }
  void all_gather(const Tensor& in, const Tensor& out) { all_gather_async(in, out)->wait(); }
  void all_to_all(const Tensor& in, const Tensor& out) { all_to_all_async(in, out)->wait(); }
  void broadcast(const Tensor& t, int root) { broadcast_async(t, root)->wait(); }
  void send(const Tensor& t, int dst, int tag = 0) { send_async(t, dst, tag)->wait(); }
  void recv(const Tensor& t, int src, int tag = 0) { recv_async(t, src, tag)->wait(); }
  void barrier() { barrier_async()->wait(); }

  // Sub-communicator of the ranks that pass the same color (>= 0), ordered by key, then
  // by rank. Collective over this communicator. A negative color takes part but gets
  // nullptr back.
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  // ---- settings ------------------------------------------------------------------------
  // Seconds a wait may take before the job is ended (default: LATHE_COMM_TIMEOUT or 600).
  void set_timeout(double seconds);
  double timeout() const { return timeout_s_.load(); }
  void set_timeout_action(TimeoutAction a) { timeout_action_.store(a); }
  TimeoutAction timeout_action() const { return timeout_action_.load(); }
  // Cross-rank agreement check (op, dtype, numel, root) before each collective: one
  // small extra all-reduce, so off by default (LATHE_COMM_DEBUG=1 turns it on).
  void set_debug_checks(bool on) { debug_checks_.store(on); }
  bool debug_checks() const { return debug_checks_.load(); }

 private:
  std::atomic<double> timeout_s_;
  std::atomic<TimeoutAction> timeout_action_{TimeoutAction::abort};
  std::atomic<bool> debug_checks_{false};
};

// The job's world communicator: the one made by init_mpi(); else, when MPI was
// initialized by the caller, a communicator over MPI_COMM_WORLD; else (no MPI at all)
// a SingleProcessCommunicator. Declared here so single-process code need not include MPI.
std::shared_ptr<Communicator> world();

// True when this process was started by an MPI launcher (mpirun/srun set these variables).
bool launched_by_mpi();

// Bookkeeping shared by the backends (not part of the public API).
namespace detail {
// Local argument checks; each throws lathe::Error naming `op` and the shapes.
void check_cpu_tensor(const char* op, const char* what, const Tensor& t);
void check_reduce(const char* op, const Tensor& t, ReduceOp rop);
void check_same_dtype(const char* op, const Tensor& in, const Tensor& out);
void check_reduce_scatter(const Tensor& in, const Tensor& out, int size);
void check_all_gather(const Tensor& in, const Tensor& out, int size);
void check_all_to_all(const Tensor& in, const Tensor& out, int size);
void check_root(const char* op, int root, int size);
void check_peer(const char* op, int peer, int size, int tag, int tag_max);
// "lathe: rank R: <what> did not complete within T s (a peer rank may have died)"
std::string timeout_message(int rank, const std::string& what, double seconds);
// Staging: the dtype an all_reduce / reduce_scatter computes in (f32 for bf16/f16).
DType reduce_dtype(DType t);
// t itself when it is contiguous with dtype dt, else a contiguous copy converted to dt.
Tensor staged(const Tensor& t, DType dt);
// Divides every element of a contiguous f32/f64 tensor by d (the avg of a sum).
void divide_inplace(const Tensor& t, double d);
// True when a and b share storage (an in-place gather/scatter needs a staged input).
bool shares_storage(const Tensor& a, const Tensor& b);
}  // namespace detail

}  // namespace lathe::parallel
