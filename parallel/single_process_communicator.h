// SingleProcessCommunicator: a world of one rank, with no MPI underneath.
//
// Collectives keep the communicator's contract (the same local checks as the MPI
// backend) and give the size-1 results: all_reduce leaves t as is, all_gather /
// reduce_scatter / all_to_all copy in to out, broadcast needs root 0. send/recv go
// through an in-process mailbox keyed by tag (send to self only); a recv that nothing
// ever matches throws the timeout message after timeout() seconds.
#pragma once

#include <deque>
#include <map>
#include <mutex>

#include "parallel/communicator.h"

namespace lathe::parallel {

class SingleProcessCommunicator : public Communicator {
 public:
  SingleProcessCommunicator() = default;

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }

  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op = ReduceOp::sum) override;
  WorkPtr reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op = ReduceOp::sum) override;
  WorkPtr all_gather_async(const Tensor& in, const Tensor& out) override;
  WorkPtr all_to_all_async(const Tensor& in, const Tensor& out) override;
  WorkPtr broadcast_async(const Tensor& t, int root) override;
  WorkPtr send_async(const Tensor& t, int dst, int tag = 0) override;
  WorkPtr recv_async(const Tensor& t, int src, int tag = 0) override;
  WorkPtr barrier_async() override;
  std::shared_ptr<Communicator> split(int color, int key) override;

  // Takes the oldest message with this tag into t; false when there is none yet.
  // (Used by the recv Work; throws when the message's numel or dtype differs from t.)
  bool try_take(const Tensor& t, int tag, const std::string& what);

 private:
  std::string next_name(const char* op);

  std::mutex mu_;
  std::map<int, std::deque<Tensor>> mailbox_;
  int64_t seq_ = 0;
};

}  // namespace lathe::parallel
