#include "parallel/single_process_communicator.h"

#include <chrono>
#include <climits>
#include <thread>

namespace lathe::parallel {

namespace {

// An operation that finished when it was issued.
class DoneWork : public Work {
 public:
  explicit DoneWork(std::string what) : what_(std::move(what)) {}
  void wait() override {}
  bool test() override { return true; }
  std::string describe() const override { return what_; }

 private:
  std::string what_;
};

// A recv waiting for a send to self through the mailbox.
class MailboxRecvWork : public Work {
 public:
  MailboxRecvWork(SingleProcessCommunicator* comm, Tensor t, int tag, std::string what)
      : comm_(comm), t_(std::move(t)), tag_(tag), what_(std::move(what)) {}
  bool test() override {
    if (!done_) done_ = comm_->try_take(t_, tag_, what_);
    return done_;
  }
  void wait() override {
    const auto start = std::chrono::steady_clock::now();
    while (!test()) {
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      // One process has nobody else to wait for: no job to abort, so report by throwing.
      if (waited > comm_->timeout()) LATHE_FAIL() << detail::timeout_message(0, what_, comm_->timeout());
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  std::string describe() const override { return what_; }

 private:
  SingleProcessCommunicator* comm_;
  Tensor t_;
  int tag_;
  std::string what_;
  bool done_ = false;
};

// Size-1 result of the chunked collectives: out holds in's elements in row-major order.
void copy_flat(const Tensor& in, const Tensor& out) {
  if (in.is_same(out)) return;
  Tensor src = in.contiguous().clone();  // clone: in and out may overlap
  out.copy_(src.view(out.shape()));
}

}  // namespace

std::string SingleProcessCommunicator::next_name(const char* op) {
  std::lock_guard<std::mutex> lock(mu_);
  return std::string(op) + " #" + std::to_string(++seq_);
}

WorkPtr SingleProcessCommunicator::all_reduce_async(const Tensor& t, ReduceOp op) {
  detail::check_cpu_tensor("all_reduce", "t", t);
  detail::check_reduce("all_reduce", t, op);
  return std::make_shared<DoneWork>(next_name("all_reduce"));
}

WorkPtr SingleProcessCommunicator::reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op) {
  detail::check_cpu_tensor("reduce_scatter", "in", in);
  detail::check_cpu_tensor("reduce_scatter", "out", out);
  detail::check_reduce("reduce_scatter", in, op);
  detail::check_reduce_scatter(in, out, 1);
  copy_flat(in, out);
  return std::make_shared<DoneWork>(next_name("reduce_scatter"));
}

WorkPtr SingleProcessCommunicator::all_gather_async(const Tensor& in, const Tensor& out) {
  detail::check_cpu_tensor("all_gather", "in", in);
  detail::check_cpu_tensor("all_gather", "out", out);
  detail::check_all_gather(in, out, 1);
  copy_flat(in, out);
  return std::make_shared<DoneWork>(next_name("all_gather"));
}

WorkPtr SingleProcessCommunicator::all_to_all_async(const Tensor& in, const Tensor& out) {
  detail::check_cpu_tensor("all_to_all", "in", in);
  detail::check_cpu_tensor("all_to_all", "out", out);
  detail::check_all_to_all(in, out, 1);
  copy_flat(in, out);
  return std::make_shared<DoneWork>(next_name("all_to_all"));
}

WorkPtr SingleProcessCommunicator::broadcast_async(const Tensor& t, int root) {
  detail::check_cpu_tensor("broadcast", "t", t);
  detail::check_root("broadcast", root, 1);
  return std::make_shared<DoneWork>(next_name("broadcast"));
}

WorkPtr SingleProcessCommunicator::send_async(const Tensor& t, int dst, int tag) {
  detail::check_cpu_tensor("send", "t", t);
  detail::check_peer("send", dst, 1, tag, INT_MAX);
  std::string what = next_name("send") + " to rank 0 (tag " + std::to_string(tag) + ")";
  Tensor copy = t.contiguous().clone();  // the sender may reuse t at once
  {
    std::lock_guard<std::mutex> lock(mu_);
    mailbox_[tag].push_back(copy);
  }
  return std::make_shared<DoneWork>(what);
}

WorkPtr SingleProcessCommunicator::recv_async(const Tensor& t, int src, int tag) {
  detail::check_cpu_tensor("recv", "t", t);
  detail::check_peer("recv", src, 1, tag, INT_MAX);
  std::string what = next_name("recv") + " from rank 0 (tag " + std::to_string(tag) + ")";
  auto w = std::make_shared<MailboxRecvWork>(this, t, tag, what);
  w->test();
  return w;
}

bool SingleProcessCommunicator::try_take(const Tensor& t, int tag, const std::string& what) {
  Tensor msg;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = mailbox_.find(tag);
    if (it == mailbox_.end() || it->second.empty()) return false;
    msg = it->second.front();
    it->second.pop_front();
  }
  LATHE_CHECK(msg.dtype() == t.dtype() && msg.numel() == t.numel())
      << what << ": the message is " << dtype_name(msg.dtype()) << " " << msg.shape_str() << " ("
      << msg.numel() << " elements) but the receive buffer is " << dtype_name(t.dtype()) << " " << t.shape_str()
      << " (" << t.numel() << " elements)";
  t.copy_(msg.view(t.shape()));
  return true;
}

WorkPtr SingleProcessCommunicator::barrier_async() { return std::make_shared<DoneWork>(next_name("barrier")); }

std::shared_ptr<Communicator> SingleProcessCommunicator::split(int color, int /*key*/) {
  if (color < 0) return nullptr;
  auto c = std::make_shared<SingleProcessCommunicator>();
  c->set_timeout(timeout());
  c->set_timeout_action(timeout_action());
  c->set_debug_checks(debug_checks());
  return c;
}

}  // namespace lathe::parallel
