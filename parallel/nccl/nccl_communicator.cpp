#include "parallel/nccl/nccl_communicator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "core/error.h"
#include "kernels/device.h"

#ifdef LATHE_HAS_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

namespace lathe::kernels::cuda {
cudaStream_t stream(int device_index);  // kernels/cuda/runtime.cu: the compute stream
void set_device(int device_index);
}  // namespace lathe::kernels::cuda
#endif

namespace lathe::parallel {

namespace {
int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : dflt;
}
}  // namespace

Device local_cuda_device() {
  int local = -1;
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"}) {
    local = env_int(v, -1);
    if (local >= 0) break;
  }
  if (local < 0) local = 0;
  int local_size = -1;
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE"}) {
    local_size = env_int(v, -1);
    if (local_size > 0) break;
  }
  const int gpus = kernels::cuda_device_count();
  LATHE_CHECK(gpus > 0) << "train.device asks for CUDA, but this node has no visible CUDA device";
  LATHE_CHECK(local < gpus && (local_size <= 0 || local_size <= gpus))
      << "this node runs " << (local_size > 0 ? local_size : local + 1) << " ranks but has " << gpus
      << " GPU(s): one rank per GPU is required (start fewer ranks per node, e.g. mpirun -np " << gpus
      << ", or use train.device: cpu)";
  return Device::cuda(local);
}

#ifndef LATHE_HAS_NCCL

bool nccl_available() { return false; }
std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator>, Device) {
  LATHE_FAIL() << "NCCL communicator: lathe was built without the CUDA backend (configure with -DLATHE_CUDA=on)";
  return nullptr;
}

#else

bool nccl_available() { return true; }

namespace {

#define LATHE_NCCL_CHECK(expr, what)                                                                  \
  do {                                                                                                \
    ncclResult_t lathe_r_ = (expr);                                                                   \
    LATHE_CHECK(lathe_r_ == ncclSuccess) << what << ": NCCL error: " << ncclGetErrorString(lathe_r_); \
  } while (0)
#define LATHE_CUDART_CHECK(expr, what)                                                                \
  do {                                                                                                \
    cudaError_t lathe_e_ = (expr);                                                                    \
    LATHE_CHECK(lathe_e_ == cudaSuccess) << what << ": CUDA error: " << cudaGetErrorString(lathe_e_); \
  } while (0)

ncclDataType_t nccl_dtype(DType dt, const char* op) {
  switch (dt) {
    case DType::f64: return ncclFloat64;
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i64: return ncclInt64;
    case DType::i32: return ncclInt32;
    case DType::u8: return ncclUint8;
    case DType::i8: return ncclInt8;
  }
  LATHE_FAIL() << op << ": dtype not supported by NCCL";
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator;

// Work of one NCCL operation: an event on the NCCL stream plus what must stay alive.
class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator* comm, std::string what, std::vector<Tensor> keep, cudaEvent_t done,
           std::function<void()> on_done)
      : comm_(comm), what_(std::move(what)), keep_(std::move(keep)), done_(done), on_done_(std::move(on_done)) {}
  ~NcclWork() override {
    if (!finished_) {
      try {
        wait();
      } catch (...) {
      }
    }
    cudaEventDestroy(done_);
  }
  void wait() override;
  bool test() override;
  std::string describe() const override { return what_; }

 private:
  void finish();
  NcclCommunicator* comm_;
  std::string what_;
  std::vector<Tensor> keep_;
  cudaEvent_t done_;
  std::function<void()> on_done_;
  bool finished_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Communicator> host, Device dev) : host_(std::move(host)), dev_(dev) {
    LATHE_CHECK(dev.is_cuda()) << "NCCL communicator: device must be cuda:N, got " << dev.str();
    kernels::cuda::set_device(dev.index);
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (host_->rank() == 0) LATHE_NCCL_CHECK(ncclGetUniqueId(&id), "ncclGetUniqueId");
    Tensor buf = Tensor::empty({static_cast<int64_t>(sizeof(id))}, DType::u8);
    std::memcpy(buf.raw_data(), &id, sizeof(id));
    host_->broadcast(buf, 0);
    std::memcpy(&id, buf.raw_data(), sizeof(id));
    LATHE_NCCL_CHECK(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()),
                     "ncclCommInitRank (rank " + std::to_string(host_->rank()) + " of " +
                         std::to_string(host_->size()) + " on " + dev.str() + ")");
    LATHE_CUDART_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "NCCL stream");
    set_timeout(host_->timeout());
  }
  ~NcclCommunicator() override {
    if (comm_) (aborted_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_));
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string backend() const override { return "nccl+" + host_->backend(); }

  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op) override {
    if (t.device().is_cpu()) return host_->all_reduce_async(t, op);
    detail::check_reduce("all_reduce", t, op);
    Tensor c = staged(t);
    return launch("all_reduce", {t, c}, [&] {
      return ncclAllReduce(c.raw_data(), c.raw_data(), c.numel(), nccl_dtype(c.dtype(), "all_reduce"), nccl_op(op),
                           comm_, stream_);
    }, writeback(t, c));
  }
  WorkPtr reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op) override {
    if (in.device().is_cpu()) return host_->reduce_scatter_async(in, out, op);
    detail::check_reduce("reduce_scatter", in, op);
    detail::check_same_dtype("reduce_scatter", in, out);
    detail::check_reduce_scatter(in, out, size());
    Tensor ci = in.contiguous(), co = staged(out);
    return launch("reduce_scatter", {ci, co, out}, [&] {
      return ncclReduceScatter(ci.raw_data(), co.raw_data(), co.numel(), nccl_dtype(co.dtype(), "reduce_scatter"),
                               nccl_op(op), comm_, stream_);
    }, writeback(out, co));
  }
  WorkPtr all_gather_async(const Tensor& in, const Tensor& out) override {
    if (in.device().is_cpu()) return host_->all_gather_async(in, out);
    detail::check_same_dtype("all_gather", in, out);
    detail::check_all_gather(in, out, size());
    Tensor ci = in.contiguous(), co = staged(out);
    if (detail::shares_storage(ci, co)) ci = ci.clone();
    return launch("all_gather", {ci, co, out}, [&] {
      return ncclAllGather(ci.raw_data(), co.raw_data(), ci.numel(), nccl_dtype(ci.dtype(), "all_gather"), comm_,
                           stream_);
    }, writeback(out, co));
  }
  WorkPtr all_to_all_async(const Tensor& in, const Tensor& out) override {
    if (in.device().is_cpu()) return host_->all_to_all_async(in, out);
    detail::check_same_dtype("all_to_all", in, out);
    detail::check_all_to_all(in, out, size());
    Tensor ci = in.contiguous(), co = staged(out);
    if (detail::shares_storage(ci, co)) ci = ci.clone();
    const int64_t block = ci.numel() / size();
    const size_t es = ci.element_size();
    return launch("all_to_all", {ci, co, out}, [&] {
      ncclDataType_t dt = nccl_dtype(ci.dtype(), "all_to_all");
      ncclResult_t r = ncclGroupStart();
      for (int p = 0; p < size() && r == ncclSuccess; ++p) {
        r = ncclSend(static_cast<char*>(ci.raw_data()) + p * block * es, block, dt, p, comm_, stream_);
        if (r == ncclSuccess) r = ncclRecv(static_cast<char*>(co.raw_data()) + p * block * es, block, dt, p, comm_, stream_);
      }
      ncclResult_t e = ncclGroupEnd();
      return r != ncclSuccess ? r : e;
    }, writeback(out, co));
  }
  WorkPtr broadcast_async(const Tensor& t, int root) override {
    if (t.device().is_cpu()) return host_->broadcast_async(t, root);
    detail::check_root("broadcast", root, size());
    Tensor c = staged(t);
    return launch("broadcast", {t, c}, [&] {
      return ncclBroadcast(c.raw_data(), c.raw_data(), c.numel(), nccl_dtype(c.dtype(), "broadcast"), root, comm_,
                           stream_);
    }, writeback(t, c));
  }
  WorkPtr send_async(const Tensor& t, int dst, int tag) override {
    if (t.device().is_cpu()) return host_->send_async(t, dst, tag);
    LATHE_CHECK(tag == 0) << "send: NCCL has no message tags; use tag 0 for CUDA tensors (got " << tag << ")";
    detail::check_peer("send", dst, size(), 0, 0);
    Tensor c = t.contiguous();
    return launch("send", {c}, [&] {
      return ncclSend(c.raw_data(), c.numel(), nccl_dtype(c.dtype(), "send"), dst, comm_, stream_);
    }, nullptr);
  }
  WorkPtr recv_async(const Tensor& t, int src, int tag) override {
    if (t.device().is_cpu()) return host_->recv_async(t, src, tag);
    LATHE_CHECK(tag == 0) << "recv: NCCL has no message tags; use tag 0 for CUDA tensors (got " << tag << ")";
    detail::check_peer("recv", src, size(), 0, 0);
    Tensor c = staged(t);
    return launch("recv", {t, c}, [&] {
      return ncclRecv(c.raw_data(), c.numel(), nccl_dtype(c.dtype(), "recv"), src, comm_, stream_);
    }, writeback(t, c));
  }
  WorkPtr barrier_async() override { return host_->barrier_async(); }
  std::shared_ptr<Communicator> split(int color, int key) override {
    std::shared_ptr<Communicator> sub = host_->split(color, key);
    if (!sub) return nullptr;
    return std::make_shared<NcclCommunicator>(sub, dev_);
  }

  [[noreturn]] void on_timeout(const std::string& what) {
    const std::string msg = detail::timeout_message(rank(), what, timeout());
    aborted_ = true;
    ncclCommAbort(comm_);  // frees the kernels stuck waiting for a dead peer
    comm_ = nullptr;
    if (timeout_action() == TimeoutAction::abort) {
      std::cerr << msg << std::endl;
      std::_Exit(70);
    }
    LATHE_FAIL() << msg;
    throw;
  }
  cudaStream_t compute_stream() const { return kernels::cuda::stream(dev_.index); }

 private:
  // t itself when contiguous, else a contiguous copy that writeback() copies into t.
  static Tensor staged(const Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }
  static std::function<void()> writeback(const Tensor& t, const Tensor& c) {
    if (c.is_same(t) || (c.storage() == t.storage() && c.offset() == t.offset())) return nullptr;
    return [t, c] { t.copy_(c); };
  }

  template <typename F>
  WorkPtr launch(const char* op, std::vector<Tensor> keep, F&& call, std::function<void()> on_done) {
    LATHE_CHECK(comm_ != nullptr) << op << ": this NCCL communicator was aborted after a timeout";
    for (const Tensor& t : keep)
      LATHE_CHECK(t.device() == dev_) << op << ": tensor on " << t.device().str() << " but this communicator runs on "
                                      << dev_.str();
    kernels::cuda::set_device(dev_.index);
    // Order the collective after the kernels that produced its inputs.
    cudaEvent_t ready = nullptr, done = nullptr;
    LATHE_CUDART_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), op);
    LATHE_CUDART_CHECK(cudaEventRecord(ready, compute_stream()), op);
    LATHE_CUDART_CHECK(cudaStreamWaitEvent(stream_, ready, 0), op);
    cudaEventDestroy(ready);
    const std::string what = std::string(op) + " #" + std::to_string(++seq_);
    LATHE_NCCL_CHECK(call(), "lathe: rank " + std::to_string(rank()) + ": " + what);
    LATHE_CUDART_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), op);
    LATHE_CUDART_CHECK(cudaEventRecord(done, stream_), op);
    return std::make_shared<NcclWork>(this, what, std::move(keep), done, std::move(on_done));
  }

  std::shared_ptr<Communicator> host_;
  Device dev_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int64_t seq_ = 0;
  bool aborted_ = false;
};

void NcclWork::finish() {
  if (finished_) return;
  finished_ = true;
  // Later kernels on the compute stream see the result.
  cudaStreamWaitEvent(comm_->compute_stream(), done_, 0);
  if (on_done_) on_done_();
  keep_.clear();
}

bool NcclWork::test() {
  if (finished_) return true;
  const cudaError_t e = cudaEventQuery(done_);
  if (e == cudaErrorNotReady) return false;
  LATHE_CUDART_CHECK(e, what_);
  finish();
  return true;
}

void NcclWork::wait() {
  if (finished_) return;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(comm_->timeout());
  while (!test()) {
    if (std::chrono::steady_clock::now() > deadline) comm_->on_timeout(what_);
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host, Device device) {
  LATHE_CHECK(host != nullptr) << "make_nccl_communicator: no host communicator";
  return std::make_shared<NcclCommunicator>(std::move(host), device);
}

#endif  // LATHE_HAS_NCCL

std::shared_ptr<Communicator> communicator_for(const std::shared_ptr<Communicator>& host, Device device) {
  if (device.is_cpu()) return host;
  static std::mutex mu;
  static std::map<std::pair<const Communicator*, int>, std::shared_ptr<Communicator>> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto& slot = cache[{host.get(), device.index}];
  if (!slot) slot = make_nccl_communicator(host, device);
  return slot;
}

}  // namespace lathe::parallel
