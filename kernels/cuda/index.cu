// CUDA indexing kernels: embedding and its backward, gather / index_select (reads) and
// scatter_add / index_add (accumulating writes). Same contracts as kernels/cpu/index.cpp
// and kernels/cpu/embedding.cpp.
//
// Out-of-range indices. The CPU checks every index before writing and throws; doing that
// here would need a device-to-host copy and a sync on every call. Instead the kernels never
// read or write outside a tensor: a read with a bad index (embedding, gather, index_select)
// writes NaN into that output element (0 for integer dtypes), so the error shows up in the
// loss, and an accumulating write with a bad index (embedding_backward, scatter_add,
// index_add) is skipped.
//
// Determinism. embedding_backward sorts positions by id (stable radix sort) and each output
// row sums its positions in increasing order, as the CPU does, so the result is
// bit-identical to the CPU's and does not vary between runs. scatter_add / index_add walk
// the axis serially per off-axis position (deterministic, and the CPU's order) unless there
// are few off-axis positions and a long axis; then they use atomicAdd (f32, f64, i32, i64
// only), whose float sums vary in the last bits from run to run.
#include <cub/cub.cuh>

#include <cstring>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

int dev_of(const Tensor& t) { return t.device().index; }

// The bit pattern written for a bad index: a quiet NaN for floats, 0 for integers.
uint64_t poison_bits(DType dt) {
  switch (dt) {
    case DType::f64: return 0x7FF8000000000000ull;
    case DType::f32: return 0x7FC00000ull;
    case DType::bf16: return 0x7FC0ull;
    case DType::f16: return 0x7E00ull;
    default: return 0;
  }
}

// `poison_bits(dt)` repeated to fill a U (sizeof(U) is a multiple of the element size).
template <typename U>
U poison_unit(DType dt) {
  const size_t es = dtype_size(dt);
  const uint64_t bits = poison_bits(dt);
  unsigned char buf[sizeof(U)];
  for (size_t o = 0; o < sizeof(U); o += es) std::memcpy(buf + o, &bits, es);  // little-endian
  U u;
  std::memcpy(&u, buf, sizeof(U));
  return u;
}

#define LATHE_CUDA_DISPATCH_BITS(op, size, U, ...)                                    \
  switch (size) {                                                                     \
    case 1: { using U = uint8_t; __VA_ARGS__; break; }                                \
    case 2: { using U = uint16_t; __VA_ARGS__; break; }                               \
    case 4: { using U = uint32_t; __VA_ARGS__; break; }                               \
    case 8: { using U = uint64_t; __VA_ARGS__; break; }                               \
    default: LATHE_FAIL() << op << ": unsupported element size " << (size);           \
  }

// ---- embedding ---------------------------------------------------------------------------

// out row i = w row ids[i], copied in units U (16, 8, 4, 2 or 1 bytes; host-checked
// alignment). One block walks a row; blocks stride over rows.
template <typename U, typename I>
__global__ void embedding_kernel(U* __restrict__ out, const U* __restrict__ w, const I* __restrict__ ids, int64_t n,
                                 int64_t units, int64_t V, U poison) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int64_t id = static_cast<int64_t>(ids[r]);
    U* o = out + r * units;
    if (id >= 0 && id < V) {
      const U* src = w + id * units;
      for (int64_t c = threadIdx.x; c < units; c += blockDim.x) o[c] = src[c];
    } else {
      for (int64_t c = threadIdx.x; c < units; c += blockDim.x) o[c] = poison;
    }
  }
}

unsigned row_threads(int64_t units) {
  int64_t t = (units + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(rows < 1 ? 1 : (rows > (int64_t(1) << 30) ? (int64_t(1) << 30) : rows));
}

// ---- embedding backward ------------------------------------------------------------------

// key[i] = ids[i], or R (sorted after every real row, then skipped) when out of [0, R).
template <typename K, typename I>
__global__ void embedding_keys_kernel(const I* __restrict__ ids, int64_t n, int64_t R, K* __restrict__ keys,
                                      int32_t* __restrict__ pos) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    keys[i] = static_cast<K>(id >= 0 && id < R ? id : R);
    pos[i] = static_cast<int32_t>(i);
  }
}

template <typename K>
__device__ __forceinline__ int64_t lower_bound(const K* keys, int64_t n, uint64_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (static_cast<uint64_t>(keys[mid]) < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// One block per output row r: sums gy rows pos[k] for the k with key[k] == r, k increasing
// (the stable sort keeps positions increasing within a key, as the CPU's counting sort),
// and writes every element of the row (zeros when no id touches it).
template <typename T, typename K>
__global__ void embedding_backward_kernel(const T* __restrict__ gy, const K* __restrict__ keys,
                                          const int32_t* __restrict__ pos, int64_t n, int64_t R, int64_t C,
                                          T* __restrict__ out) {
  using A = acc_t<T>;
  __shared__ int64_t range[2];
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    if (threadIdx.x == 0) range[0] = lower_bound(keys, n, static_cast<uint64_t>(r));
    if (threadIdx.x == 32 || (blockDim.x <= 32 && threadIdx.x == 0))
      range[1] = lower_bound(keys, n, static_cast<uint64_t>(r) + 1);
    __syncthreads();
    const int64_t lo = range[0], hi = range[1];
    __syncthreads();  // range is rewritten by the next row
    T* o = out + r * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      A acc = A(0);
      for (int64_t k = lo; k < hi; ++k) acc += ld(gy[static_cast<int64_t>(pos[k]) * C + c]);
      o[c] = st<T>(acc);
    }
  }
}

template <typename T, typename K, typename I>
void embedding_backward_run(const Tensor& gy, const Tensor& ids, const Tensor& out, int64_t n, int64_t R,
                            int64_t C, cudaStream_t s) {
  const Device dev = gy.device();
  Tensor keys_in = Tensor::empty({n * int64_t(sizeof(K))}, DType::u8, dev);
  Tensor keys_out = Tensor::empty({n * int64_t(sizeof(K))}, DType::u8, dev);
  Tensor pos_in = Tensor::empty({n}, DType::i32, dev);
  Tensor pos_out = Tensor::empty({n}, DType::i32, dev);
  K* kin = ptr<K>(keys_in);
  K* kout = ptr<K>(keys_out);
  embedding_keys_kernel<K, I><<<blocks_for(n), kThreads, 0, s>>>(ptr<const I>(ids), n, R, kin, ptr<int32_t>(pos_in));
  LATHE_CUDA_LAUNCH_CHECK("embedding_backward (keys)");
  // Sort only the bits that can be set: keys are at most R.
  int end_bit = 1;
  while (end_bit < int(sizeof(K) * 8) && (static_cast<uint64_t>(R) >> end_bit) != 0) ++end_bit;
  size_t temp_bytes = 0;
  LATHE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, kin, kout, ptr<const int32_t>(pos_in),
                                                   ptr<int32_t>(pos_out), n, 0, end_bit, s));
  Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes > 0 ? temp_bytes : 1)}, DType::u8, dev);
  LATHE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, kin, kout,
                                                   ptr<const int32_t>(pos_in), ptr<int32_t>(pos_out), n, 0, end_bit,
                                                   s));
  LATHE_CUDA_LAUNCH_CHECK("embedding_backward (sort)");
  embedding_backward_kernel<T, K><<<row_blocks(R), row_threads(C), 0, s>>>(
      ptr<const T>(gy), kout, ptr<const int32_t>(pos_out), n, R, C, ptr<T>(out));
  LATHE_CUDA_LAUNCH_CHECK("embedding_backward");
  // keys/pos/temp are freed here; the caching allocator hands them out again only to work
  // queued after these kernels on the same stream.
}

// ---- gather / index_select -----------------------------------------------------------------

// out[i] (contiguous) = x[xi(i) + k * axis_stride] with k = index[ii(i)]; xi indexes x
// with stride 0 along the axis, so adding k * axis_stride selects the row.
template <typename U, typename I>
__global__ void gather_kernel(U* __restrict__ out, const U* __restrict__ x, Indexer xi, const I* __restrict__ index,
                              Indexer ii, int64_t n, int64_t axis_stride, int64_t axis_size, U poison) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    const int64_t k = static_cast<int64_t>(index[ii.offset(i)]);
    out[i] = (k >= 0 && k < axis_size) ? x[xi.offset(i) + k * axis_stride] : poison;
  }
}

// index_view has out's shape (gather: index itself; index_select: the 1-D index broadcast).
void gather_any(const char* op, const Tensor& x, int64_t axis, const Tensor& index_view, const Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  LATHE_CHECK(out.is_contiguous()) << op << ": output must be contiguous";
  set_device(dev_of(out));
  cudaStream_t s = stream(dev_of(out));
  Shape xs = x.strides();
  xs[axis] = 0;
  Tensor xv = x.as_strided(out.shape(), xs, x.offset());
  const Tensor* ts[2] = {&xv, &index_view};
  Indexer ix[2];
  make_indexers(out.shape(), ts, 2, ix);
  const int64_t astride = x.stride(axis), asize = x.size(axis);
  LATHE_CUDA_DISPATCH_BITS(op, x.element_size(), U, LATHE_CUDA_DISPATCH_INDEX(op, index_view.dtype(), I, {
    gather_kernel<U, I><<<blocks_for(n), kThreads, 0, s>>>(ptr<U>(out), ptr<const U>(x), ix[0],
                                                           ptr<const I>(index_view), ix[1], n, astride, asize,
                                                           static_cast<U>(poison_bits(x.dtype())));
  }));
  LATHE_CUDA_LAUNCH_CHECK(op);
}

// A 1-D index along `axis`, broadcast to `shape` (stride 0 off the axis).
Tensor broadcast_index(const Tensor& index, const Shape& shape, int64_t axis) {
  Shape st(shape.size(), 0);
  st[axis] = index.stride(0);
  return index.as_strided(shape, st, index.offset());
}

// ---- scatter_add / index_add ---------------------------------------------------------------

// Compute type of an accumulation: float for 16-bit floats, the type itself otherwise
// (integers wrap as on the CPU).
template <typename T> struct Comp { using type = T; };
template <> struct Comp<bf16> { using type = float; };
template <> struct Comp<f16> { using type = float; };

template <typename T>
__device__ __forceinline__ typename Comp<T>::type cload(T v) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) return ld(v);
  else return v;
}
template <typename T>
__device__ __forceinline__ T cstore(typename Comp<T>::type v) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) return st<T>(v);
  else return v;
}

// Thread per off-axis position t: walks the axis l = 0..L-1 in order,
// out[oo + k * os] += src[so + l * ss] with k = index[io + l * is]. Different t never
// write the same element (index fits in out off the axis), so no atomics are needed.
template <typename T, typename I>
__global__ void scatter_serial_kernel(T* out, Indexer oi, const T* __restrict__ src, Indexer si,
                                      const I* __restrict__ index, Indexer ii, int64_t m, int64_t L, int64_t os,
                                      int64_t ss, int64_t is, int64_t axis_size) {
  using C = typename Comp<T>::type;
  LATHE_CUDA_GRID_STRIDE(t, m) {
    T* o = out + oi.offset(t);
    const T* sp = src + si.offset(t);
    const I* ip = index + ii.offset(t);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t k = static_cast<int64_t>(ip[l * is]);
      if (k < 0 || k >= axis_size) continue;  // the CPU throws; see the file comment
      T* p = o + k * os;
      *p = cstore<T>(static_cast<C>(cload(*p) + cload(sp[l * ss])));
    }
  }
}

template <typename T>
__device__ __forceinline__ void atomic_add(T* p, T v) {
  if constexpr (std::is_same_v<T, int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));  // wraps as int64
  } else {
    atomicAdd(p, v);
  }
}

// Thread per element of index/src: out[oo + k * os] += src (atomic; for floats the order
// of the adds, and so the rounding, varies from run to run).
template <typename T, typename I>
__global__ void scatter_atomic_kernel(T* out, Indexer oi, const T* __restrict__ src, Indexer si,
                                      const I* __restrict__ index, Indexer ii, int64_t n, int64_t os,
                                      int64_t axis_size) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    const int64_t k = static_cast<int64_t>(index[ii.offset(i)]);
    if (k < 0 || k >= axis_size) continue;
    atomic_add(out + oi.offset(i) + k * os, src[si.offset(i)]);
  }
}

template <typename T> constexpr bool has_atomic_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>;

// Launches the atomic scatter when T has a hardware atomicAdd; false (nothing launched)
// otherwise. A template, so the discarded branch is never instantiated.
template <typename T, typename I>
bool scatter_atomic_launch(const Tensor& index, const Tensor& src, const Tensor& out, int64_t axis, int64_t os,
                           int64_t axis_size, cudaStream_t s) {
  if constexpr (has_atomic_v<T>) {
    const Shape& shape = index.shape();
    const int64_t n = index.numel();
    Shape ost = out.strides();
    ost[axis] = 0;
    Tensor ov = out.as_strided(shape, ost, out.offset());
    const Tensor* ts[3] = {&ov, &src, &index};
    Indexer ix[3];
    make_indexers(shape, ts, 3, ix);
    scatter_atomic_kernel<T, I><<<blocks_for(n), kThreads, 0, s>>>(ptr<T>(out), ix[0], ptr<const T>(src), ix[1],
                                                                   ptr<const I>(index), ix[2], n, os, axis_size);
    return true;
  } else {
    (void)index, (void)src, (void)out, (void)axis, (void)os, (void)axis_size, (void)s;
    return false;
  }
}

// out[pos with pos[axis] = index[pos]] += src[pos] for every pos of index/src's shape.
void scatter_any(const char* op, int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  const Shape& shape = index.shape();
  const int64_t n = index.numel();
  if (n == 0) return;
  set_device(dev_of(out));
  cudaStream_t s = stream(dev_of(out));
  const int64_t L = index.size(axis);
  const int64_t m = n / L;  // off-axis positions
  const int64_t axis_size = out.size(axis), os = out.stride(axis);
  // Few off-axis positions but a long axis: the serial walk would leave the GPU idle.
  const bool want_atomic = m < 16384 && L > 32;
  LATHE_CUDA_DISPATCH_ALL(out.dtype(), T, LATHE_CUDA_DISPATCH_INDEX(op, index.dtype(), I, {
    const bool done = want_atomic && scatter_atomic_launch<T, I>(index, src, out, axis, os, axis_size, s);
    if (!done) {
      Shape off = shape;
      off[axis] = 1;
      Tensor ov = out.as_strided(off, out.strides(), out.offset());
      Tensor sv = src.narrow(axis, 0, 1), iv = index.narrow(axis, 0, 1);
      const Tensor* ts[3] = {&ov, &sv, &iv};
      Indexer ix[3];
      make_indexers(off, ts, 3, ix);
      scatter_serial_kernel<T, I><<<blocks_for(m), kThreads, 0, s>>>(
          ptr<T>(out), ix[0], ptr<const T>(src), ix[1], ptr<const I>(index), ix[2], m, L, os, src.stride(axis),
          index.stride(axis), axis_size);
    }
  }));
  LATHE_CUDA_LAUNCH_CHECK(op);
}

}  // namespace

// ---- entry points ----------------------------------------------------------------------------

void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) {
  const int64_t V = w.size(0), C = w.size(1), n = ids.numel();
  if (n == 0 || C == 0) return;
  LATHE_CHECK(w.is_contiguous() && ids.is_contiguous() && out.is_contiguous())
      << "embedding: cuda kernel needs contiguous weight, ids and output";
  set_device(dev_of(out));
  cudaStream_t s = stream(dev_of(out));
  // Widest copy unit that divides the row and both base addresses.
  const size_t es = w.element_size();
  const size_t row_bytes = static_cast<size_t>(C) * es;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(w.raw_data()) | reinterpret_cast<uintptr_t>(out.raw_data());
  size_t unit = 16;
  while (unit > es && (row_bytes % unit != 0 || addr % unit != 0)) unit >>= 1;
  const int64_t units = static_cast<int64_t>(row_bytes / unit);
  auto launch = [&](auto tag) {
    using U = decltype(tag);
    LATHE_CUDA_DISPATCH_INDEX("embedding", ids.dtype(), I, {
      embedding_kernel<U, I><<<row_blocks(n), row_threads(units), 0, s>>>(
          ptr<U>(out), ptr<const U>(w), ptr<const I>(ids), n, units, V, poison_unit<U>(w.dtype()));
    });
  };
  switch (unit) {
    case 16: launch(uint4{}); break;
    case 8: launch(uint64_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 2: launch(uint16_t{}); break;
    default: launch(uint8_t{}); break;
  }
  LATHE_CUDA_LAUNCH_CHECK("embedding");
}

void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) {
  const int64_t R = out.size(0), C = out.size(1), n = ids.numel();
  if (R == 0 || C == 0) return;
  LATHE_CHECK(gy.is_contiguous() && ids.is_contiguous() && out.is_contiguous())
      << "embedding_backward: cuda kernel needs contiguous gy, ids and output";
  set_device(dev_of(out));
  cudaStream_t s = stream(dev_of(out));
  if (n == 0) {  // no positions: every row is zero
    LATHE_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), s));
    return;
  }
  LATHE_CHECK(n <= int64_t(INT32_MAX)) << "embedding_backward: more than 2^31 - 1 ids (" << n << ") on cuda";
  LATHE_CUDA_DISPATCH_FLOAT("embedding_backward", gy.dtype(), T, LATHE_CUDA_DISPATCH_INDEX(
      "embedding_backward", ids.dtype(), I, {
        // 32-bit keys whenever the sentinel R fits (every real vocabulary).
        if (static_cast<uint64_t>(R) <= 0xFFFFFFFFull) embedding_backward_run<T, uint32_t, I>(gy, ids, out, n, R, C, s);
        else embedding_backward_run<T, uint64_t, I>(gy, ids, out, n, R, C, s);
      }));
}

void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) {
  gather_any("gather", x, axis, index, out);
}

void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) {
  gather_any("index_select", x, axis, broadcast_index(index, out.shape(), axis), out);
}

void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  scatter_any("scatter_add", axis, index, src, out);
}

void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  scatter_any("index_add", axis, broadcast_index(index, src.shape(), axis), src, out);
}

}  // namespace lathe::kernels::cuda
