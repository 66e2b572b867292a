#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <sstream>
#include <thread>

#include "parallel/single_process_communicator.h"

namespace lathe::parallel {

namespace {

// Below MPI_THREAD_MULTIPLE, every MPI call of the process goes through this mutex.
std::mutex g_mpi_mutex;
std::atomic<bool> g_serialize{false};

class MpiLock {
 public:
  MpiLock() : held_(g_serialize.load()) {
    if (held_) g_mpi_mutex.lock();
  }
  ~MpiLock() {
    if (held_) g_mpi_mutex.unlock();
  }
  MpiLock(const MpiLock&) = delete;
  MpiLock& operator=(const MpiLock&) = delete;

 private:
  bool held_;
};

bool mpi_active() {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  return inited && !finalized;
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f64: return MPI_DOUBLE;
    case DType::f32: return MPI_FLOAT;
    case DType::bf16: return MPI_UINT16_T;  // moved as bits; reductions stage to f32
    case DType::f16: return MPI_UINT16_T;
    case DType::i64: return MPI_INT64_T;
    case DType::i32: return MPI_INT32_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::i8: return MPI_INT8_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::avg: return MPI_SUM;  // divided by size on completion
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

int checked_count(const std::string& what, int64_t n) {
  LATHE_CHECK(n <= INT_MAX) << what << ": " << n
                            << " elements per message exceed MPI's int count limit (2^31 - 1); split the tensor";
  return static_cast<int>(n);
}

// The output buffer: t itself when MPI can write into it directly, else scratch space
// that is copied into t on completion.
Tensor out_buffer(const Tensor& t, DType dt) {
  if (t.dtype() == dt && t.is_contiguous()) return t;
  return Tensor::empty(t.shape(), dt, Device::cpu());
}

// The input buffer of a collective with a separate output: a fresh copy when the two
// share storage (MPI forbids overlapping buffers), else t staged to dt.
Tensor in_buffer(const Tensor& in, const Tensor& out, DType dt) {
  if (detail::shares_storage(in, out)) {
    Tensor c = Tensor::empty(in.shape(), dt, Device::cpu());
    c.copy_(in);
    return c;
  }
  return detail::staged(in, dt);
}

std::exception_ptr make_error(const std::string& msg) {
  try {
    LATHE_FAIL() << msg;
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

std::string describe_tensor(const Tensor& t) { return std::string(dtype_name(t.dtype())) + " " + t.shape_str(); }

enum OpCode { kAllReduce = 1, kReduceScatter, kAllGather, kAllToAll, kBroadcast, kBarrier, kSplit };

}  // namespace

// ---- MpiWork --------------------------------------------------------------------------

class MpiWork final : public Work {
 public:
  // A collective's Work is made right after next_collective numbered it (one issuing thread
  // per communicator), so coll_seq_ is its number.
  MpiWork(MpiCommunicator* comm, std::string what, bool p2p, bool is_recv = false)
      : comm_(comm), what_(std::move(what)), p2p_(p2p), is_recv_(is_recv), seq_(p2p ? 0 : comm->coll_seq_.load()) {}

  ~MpiWork() override {
    if (done_ || !mpi_active()) return;
    // The buffers must outlive the transfer, so a dropped Work still waits for it.
    try {
      wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lathe: rank %d: %s dropped before completion failed: %s\n", comm_->rank(),
                   what_.c_str(), e.what());
    }
  }

  bool test() override {
    std::lock_guard<std::mutex> g(mu_);  // one MPI_Test per request at a time
    if (done_) {
      if (error_) std::rethrow_exception(error_);
      return true;
    }
    if (!transferred_) {
      int flag = 0;
      int rc;
      {
        MpiLock lock;
        rc = MPI_Test(&req, &flag, &status_);
      }
      if (rc != MPI_SUCCESS) return fail(make_error(comm_->error_message(rc, what_)));
      if (!flag) return false;
      transferred_ = true;
    }
    // Injected latency (LATHE_COMM_LATENCY_US): the op counts as complete only once it has
    // been in flight that long, as on a slower link; compute issued meanwhile overlaps it.
    if (std::chrono::steady_clock::now() < ready_at) return false;
    const MPI_Status st = status_;
    done_ = true;
    try {
      if (finish) finish(st);
    } catch (...) {
      error_ = std::current_exception();
    }
    release();
    if (error_) std::rethrow_exception(error_);
    return true;
  }

  void wait() override {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const double limit = comm_->timeout();
    double served = 0;
    for (;;) {
      if (test()) return;
      const double waited = std::chrono::duration<double>(clock::now() - start).count();
      if (waited > limit) comm_->on_timeout(*this);
      // A rank that waits is alive: it answers peers' "who is here?" probes (sent when their
      // own wait times out) every few milliseconds; a hung or dead rank stays silent.
      if (waited - served > 0.01) {
        MpiCommunicator::serve_all_probes();
        served = waited;
      }
      // Spin briefly (a collective among live peers usually finishes within
      // milliseconds), then poll gently so a long wait does not eat a shared core.
      if (waited < 0.005) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }

  std::string describe() const override { return what_; }
  // The collective's number on its communicator (0 for send/recv).
  int64_t seq() const { return seq_; }

  // After a timeout in throw mode: cancel a receive (reliable in MPI), otherwise hand
  // the request and its buffers to the communicator, which never reuses them.
  std::exception_ptr abandon(const std::string& msg) {
    std::lock_guard<std::mutex> own(mu_);
    if (done_) return error_ ? error_ : make_error(msg);  // another thread got there first
    if (is_recv_) {
      MpiLock lock;
      MPI_Cancel(&req);
      MPI_Wait(&req, MPI_STATUS_IGNORE);
    } else {
      std::lock_guard<std::mutex> g(comm_->mu_);
      comm_->abandoned_.emplace_back(req, std::move(keep));
      if (!p2p_ && comm_->broken_.empty()) comm_->broken_ = what_;
    }
    auto err = make_error(msg);
    set_failed(err);
    return err;
  }

  MPI_Request req = MPI_REQUEST_NULL;
  // Not complete before this time (injected latency; the epoch = no delay).
  std::chrono::steady_clock::time_point ready_at{};
  std::function<void(const MPI_Status&)> finish;  // runs once, on completion
  std::vector<Tensor> keep;                       // buffers MPI reads or writes

 private:
  void set_failed(std::exception_ptr e) {
    done_ = true;
    error_ = std::move(e);
    release();
  }
  [[noreturn]] bool fail(std::exception_ptr e) {
    set_failed(std::move(e));
    std::rethrow_exception(error_);
  }
  void release() {
    finish = nullptr;
    keep.clear();
  }

  std::mutex mu_;
  MpiCommunicator* comm_;
  std::string what_;
  bool p2p_;
  bool is_recv_;
  int64_t seq_;
  bool done_ = false;
  bool transferred_ = false;  // MPI reported the transfer complete
  MPI_Status status_{};
  std::exception_ptr error_;
};

// ---- MpiCommunicator --------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool dup) {
  LATHE_CHECK(mpi_active()) << "MpiCommunicator: MPI is not initialized (call lathe::parallel::init_mpi first)";
  LATHE_CHECK(comm != MPI_COMM_NULL) << "MpiCommunicator: got MPI_COMM_NULL";
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_MULTIPLE) g_serialize.store(true);
  {
    MpiLock lock;
    if (dup) {
      int rc = MPI_Comm_dup(comm, &comm_);
      LATHE_CHECK(rc == MPI_SUCCESS) << "MpiCommunicator: MPI_Comm_dup failed (code " << rc << ")";
    } else {
      comm_ = comm;
    }
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    int* ub = nullptr;
    int found = 0;
    MPI_Comm_get_attr(comm_, MPI_TAG_UB, &ub, &found);
    if (found && ub) tag_ub_ = *ub;
    // The side channel of the timeout probes: its own context, so a probe never matches a
    // user's send/recv (collective over comm_, like the dup above).
    int rc = MPI_Comm_dup(comm_, &probe_comm_);
    LATHE_CHECK(rc == MPI_SUCCESS) << "MpiCommunicator: MPI_Comm_dup of the probe channel failed (code " << rc << ")";
    MPI_Comm_set_errhandler(probe_comm_, MPI_ERRORS_RETURN);
  }
  // Registered outside the MPI lock: serve_all_probes takes the registry first, then MPI.
  std::lock_guard<std::mutex> g(probe_registry_mu());
  probe_registry().push_back(this);
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> g(probe_registry_mu());
    auto& reg = probe_registry();
    reg.erase(std::remove(reg.begin(), reg.end(), this), reg.end());
  }
  if (!mpi_active()) return;  // after MPI_Finalize nothing may be called
  std::lock_guard<std::mutex> own(probe_mu_);
  bool replies_done = true;
  for (auto& [req, buf] : probe_replies_) {
    int flag = 0;
    MpiLock lock;
    if (MPI_Test(&req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || !flag) replies_done = false;
  }
  // An abandoned request (or a probe reply still in flight) pins the communicators, and the
  // replies' buffers, for the rest of the process.
  if (!replies_done) {
    static auto* pinned = new std::vector<std::pair<MPI_Request, Tensor>>();
    pinned->insert(pinned->end(), probe_replies_.begin(), probe_replies_.end());
  }
  if (!abandoned_.empty() || !replies_done) return;
  MpiLock lock;
  if (probe_comm_ != MPI_COMM_NULL) MPI_Comm_free(&probe_comm_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

// ---- timeout probes -----------------------------------------------------------------------
//
// When rank R's wait on collective #k expires, R sends every peer a query (#k) on the probe
// channel and listens for a grace period. A rank that is waiting (in any MpiWork::wait, on
// any communicator: serve_all_probes) or probing itself replies with the last collective
// number it entered on this communicator; a rank that hangs outside MPI, or died, never
// does. R names the silent ranks and those that answered but have not reached #k.

namespace {
constexpr int kProbeQueryTag = 1;
constexpr int kProbeReplyTag = 2;
}  // namespace

std::mutex& MpiCommunicator::probe_registry_mu() {
  static std::mutex mu;
  return mu;
}

std::vector<MpiCommunicator*>& MpiCommunicator::probe_registry() {
  static std::vector<MpiCommunicator*> reg;
  return reg;
}

void MpiCommunicator::serve_all_probes() {
  std::unique_lock<std::mutex> g(probe_registry_mu(), std::try_to_lock);
  if (!g.owns_lock()) return;  // another thread is serving (or a communicator is coming or going)
  for (MpiCommunicator* c : probe_registry()) {
    std::unique_lock<std::mutex> own(c->probe_mu_, std::try_to_lock);
    if (own.owns_lock()) c->serve_probes_locked();
  }
}

void MpiCommunicator::serve_probes_locked() {
  if (probe_comm_ == MPI_COMM_NULL) return;
  // Replies sent earlier: drop the ones that completed.
  for (size_t i = 0; i < probe_replies_.size();) {
    int flag = 0;
    int rc;
    {
      MpiLock lock;
      rc = MPI_Test(&probe_replies_[i].first, &flag, MPI_STATUS_IGNORE);
    }
    if (rc == MPI_SUCCESS && flag) {
      probe_replies_.erase(probe_replies_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
  for (int answered = 0; answered < size_; ++answered) {
    int flag = 0;
    MPI_Status st;
    int64_t query = 0;
    {
      MpiLock lock;
      if (MPI_Iprobe(MPI_ANY_SOURCE, kProbeQueryTag, probe_comm_, &flag, &st) != MPI_SUCCESS || !flag) return;
      // Only this function (under probe_mu_) receives queries, so the probed one is next.
      if (MPI_Recv(&query, 1, MPI_INT64_T, st.MPI_SOURCE, kProbeQueryTag, probe_comm_, MPI_STATUS_IGNORE) !=
          MPI_SUCCESS)
        return;
    }
    Tensor reply = Tensor::from_vector<int64_t>({query, coll_seq_.load()}, {2});
    MPI_Request req = MPI_REQUEST_NULL;
    int rc;
    {
      MpiLock lock;
      rc = MPI_Isend(reply.raw_data(), 2, MPI_INT64_T, st.MPI_SOURCE, kProbeReplyTag, probe_comm_, &req);
    }
    if (rc == MPI_SUCCESS) probe_replies_.emplace_back(req, reply);
  }
}

std::string MpiCommunicator::probe_peers(int64_t seq) {
  if (size_ <= 1 || probe_comm_ == MPI_COMM_NULL) return "";
  // Two threads probing one communicator would take each other's replies.
  static std::mutex one_probe_at_a_time;
  std::lock_guard<std::mutex> one(one_probe_at_a_time);
  // Live peers answer within milliseconds; the grace only bounds the wait for silent ones.
  const double grace = std::min(2.0, std::max(0.2, 0.1 * timeout()));
  struct Peer {
    int rank;
    Tensor query, reply;
    MPI_Request send = MPI_REQUEST_NULL, recv = MPI_REQUEST_NULL;
    int64_t last = -1;  // the peer's last entered collective; -1: no answer
  };
  std::vector<Peer> peers;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    Peer p;
    p.rank = r;
    p.query = Tensor::from_vector<int64_t>({seq}, {1});
    p.reply = Tensor::zeros({2}, DType::i64);
    MpiLock lock;
    if (MPI_Irecv(p.reply.raw_data(), 2, MPI_INT64_T, r, kProbeReplyTag, probe_comm_, &p.recv) != MPI_SUCCESS)
      p.recv = MPI_REQUEST_NULL;
    if (MPI_Isend(p.query.raw_data(), 1, MPI_INT64_T, r, kProbeQueryTag, probe_comm_, &p.send) != MPI_SUCCESS)
      p.send = MPI_REQUEST_NULL;
    peers.push_back(std::move(p));
  }
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::duration<double>(grace);
  for (;;) {
    serve_all_probes();  // peers probing at the same time need this rank's answer too
    {
      std::lock_guard<std::mutex> own(probe_mu_);
      serve_probes_locked();  // in case serve_all_probes found the registry busy
    }
    bool pending = false;
    for (Peer& p : peers) {
      if (p.recv == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MpiLock lock;
      if (MPI_Test(&p.recv, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        p.recv = MPI_REQUEST_NULL;
        continue;
      }
      if (!flag) {
        pending = true;
        continue;
      }
      const int64_t* b = p.reply.data<int64_t>();
      if (b[0] == seq) {
        p.last = b[1];
      } else if (MPI_Irecv(p.reply.raw_data(), 2, MPI_INT64_T, p.rank, kProbeReplyTag, probe_comm_, &p.recv) ==
                 MPI_SUCCESS) {
        pending = true;  // the answer to an earlier probe: listen again
      } else {
        p.recv = MPI_REQUEST_NULL;
      }
    }
    if (!pending || clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Cancel what never came (reliable for receives); a query still in flight is kept, with
  // its buffer, like an abandoned collective.
  for (Peer& p : peers) {
    MpiLock lock;
    if (p.recv != MPI_REQUEST_NULL) {
      MPI_Cancel(&p.recv);
      MPI_Wait(&p.recv, MPI_STATUS_IGNORE);
    }
    int flag = 0;
    if (p.send != MPI_REQUEST_NULL && MPI_Test(&p.send, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && !flag) {
      std::lock_guard<std::mutex> g(mu_);
      abandoned_.emplace_back(p.send, std::vector<Tensor>{p.query});
    }
  }
  std::vector<int> silent;
  std::vector<std::pair<int, int64_t>> behind;
  for (const Peer& p : peers) {
    if (p.last < 0) {
      silent.push_back(p.rank);
    } else if (p.last < seq) {
      behind.emplace_back(p.rank, p.last);
    }
  }
  std::ostringstream os;
  if (!silent.empty()) {
    os << "; rank(s) not answering: ";
    for (size_t i = 0; i < silent.size(); ++i) os << (i ? ", " : "") << silent[i];
  }
  if (!behind.empty()) {
    os << "; rank(s) answering but not yet at collective #" << seq << ": ";
    for (size_t i = 0; i < behind.size(); ++i)
      os << (i ? ", " : "") << behind[i].first << " (last entered #" << behind[i].second << ")";
  }
  if (silent.empty() && behind.empty())
    os << "; every rank answered and has entered collective #" << seq
       << " (do all ranks issue the same collectives in the same order? LATHE_COMM_DEBUG=1 checks)";
  return os.str();
}

std::string MpiCommunicator::next_collective(const char* op) {
  std::string what = std::string(op) + " #" + std::to_string(++coll_seq_);
  std::lock_guard<std::mutex> g(mu_);
  if (!broken_.empty())
    LATHE_FAIL() << "lathe: rank " << rank_ << ": " << what << ": this communicator is unusable since " << broken_
                 << " timed out";
  return what;
}

std::string MpiCommunicator::next_p2p(const char* op) {
  std::string what = std::string(op) + " #" + std::to_string(++p2p_seq_);
  std::lock_guard<std::mutex> g(mu_);
  if (!broken_.empty())
    LATHE_FAIL() << "lathe: rank " << rank_ << ": " << what << ": this communicator is unusable since " << broken_
                 << " timed out";
  return what;
}

std::string MpiCommunicator::error_message(int rc, const std::string& what) const {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = std::snprintf(text, sizeof text, "code %d", rc);
  return "lathe: rank " + std::to_string(rank_) + ": " + what + ": MPI error: " + std::string(text, len);
}

void MpiCommunicator::check_rc(int rc, const std::string& what) const {
  if (rc != MPI_SUCCESS) LATHE_FAIL() << error_message(rc, what);
}

void MpiCommunicator::on_timeout(MpiWork& w) {
  // Collectives: which peers never arrived (send/recv already name their peer).
  const std::string msg = detail::timeout_message(rank_, w.describe(), timeout()) + (w.seq() > 0 ? probe_peers(w.seq()) : "");
  if (timeout_action() == TimeoutAction::abort) {
    std::fprintf(stderr, "%s\n", msg.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, kCommTimeoutExitCode);
    std::_Exit(kCommTimeoutExitCode);  // MPI_Abort should not return; make sure
  }
  std::rethrow_exception(w.abandon(msg));
}

void MpiCommunicator::agree(const std::string& what, int op_code, const Tensor& t, int root, int reduce_op) {
  // One all-reduce(max) of (v, -v) gives every rank the max and the min of each field.
  const int64_t v[5] = {op_code, static_cast<int64_t>(t.dtype()), t.numel(), root, reduce_op};
  static const char* names[5] = {"operation", "dtype", "numel", "root", "reduce op"};
  Tensor buf = Tensor::empty({10}, DType::i64, Device::cpu());
  int64_t* b = buf.data<int64_t>();
  for (int i = 0; i < 5; ++i) {
    b[i] = v[i];
    b[5 + i] = -v[i];
  }
  MpiWork w(this, what + " (debug agreement check)", false);
  w.keep = {buf};
  int rc;
  {
    MpiLock lock;
    rc = MPI_Iallreduce(MPI_IN_PLACE, b, 10, MPI_INT64_T, MPI_MAX, comm_, &w.req);
  }
  check_rc(rc, what + " (debug agreement check)");
  w.wait();
  for (int i = 0; i < 5; ++i) {
    const int64_t hi = b[i], lo = -b[5 + i];
    LATHE_CHECK(hi == lo) << "lathe: rank " << rank_ << ": " << what << ": ranks disagree on the " << names[i]
                          << ": values range over [" << lo << ", " << hi << "], this rank has " << v[i]
                          << " (tensor " << describe_tensor(t) << ")";
  }
}

WorkPtr MpiCommunicator::all_reduce_async(const Tensor& t, ReduceOp op) {
  detail::check_cpu_tensor("all_reduce", "t", t);
  detail::check_reduce("all_reduce", t, op);
  const std::string what = next_collective("all_reduce");
  if (debug_checks()) agree(what, kAllReduce, t, -1, static_cast<int>(op));
  const DType rd = detail::reduce_dtype(t.dtype());
  Tensor buf = detail::staged(t, rd);
  const int count = checked_count(what, buf.numel());
  auto w = std::make_shared<MpiWork>(this, what, false);
  w->keep = {buf};
  static const int64_t latency_us = [] {
    const char* v = std::getenv("LATHE_COMM_LATENCY_US");
    return v ? std::max<int64_t>(0, std::atoll(v)) : 0;
  }();
  if (latency_us > 0) w->ready_at = std::chrono::steady_clock::now() + std::chrono::microseconds(latency_us);
  int rc;
  {
    MpiLock lock;
    rc = MPI_Iallreduce(MPI_IN_PLACE, buf.raw_data(), count, mpi_type(rd), mpi_op(op), comm_, &w->req);
  }
  check_rc(rc, what);
  const int n = size_;
  w->finish = [buf, t, op, n](const MPI_Status&) {
    if (op == ReduceOp::avg) detail::divide_inplace(buf, n);
    if (!buf.is_same(t)) t.copy_(buf);
  };
  return w;
}

WorkPtr MpiCommunicator::reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op) {
  detail::check_cpu_tensor("reduce_scatter", "in", in);
  detail::check_cpu_tensor("reduce_scatter", "out", out);
  detail::check_reduce("reduce_scatter", in, op);
  detail::check_reduce_scatter(in, out, size_);
  const std::string what = next_collective("reduce_scatter");
  if (debug_checks()) agree(what, kReduceScatter, in, -1, static_cast<int>(op));
  const DType rd = detail::reduce_dtype(in.dtype());
  Tensor src = in_buffer(in, out, rd);
  Tensor dst = out_buffer(out, rd);
  const int count = checked_count(what, dst.numel());
  auto w = std::make_shared<MpiWork>(this, what, false);
  w->keep = {src, dst};
  int rc;
  {
    MpiLock lock;
    rc = MPI_Ireduce_scatter_block(src.raw_data(), dst.raw_data(), count, mpi_type(rd), mpi_op(op), comm_, &w->req);
  }
  check_rc(rc, what);
  const int n = size_;
  w->finish = [dst, out, op, n](const MPI_Status&) {
    if (op == ReduceOp::avg) detail::divide_inplace(dst, n);
    if (!dst.is_same(out)) out.copy_(dst);
  };
  return w;
}

WorkPtr MpiCommunicator::all_gather_async(const Tensor& in, const Tensor& out) {
  detail::check_cpu_tensor("all_gather", "in", in);
  detail::check_cpu_tensor("all_gather", "out", out);
  detail::check_all_gather(in, out, size_);
  const std::string what = next_collective("all_gather");
  if (debug_checks()) agree(what, kAllGather, in, -1, 0);
  Tensor src = in_buffer(in, out, in.dtype());
  Tensor dst = out_buffer(out, out.dtype());
  const int count = checked_count(what, src.numel());
  auto w = std::make_shared<MpiWork>(this, what, false);
  w->keep = {src, dst};
  int rc;
  {
    MpiLock lock;
    const MPI_Datatype ty = mpi_type(in.dtype());
    rc = MPI_Iallgather(src.raw_data(), count, ty, dst.raw_data(), count, ty, comm_, &w->req);
  }
  check_rc(rc, what);
  w->finish = [dst, out](const MPI_Status&) {
    if (!dst.is_same(out)) out.copy_(dst);
  };
  return w;
}

WorkPtr MpiCommunicator::all_to_all_async(const Tensor& in, const Tensor& out) {
  detail::check_cpu_tensor("all_to_all", "in", in);
  detail::check_cpu_tensor("all_to_all", "out", out);
  detail::check_all_to_all(in, out, size_);
  const std::string what = next_collective("all_to_all");
  if (debug_checks()) agree(what, kAllToAll, in, -1, 0);
  Tensor src = in_buffer(in, out, in.dtype());
  Tensor dst = out_buffer(out, out.dtype());
  const int count = checked_count(what, src.numel() / size_);
  auto w = std::make_shared<MpiWork>(this, what, false);
  w->keep = {src, dst};
  int rc;
  {
    MpiLock lock;
    const MPI_Datatype ty = mpi_type(in.dtype());
    rc = MPI_Ialltoall(src.raw_data(), count, ty, dst.raw_data(), count, ty, comm_, &w->req);
  }
  check_rc(rc, what);
  w->finish = [dst, out](const MPI_Status&) {
    if (!dst.is_same(out)) out.copy_(dst);
  };
  return w;
}

WorkPtr MpiCommunicator::broadcast_async(const Tensor& t, int root) {
  detail::check_cpu_tensor("broadcast", "t", t);
  detail::check_root("broadcast", root, size_);
  const std::string what = next_collective("broadcast") + " from rank " + std::to_string(root);
  if (debug_checks()) agree(what, kBroadcast, t, root, 0);
  Tensor buf = detail::staged(t, t.dtype());
  const int count = checked_count(what, buf.numel());
  auto w = std::make_shared<MpiWork>(this, what, false);
  w->keep = {buf};
  int rc;
  {
    MpiLock lock;
    rc = MPI_Ibcast(buf.raw_data(), count, mpi_type(t.dtype()), root, comm_, &w->req);
  }
  check_rc(rc, what);
  w->finish = [buf, t](const MPI_Status&) {
    if (!buf.is_same(t)) t.copy_(buf);
  };
  return w;
}

WorkPtr MpiCommunicator::send_async(const Tensor& t, int dst, int tag) {
  detail::check_cpu_tensor("send", "t", t);
  detail::check_peer("send", dst, size_, tag, tag_ub_);
  const std::string what = next_p2p("send") + " of " + describe_tensor(t) + " to rank " + std::to_string(dst) +
                           " (tag " + std::to_string(tag) + ")";
  Tensor buf = detail::staged(t, t.dtype());
  const int count = checked_count(what, buf.numel());
  auto w = std::make_shared<MpiWork>(this, what, true);
  w->keep = {buf};
  int rc;
  {
    MpiLock lock;
    rc = MPI_Isend(buf.raw_data(), count, mpi_type(t.dtype()), dst, tag, comm_, &w->req);
  }
  check_rc(rc, what);
  return w;
}

WorkPtr MpiCommunicator::recv_async(const Tensor& t, int src, int tag) {
  detail::check_cpu_tensor("recv", "t", t);
  detail::check_peer("recv", src, size_, tag, tag_ub_);
  const std::string what = next_p2p("recv") + " into " + describe_tensor(t) + " from rank " + std::to_string(src) +
                           " (tag " + std::to_string(tag) + ")";
  Tensor buf = out_buffer(t, t.dtype());
  const int count = checked_count(what, buf.numel());
  auto w = std::make_shared<MpiWork>(this, what, true, /*is_recv=*/true);
  w->keep = {buf};
  const MPI_Datatype ty = mpi_type(t.dtype());
  int rc;
  {
    MpiLock lock;
    rc = MPI_Irecv(buf.raw_data(), count, ty, src, tag, comm_, &w->req);
  }
  check_rc(rc, what);
  const int my_rank = rank_;
  w->finish = [buf, t, ty, count, what, my_rank](const MPI_Status& st) {
    int got = 0;
    MPI_Get_count(&st, ty, &got);
    LATHE_CHECK(got == count) << "lathe: rank " << my_rank << ": " << what << ": the message has " << got
                              << " elements but the buffer holds " << count;
    if (!buf.is_same(t)) t.copy_(buf);
  };
  return w;
}

WorkPtr MpiCommunicator::barrier_async() {
  const std::string what = next_collective("barrier");
  auto w = std::make_shared<MpiWork>(this, what, false);
  int rc;
  {
    MpiLock lock;
    rc = MPI_Ibarrier(comm_, &w->req);
  }
  check_rc(rc, what);
  return w;
}

std::shared_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  // MPI_Comm_split blocks with no deadline; a barrier with one first means every rank
  // has arrived, so a missing rank shows up as a timeout rather than a hang.
  barrier();
  const std::string what = next_collective("split");
  MPI_Comm sub = MPI_COMM_NULL;
  int rc;
  {
    MpiLock lock;
    rc = MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub);
  }
  check_rc(rc, what);
  if (sub == MPI_COMM_NULL) return nullptr;
  auto c = std::make_shared<MpiCommunicator>(sub, /*dup=*/false);
  c->set_timeout(timeout());
  c->set_timeout_action(timeout_action());
  c->set_debug_checks(debug_checks());
  return c;
}

// ---- process-wide world ------------------------------------------------------------------

namespace {
std::mutex g_world_mu;
std::shared_ptr<Communicator> g_world;
bool g_finalize_registered = false;

void finalize_at_exit() { finalize_mpi(); }

std::shared_ptr<Communicator> init_mpi_locked(int* argc, char*** argv) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  LATHE_CHECK(!finalized) << "init_mpi: MPI was already finalized in this process and cannot start again";
  if (!inited) {
    int provided = MPI_THREAD_SINGLE;
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    LATHE_CHECK(rc == MPI_SUCCESS) << "init_mpi: MPI_Init_thread failed (code " << rc << ")";
    if (!g_finalize_registered) {
      std::atexit(finalize_at_exit);  // MPI jobs whose ranks skip MPI_Finalize count as failed
      g_finalize_registered = true;
    }
  }
  if (!g_world || g_world->backend() != "mpi") g_world = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD);
  return g_world;
}
}  // namespace

std::shared_ptr<Communicator> init_mpi(int* argc, char*** argv) {
  std::lock_guard<std::mutex> g(g_world_mu);
  return init_mpi_locked(argc, argv);
}

namespace {
std::atomic<double> g_finalize_bound_s{0};
std::atomic<int> g_exit_status{0};
}  // namespace

void bound_finalize(double seconds) { g_finalize_bound_s = seconds; }
void note_exit_status(int status) { g_exit_status = status; }

void finalize_mpi() {
  std::lock_guard<std::mutex> g(g_world_mu);
  g_world.reset();
  if (!mpi_active()) return;
  const double bound = g_finalize_bound_s.load();
  if (bound > 0) {
    std::thread([bound] {
      std::this_thread::sleep_for(std::chrono::duration<double>(bound));
      const int status = g_exit_status.load();
      std::fprintf(stderr,
                   "lathe: MPI_Finalize did not return within %g s (a rank of this job died and the "
                   "MPI runtime waits for it); exiting with status %d\n",
                   bound, status);
      std::fflush(nullptr);
      std::_Exit(status);
    }).detach();
  }
  MPI_Finalize();
}

int mpi_thread_level() {
  if (!mpi_active()) return -1;
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  return level;
}

std::shared_ptr<Communicator> world() {
  std::lock_guard<std::mutex> g(g_world_mu);
  if (g_world) return g_world;
  if (mpi_active() || launched_by_mpi()) return init_mpi_locked(nullptr, nullptr);
  g_world = std::make_shared<SingleProcessCommunicator>();
  return g_world;
}

}  // namespace lathe::parallel
