// MpiCommunicator: the Communicator over MPI, for host (CPU) tensors.
//
// Every operation is started non-blocking (MPI_Iallreduce, MPI_Isend, ...) and waited
// on by polling MPI_Test against a deadline, so a peer that died or never arrives ends
// the job with a message naming this rank and the op, instead of a silent hang. MPI
// errors come back as return codes (MPI_ERRORS_RETURN on the communicator) and are
// thrown as lathe::Error naming the rank and the op.
//
// Open MPI progresses a non-blocking operation only inside MPI calls: Work::test() (or
// any other op on any communicator) moves it along.
//
// Threads: MPI is initialized with MPI_THREAD_MULTIPLE when available; with a lower
// level every MPI call is serialized by a process-wide mutex. Issue the ops of one
// communicator from one thread (all ranks must issue them in the same order); Works
// may be waited on from any thread. A communicator must outlive its Works.
#pragma once

#include <mpi.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace lathe::parallel {

// Exit code of a job ended by a collective timeout (MPI_Abort's errorcode; mpirun passes
// it on, so `mpirun ... lathe train` exits 70 when a rank hung). Documented in README.md.
constexpr int kCommTimeoutExitCode = 70;

class MpiWork;

class MpiCommunicator : public Communicator {
 public:
  // Works on a duplicate of `comm` (MPI_Comm_dup, collective) so that lathe's messages
  // and error handler stay apart from the caller's; with dup = false it takes `comm`
  // over (and frees it on destruction).
  explicit MpiCommunicator(MPI_Comm comm, bool dup = true);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  MPI_Comm handle() const { return comm_; }

  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op = ReduceOp::sum) override;
  WorkPtr reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op = ReduceOp::sum) override;
  WorkPtr all_gather_async(const Tensor& in, const Tensor& out) override;
  WorkPtr all_to_all_async(const Tensor& in, const Tensor& out) override;
  WorkPtr broadcast_async(const Tensor& t, int root) override;
  WorkPtr send_async(const Tensor& t, int dst, int tag = 0) override;
  WorkPtr recv_async(const Tensor& t, int src, int tag = 0) override;
  WorkPtr barrier_async() override;
  std::shared_ptr<Communicator> split(int color, int key) override;

 private:
  friend class MpiWork;
  // Names the next collective ("all_reduce #7") and refuses to start one on a
  // communicator that abandoned a collective after a timeout.
  std::string next_collective(const char* op);
  std::string next_p2p(const char* op);
  // Debug check: all ranks agree on (op, dtype, numel, root, reduce op).
  void agree(const std::string& what, int op_code, const Tensor& t, int root, int reduce_op);
  // Throws lathe::Error "lathe: rank R: <what>: MPI error: ..." unless rc is MPI_SUCCESS.
  void check_rc(int rc, const std::string& what) const;
  std::string error_message(int rc, const std::string& what) const;
  // Called by a wait whose deadline passed: aborts the job or throws (timeout_action()).
  [[noreturn]] void on_timeout(MpiWork& w);
  // Timeout probes (see mpi_communicator.cpp): "; rank(s) not answering: 1" and the like,
  // after asking every peer on the probe channel which collective it last entered.
  std::string probe_peers(int64_t seq);
  // Answers the probe queries that arrived (probe_mu_ held).
  void serve_probes_locked();
  // Every live communicator's queries; called by waits (a waiting rank is alive).
  static void serve_all_probes();
  static std::mutex& probe_registry_mu();
  static std::vector<MpiCommunicator*>& probe_registry();

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int tag_ub_ = 32767;
  std::atomic<int64_t> coll_seq_{0};
  std::atomic<int64_t> p2p_seq_{0};
  std::mutex mu_;
  std::string broken_;  // the collective abandoned after a timeout, if any
  // Requests abandoned after a timeout, with the buffers they may still write to.
  std::vector<std::pair<MPI_Request, std::vector<Tensor>>> abandoned_;
  MPI_Comm probe_comm_ = MPI_COMM_NULL;  // side channel of the timeout probes
  std::mutex probe_mu_;                  // serializes answering (and probe_replies_)
  std::vector<std::pair<MPI_Request, Tensor>> probe_replies_;  // answers in flight
};

// Initializes MPI (MPI_Init_thread asking for MPI_THREAD_MULTIPLE) unless it already is,
// and returns the world communicator (also what world() returns afterwards). Collective.
// When lathe initialized MPI it also finalizes it at exit (or in finalize_mpi()).
std::shared_ptr<Communicator> init_mpi(int* argc, char*** argv);
// Drops lathe's world communicator and calls MPI_Finalize (collective; idempotent).
void finalize_mpi();
// The job lost a rank (a federation that went on without a dead client rank, say): Open MPI's
// MPI_Finalize (even under --enable-recovery) can then wait forever in its closing fence for
// the dead process. After this call, a finalize that has not returned within `seconds` ends
// the process with the status it was exiting with (note_exit_status), after saying why.
void bound_finalize(double seconds);
// The status this process exits with (the CLI's main records it before returning), used by
// bound_finalize's watchdog.
void note_exit_status(int status);
// The thread level MPI provided (MPI_THREAD_*), or -1 before MPI is initialized.
int mpi_thread_level();

}  // namespace lathe::parallel
