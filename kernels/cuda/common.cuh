// Shared pieces of the CUDA kernels: error checks, the compute stream, dtype conversion
// in device code, strided indexing and launch helpers. Included by kernels/cuda/*.cu only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/error.h"
#include "core/tensor.h"

#define LATHE_CUDA_CHECK(expr)                                                                        \
  do {                                                                                                \
    cudaError_t lathe_err_ = (expr);                                                                  \
    LATHE_CHECK(lathe_err_ == cudaSuccess) << "CUDA error in " #expr ": " << cudaGetErrorString(lathe_err_); \
  } while (0)

// Checks the launch that just happened (bad configuration, missing kernel image).
#define LATHE_CUDA_LAUNCH_CHECK(what) LATHE_CUDA_CHECK_NAMED(cudaGetLastError(), what)
#define LATHE_CUDA_CHECK_NAMED(expr, what)                                                            \
  do {                                                                                                \
    cudaError_t lathe_err_ = (expr);                                                                  \
    LATHE_CHECK(lathe_err_ == cudaSuccess) << what << ": CUDA error " << cudaGetErrorString(lathe_err_); \
  } while (0)

namespace lathe::kernels::cuda {

// The one compute stream of a device (created on first use, non-blocking). Every kernel,
// copy and cuBLAS call of lathe runs on it, which is what makes the caching allocator's
// immediate reuse of freed blocks safe (stream order).
cudaStream_t stream(int device_index = -1);
// Makes device_index current for this thread (cheap when it already is).
void set_device(int device_index);
int current_device();
// Device properties read once.
const cudaDeviceProp& props(int device_index = -1);

// ---- device-side dtype conversion ----------------------------------------------------
using bf16 = __nv_bfloat16;
using f16 = __half;

// Accumulation type: double for double, float for everything else.
template <typename T> struct acc { using type = float; };
template <> struct acc<double> { using type = double; };
template <typename T> using acc_t = typename acc<T>::type;

template <typename T>
__device__ __forceinline__ acc_t<T> ld(T v) {
  if constexpr (std::is_same_v<T, bf16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, f16>) return __half2float(v);
  else return static_cast<acc_t<T>>(v);
}
template <typename T, typename A>
__device__ __forceinline__ T st(A v) {
  if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, f16>) return __float2half_rn(static_cast<float>(v));
  else return static_cast<T>(v);
}

// Conversion between any two element types, as core's copy does on the CPU (16-bit floats
// go through float; everything else is a static_cast).
template <typename D, typename S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else if constexpr (std::is_same_v<S, bf16>) return convert<D>(__bfloat162float(v));
  else if constexpr (std::is_same_v<S, f16>) return convert<D>(__half2float(v));
  else if constexpr (std::is_same_v<D, bf16>) return __float2bfloat16_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<D, f16>) return __float2half_rn(static_cast<float>(v));
  else return static_cast<D>(v);
}

// Dispatch on lathe dtypes with the device types (bf16 -> __nv_bfloat16, f16 -> __half).
#define LATHE_CUDA_DISPATCH_FLOAT(op, dt, T, ...)                                              \
  switch (dt) {                                                                               \
    case ::lathe::DType::f64: { using T = double; __VA_ARGS__; break; }                       \
    case ::lathe::DType::f32: { using T = float; __VA_ARGS__; break; }                        \
    case ::lathe::DType::bf16: { using T = ::lathe::kernels::cuda::bf16; __VA_ARGS__; break; } \
    case ::lathe::DType::f16: { using T = ::lathe::kernels::cuda::f16; __VA_ARGS__; break; }   \
    default: LATHE_FAIL() << op << ": no cuda kernel for dtype " << ::lathe::dtype_name(dt);    \
  }
#define LATHE_CUDA_DISPATCH_ALL(dt, T, ...)                                                    \
  switch (dt) {                                                                               \
    case ::lathe::DType::f64: { using T = double; __VA_ARGS__; break; }                       \
    case ::lathe::DType::f32: { using T = float; __VA_ARGS__; break; }                        \
    case ::lathe::DType::bf16: { using T = ::lathe::kernels::cuda::bf16; __VA_ARGS__; break; } \
    case ::lathe::DType::f16: { using T = ::lathe::kernels::cuda::f16; __VA_ARGS__; break; }   \
    case ::lathe::DType::i64: { using T = int64_t; __VA_ARGS__; break; }                      \
    case ::lathe::DType::i32: { using T = int32_t; __VA_ARGS__; break; }                      \
    case ::lathe::DType::u8: { using T = uint8_t; __VA_ARGS__; break; }                       \
    case ::lathe::DType::i8: { using T = int8_t; __VA_ARGS__; break; }                        \
  }
#define LATHE_CUDA_DISPATCH_INDEX(op, dt, I, ...)                                         \
  switch (dt) {                                                                          \
    case ::lathe::DType::i64: { using I = int64_t; __VA_ARGS__; break; }                 \
    case ::lathe::DType::i32: { using I = int32_t; __VA_ARGS__; break; }                 \
    default: LATHE_FAIL() << op << ": indices must be i64 or i32, got " << ::lathe::dtype_name(dt); \
  }

// ---- strided indexing ------------------------------------------------------------------
constexpr int kMaxDims = 8;

// Maps a row-major linear index of a shape to an element offset under some strides.
// Passed to kernels by value. Dims of size 1 are dropped and contiguous runs merged on the
// host, so most tensors index with one or two divisions.
struct Indexer {
  int nd = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
  __host__ __device__ __forceinline__ int64_t offset(int64_t i) const {
    int64_t off = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d >= nd) continue;
      const int64_t q = i / size[d];
      off += (i - q * size[d]) * stride[d];
      i = q;
    }
    return off;
  }
};
// The indexer of t's view (shape and strides; the data pointer carries the offset).
Indexer make_indexer(const Tensor& t);
// Indexers of several tensors over one shape, with dims merged only where all allow it.
void make_indexers(const Shape& shape, const Tensor* const* ts, int n, Indexer* out);

// ---- launches --------------------------------------------------------------------------
constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 32) b = 65535LL * 32;  // grid-stride loops cover the rest
  return static_cast<unsigned>(b);
}
#define LATHE_CUDA_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

template <typename T>
inline T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}


// ---- compute types and 16-byte packs -------------------------------------------------------
// Compute type as the CPU's detail::comp_t: f64 computes in double, f32/bf16/f16 in float,
// integers in themselves (ld()/acc_t map everything non-double to float, which is what the
// float kernels want but wrong for integer ops).
// f64 computes in double, f32/bf16/f16 in float, integers in themselves (common.cuh's ld()
// maps everything non-double to float, which would be wrong for integer ops).
template <typename T> struct Comp { using type = T; };
template <> struct Comp<bf16> { using type = float; };
template <> struct Comp<f16> { using type = float; };
template <typename T> using comp_t = typename Comp<T>::type;

template <typename T> constexpr bool is_half_v = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;
template <typename T> constexpr bool is_float_v = is_half_v<T> || std::is_floating_point_v<T>;

template <typename T>
__device__ __forceinline__ comp_t<T> ldc(T v) {
  if constexpr (std::is_same_v<T, bf16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, f16>) return __half2float(v);
  else return v;
}
template <typename T>
__device__ __forceinline__ T stc(comp_t<T> v) {
  if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, f16>) return __float2half_rn(v);
  else return v;
}

template <typename C>
__device__ __forceinline__ bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return isnan(v);
  else return false;
}

// V consecutive elements as one 16-byte access (V * sizeof(T) == 16), or one element.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <typename T, int V>
__device__ __forceinline__ void load_pack(const T* p, acc_t<T> (&o)[V]) {
  if constexpr (V == 1) {
    o[0] = ld(p[0]);
  } else {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = ld(pk.v[k]);
  }
}
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const acc_t<T> (&o)[V]) {
  if constexpr (V == 1) {
    p[0] = st<T>(o[0]);
  } else {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = st<T>(o[k]);
    *reinterpret_cast<Pack<T, V>*>(p) = pk;
  }
}

// Which row this thread works on and its place in the row's group of threads.
template <bool kWarp>
__device__ __forceinline__ void row_slot(int64_t& row, int& t, int& nt) {
  if constexpr (kWarp) {
    row = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    t = threadIdx.x & 31;
    nt = 32;
  } else {
    row = blockIdx.x;
    t = threadIdx.x;
    nt = blockDim.x;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- block reductions ----------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds at least 32 values; the call ends with a barrier so it can be reused.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A r = lane < nw ? scratch[lane] : A(0);
  r = warp_sum(r);
  __syncthreads();
  return r;
}
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A r = lane < nw ? scratch[lane] : -INFINITY;
  r = warp_max(r);
  __syncthreads();
  return r;
}

// ---- Philox 4x32-10 on the device: the same stream as core/rng.h ------------------------
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += 0x9E3779B9u;
    k.y += 0xBB67AE85u;
  }
  return c;
}
__device__ __forceinline__ float uint_to_unit_float(uint32_t x) { return (x >> 8) * (1.0f / 16777216.0f); }

}  // namespace lathe::kernels::cuda
