// The CUDA runtime side of lathe: devices and their compute streams, the caching device
// allocator, pinned host memory, and the registration of both with core.
//
// Caching allocator. cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, and a training step frees and reallocates the same activation sizes every
// step, so freed blocks go to per-device free lists keyed by a rounded size class and are
// handed out again. Sizes round up to 512 bytes below 1 MiB and to 2 MiB above, so a block
// serves requests up to its class. Frees are stream-ordered: every kernel of lathe runs on
// the device's one compute stream, so a block freed by the host can be reused by the next
// launch at once (the launch queues after the last use). When cudaMalloc fails the cache is
// emptied and the allocation retried once before the error, which reports what is held.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <map>
#include <mutex>
#include <unordered_map>
#include <sstream>
#include <vector>

#include "core/device_ops.h"
#include "core/memory.h"
#include "core/paged.h"
#include "kernels/cuda/common.cuh"
#include "kernels/device.h"

namespace lathe::kernels::cuda {

namespace {

constexpr int kMaxDevices = 16;

int device_count_cached() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later calls start clean
      return 0;
    }
    return c;
  }();
  return n;
}

void check_index(int device_index) {
  const int n = device_count_cached();
  LATHE_CHECK(n > 0) << "cuda:" << device_index << " was asked for, but no CUDA device is visible "
                     << "(no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)";
  LATHE_CHECK(device_index >= 0 && device_index < n)
      << "cuda:" << device_index << " does not exist: " << n << " CUDA device(s) visible";
}

bool& poison_flag() {
  static bool on = [] {
    const char* e = std::getenv("LATHE_CUDA_POISON");
    return e && *e && std::string(e) != "0";
  }();
  return on;
}

size_t round_size(size_t n) {
  if (n == 0) n = 1;
  const size_t small = 512, large = size_t(2) << 20;
  return n < (size_t(1) << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
}

class CachingAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes, int device_index) override {
    if (nbytes == 0) return nullptr;
    check_index(device_index);
    const size_t cls = round_size(nbytes);
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto& dev = devs_[device_index];
      auto it = dev.free.find(cls);
      if (it != dev.free.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        dev.cached -= cls;
        if (poison_flag()) LATHE_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, cls, stream(device_index)));
        return p;
      }
    }
    set_device(device_index);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, cls);
    if (e != cudaSuccess) {
      cudaGetLastError();
      empty_cache(device_index);
      e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      std::lock_guard<std::mutex> lk(mu_);
      LATHE_FAIL() << "out of memory on cuda:" << device_index << ": could not allocate " << (cls >> 20)
                   << " MiB (" << cls << " bytes); lathe holds " << (devs_[device_index].reserved >> 20)
                   << " MiB, the device has " << (free_b >> 20) << " MiB free of " << (total_b >> 20)
                   << " MiB. Try a smaller micro-batch (train.micro_batch_size) or sequence length.";
    }
    std::lock_guard<std::mutex> lk(mu_);
    auto& dev = devs_[device_index];
    dev.sizes[p] = cls;
    dev.reserved += cls;
    dev.peak_reserved = std::max(dev.peak_reserved, dev.reserved);
    if (poison_flag()) LATHE_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, cls, stream(device_index)));
    return p;
  }

  void deallocate(void* p, size_t, int device_index) override {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto& dev = devs_[device_index];
    auto it = dev.sizes.find(p);
    LATHE_CHECK(it != dev.sizes.end()) << "cuda allocator: freeing a pointer it did not allocate";
    dev.free[it->second].push_back(p);
    dev.cached += it->second;
  }

  void empty_cache(int device_index) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto& dev = devs_[device_index];
      for (auto& kv : dev.free) {
        for (void* p : kv.second) {
          drop.push_back(p);
          dev.sizes.erase(p);
          dev.reserved -= kv.first;
        }
      }
      dev.free.clear();
      dev.cached = 0;
    }
    if (drop.empty()) return;
    set_device(device_index);
    // The freed blocks may still be read by queued kernels: wait for them first.
    cudaStreamSynchronize(stream(device_index));
    for (void* p : drop) cudaFree(p);
  }

  size_t cached(int d) {
    std::lock_guard<std::mutex> lk(mu_);
    return devs_[d].cached;
  }
  size_t reserved(int d) {
    std::lock_guard<std::mutex> lk(mu_);
    return devs_[d].reserved;
  }
  size_t peak_reserved(int d) {
    std::lock_guard<std::mutex> lk(mu_);
    return devs_[d].peak_reserved;
  }

 private:
  struct PerDevice {
    std::map<size_t, std::vector<void*>> free;
    std::map<void*, size_t> sizes;
    size_t cached = 0, reserved = 0, peak_reserved = 0;
  };
  std::mutex mu_;
  PerDevice devs_[kMaxDevices];
};

CachingAllocator& caching_allocator() {
  // Never destroyed: tensors held by static objects may be freed after main returns.
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

// ---- devices and streams ---------------------------------------------------------------

void set_device(int device_index) {
  thread_local int current = -1;
  if (current == device_index) return;
  check_index(device_index);
  LATHE_CUDA_CHECK(cudaSetDevice(device_index));
  current = device_index;
}

int current_device() {
  int d = 0;
  LATHE_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

cudaStream_t stream(int device_index) {
  if (device_index < 0) device_index = current_device();
  static std::mutex mu;
  static cudaStream_t streams[kMaxDevices] = {};
  std::lock_guard<std::mutex> lk(mu);
  if (!streams[device_index]) {
    set_device(device_index);
    LATHE_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device_index], cudaStreamNonBlocking));
  }
  return streams[device_index];
}

const cudaDeviceProp& props(int device_index) {
  if (device_index < 0) device_index = current_device();
  static std::mutex mu;
  static cudaDeviceProp p[kMaxDevices];
  static bool have[kMaxDevices] = {};
  std::lock_guard<std::mutex> lk(mu);
  if (!have[device_index]) {
    LATHE_CUDA_CHECK(cudaGetDeviceProperties(&p[device_index], device_index));
    have[device_index] = true;
  }
  return p[device_index];
}

void synchronize(int device_index) {
  set_device(device_index);
  LATHE_CUDA_CHECK(cudaStreamSynchronize(stream(device_index)));
}

// ---- indexers --------------------------------------------------------------------------

void make_indexers(const Shape& shape, const Tensor* const* ts, int n, Indexer* out) {
  // Drop size-1 dims, then merge dim d into d+1 where every tensor is contiguous across them.
  std::vector<int64_t> sz;
  std::vector<std::vector<int64_t>> st(n);
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    sz.push_back(shape[d]);
    for (int k = 0; k < n; ++k) st[k].push_back(ts[k]->strides()[d]);
  }
  std::vector<int64_t> msz;
  std::vector<std::vector<int64_t>> mst(n);
  for (size_t d = 0; d < sz.size(); ++d) {
    bool merge = !msz.empty();
    for (int k = 0; k < n && merge; ++k) merge = mst[k].back() == st[k][d] * sz[d];
    if (merge) {
      msz.back() *= sz[d];
      for (int k = 0; k < n; ++k) mst[k].back() = st[k][d];
    } else {
      msz.push_back(sz[d]);
      for (int k = 0; k < n; ++k) mst[k].push_back(st[k][d]);
    }
  }
  LATHE_CHECK(static_cast<int>(msz.size()) <= kMaxDims)
      << "cuda: tensors of shape " << shape_str(shape) << " have more than " << kMaxDims
      << " non-mergeable dims; make them contiguous first";
  for (int k = 0; k < n; ++k) {
    out[k] = Indexer();
    out[k].nd = static_cast<int>(msz.size());
    for (size_t d = 0; d < msz.size(); ++d) {
      out[k].size[d] = msz[d];
      out[k].stride[d] = mst[k][d];
    }
  }
}

Indexer make_indexer(const Tensor& t) {
  const Tensor* p = &t;
  Indexer ix;
  make_indexers(t.shape(), &p, 1, &ix);
  return ix;
}

// ---- copies, fills, transfers -----------------------------------------------------------

namespace {

template <typename D, typename S>
__global__ void copy_kernel(D* dst, Indexer di, const S* src, Indexer si, int64_t n) {
  LATHE_CUDA_GRID_STRIDE(i, n) { dst[di.offset(i)] = convert<D>(src[si.offset(i)]); }
}
template <typename D, typename S>
__global__ void copy_contig_kernel(D* __restrict__ dst, const S* __restrict__ src, int64_t n) {
  LATHE_CUDA_GRID_STRIDE(i, n) { dst[i] = convert<D>(src[i]); }
}

template <typename T>
__global__ void fill_kernel(T* dst, Indexer di, T v, int64_t n) {
  LATHE_CUDA_GRID_STRIDE(i, n) { dst[di.offset(i)] = v; }
}

template <typename T>
T host_value(double v) {
  if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, f16>) return __float2half_rn(static_cast<float>(v));
  else return static_cast<T>(v);
}

int dev_of(const Tensor& t) { return t.device().index; }

}  // namespace

void copy(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  set_device(dev_of(dst));
  cudaStream_t s = stream(dev_of(dst));
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    LATHE_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, s));
    return;
  }
  const bool contig = dst.is_contiguous() && src.is_contiguous();
  const Tensor* ts[2] = {&dst, &src};
  Indexer ix[2];
  if (!contig) make_indexers(dst.shape(), ts, 2, ix);
  LATHE_CUDA_DISPATCH_ALL(dst.dtype(), D, LATHE_CUDA_DISPATCH_ALL(src.dtype(), S, {
    if (contig) {
      copy_contig_kernel<D, S><<<blocks_for(n), kThreads, 0, s>>>(ptr<D>(dst), ptr<const S>(src), n);
    } else {
      copy_kernel<D, S><<<blocks_for(n), kThreads, 0, s>>>(ptr<D>(dst), ix[0], ptr<const S>(src), ix[1], n);
    }
  }));
  LATHE_CUDA_LAUNCH_CHECK("copy");
}

void fill(const Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  set_device(dev_of(dst));
  cudaStream_t s = stream(dev_of(dst));
  if (value == 0.0 && dst.is_contiguous()) {
    LATHE_CUDA_CHECK(cudaMemsetAsync(dst.raw_data(), 0, dst.nbytes(), s));
    return;
  }
  Indexer ix = make_indexer(dst);
  LATHE_CUDA_DISPATCH_ALL(dst.dtype(), T,
                          fill_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(ptr<T>(dst), ix, host_value<T>(value), n));
  LATHE_CUDA_LAUNCH_CHECK("fill");
}

void copy_from_host(const Tensor& dst, const Tensor& src) {
  LATHE_CHECK(dst.is_contiguous() && src.is_contiguous() && dst.nbytes() == src.nbytes())
      << "copy_from_host: needs contiguous tensors of one size";
  if (dst.nbytes() == 0) return;
  set_device(dev_of(dst));
  cudaStream_t s = stream(dev_of(dst));
  LATHE_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyHostToDevice, s));
  // The host buffer may be freed as soon as we return (pageable memory is staged by the
  // driver before cudaMemcpyAsync returns; pinned memory is not): wait for pinned sources.
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, src.raw_data()) == cudaSuccess && a.type == cudaMemoryTypeHost) {
    LATHE_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  cudaGetLastError();
}

void copy_to_host(const Tensor& dst, const Tensor& src) {
  LATHE_CHECK(dst.is_contiguous() && src.is_contiguous() && dst.nbytes() == src.nbytes())
      << "copy_to_host: needs contiguous tensors of one size";
  if (dst.nbytes() == 0) return;
  set_device(dev_of(src));
  cudaStream_t s = stream(dev_of(src));
  LATHE_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToHost, s));
  LATHE_CUDA_CHECK(cudaStreamSynchronize(s));
}

// Paged optimizer state on CUDA (core/paged.h; QLoRA's paged optimizers): managed memory that
// the driver may migrate to the host when the GPU runs short, prefetched to the GPU on the
// compute stream before each update. Devices without concurrent managed access (Windows, WSL,
// some virtualised GPUs: "operation not supported", xtuner#247) get plain device memory, and
// prefetch does nothing.
class ManagedAllocator final : public PagedAllocator {
 public:
  void* allocate(size_t nbytes, int device_index) override {
    if (nbytes == 0) return nullptr;
    set_device(device_index);
    void* p = nullptr;
    if (concurrent_managed(device_index)) {
      LATHE_CUDA_CHECK(cudaMallocManaged(&p, nbytes, cudaMemAttachGlobal));
      std::lock_guard<std::mutex> lk(mu_);
      managed_[p] = nbytes;
    } else {
      LATHE_CUDA_CHECK(cudaMalloc(&p, nbytes));
    }
    return p;
  }
  void deallocate(void* p, size_t, int device_index) override {
    if (!p) return;
    set_device(device_index);
    {
      std::lock_guard<std::mutex> lk(mu_);
      managed_.erase(p);
    }
    LATHE_CUDA_CHECK(cudaFree(p));  // waits for the kernels that use it
  }
  void prefetch(void* p, size_t nbytes, int device_index) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!managed_.count(p)) return;
    }
    set_device(device_index);
    cudaMemLocation loc{};
    loc.type = cudaMemLocationTypeDevice;
    loc.id = device_index;
    LATHE_CUDA_CHECK(cudaMemPrefetchAsync(p, nbytes, loc, 0, stream(device_index)));
  }
  const char* where() const override { return "managed memory"; }

 private:
  static bool concurrent_managed(int device_index) {
    int v = 0;
    return cudaDeviceGetAttribute(&v, cudaDevAttrConcurrentManagedAccess, device_index) == cudaSuccess && v != 0;
  }
  std::mutex mu_;
  std::unordered_map<void*, size_t> managed_;
};

ManagedAllocator& managed_allocator() {
  static ManagedAllocator* a = new ManagedAllocator();  // never destroyed, as the caching allocator
  return *a;
}

void register_cuda() {
  register_allocator(DeviceType::cuda, &caching_allocator());
  register_paged_allocator(DeviceType::cuda, &managed_allocator());
}

}  // namespace lathe::kernels::cuda

// ---- kernels/device.h ----------------------------------------------------------------------

namespace lathe::kernels {

int cuda_device_count() { return cuda::device_count_cached(); }

std::string device_description(Device d) {
  if (d.is_cpu()) return "cpu";
  const cudaDeviceProp& p = cuda::props(d.index);
  std::ostringstream os;
  os << p.name << " (sm_" << p.major << p.minor << ", " << p.multiProcessorCount << " SMs, "
     << (p.totalGlobalMem >> 30) << " GiB)";
  return os.str();
}

size_t cuda_cached_bytes() {
  size_t s = 0;
  for (int d = 0; d < cuda::device_count_cached(); ++d) s += cuda::caching_allocator().cached(d);
  return s;
}
void cuda_poison_allocations(bool on) { cuda::poison_flag() = on; }
void cuda_empty_cache() {
  for (int d = 0; d < cuda::device_count_cached(); ++d) cuda::caching_allocator().empty_cache(d);
}
size_t cuda_reserved_bytes() {
  size_t s = 0;
  for (int d = 0; d < cuda::device_count_cached(); ++d) s += cuda::caching_allocator().reserved(d);
  return s;
}
size_t cuda_peak_reserved_bytes() {
  size_t s = 0;
  for (int d = 0; d < cuda::device_count_cached(); ++d) s += cuda::caching_allocator().peak_reserved(d);
  return s;
}

Tensor pinned_empty(const Shape& shape, DType dt) {
  const size_t nbytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dt);
  if (cuda::device_count_cached() == 0 || nbytes == 0) return Tensor::empty(shape, dt, Device::cpu());
  void* p = nullptr;
  LATHE_CUDA_CHECK(cudaMallocHost(&p, nbytes));
  auto s = Storage::wrap(p, nbytes, Device::cpu(), [](void* q) { cudaFreeHost(q); }, /*counted=*/true,
                         current_mem_category());
  return Tensor::from_storage(std::move(s), shape, dt);
}

}  // namespace lathe::kernels
