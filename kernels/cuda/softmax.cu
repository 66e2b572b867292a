// Softmax and log-softmax along any axis, and their backward passes (contract and edge
// cases as kernels/cpu/softmax.cpp).
//
// A contiguous x is seen as [outer, n, inner]; each (outer, inner) lane of n values with
// stride `inner` is one independent row. Two layouts of work:
//  - row kernels: one warp (n <= 1024) or one block per row. Used for the last axis
//    (inner == 1, with 16-byte vector loads when aligned) and for strided rows when there
//    are too few of them to fill the GPU one thread per row.
//  - lane kernel: one thread per row, for inner > 1 with many rows; neighbouring threads
//    hold neighbouring inner indices, so every load of the row loop is coalesced.
//
// The forward makes one pass for the row max and the sum of exponentials together
// (online softmax, Milakov & Gimelshein 2018: a running sum is rescaled by
// exp(old_max - new_max) whenever the max grows) and a second pass for the outputs.
// Special values match the CPU: NaNs are ignored by the max and propagate through the sum;
// a row that is all -inf gives zeros (softmax) or -inf (log-softmax).
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

// ---- device helpers ----------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A dexp(A v) {
  if constexpr (std::is_same_v<A, double>) return exp(v);
  else return expf(v);
}
template <typename A>
__device__ __forceinline__ A dlog(A v) {
  if constexpr (std::is_same_v<A, double>) return log(v);
  else return logf(v);
}
template <typename A>
__device__ __forceinline__ A dmax(A a, A b) {  // ignores a NaN operand, like the CPU's max
  if constexpr (std::is_same_v<A, double>) return fmax(a, b);
  else return fmaxf(a, b);
}


// Running (max, sum of exp(x - max)) of part of a row.
template <typename A>
struct MaxSum {
  A m, s;
};
// Factor that moves a sum taken relative to max m to max mm >= m. Equal maxima (including
// both -inf or both +inf) keep the sum as is rather than forming exp(inf - inf).
template <typename A>
__device__ __forceinline__ A rescale(A m, A mm) {
  return m == mm ? A(1) : dexp(m - mm);
}
template <typename A>
__device__ __forceinline__ void push(MaxSum<A>& st, A x) {
  // exp(-inf - m) is 0 for any other max and adds nothing; skipping it also avoids
  // -inf - -inf while the running max is still -inf.
  if (x == -INFINITY) return;
  const A mm = dmax(st.m, x);  // a NaN x keeps the max, then makes the sum NaN below
  st.s = st.s * rescale(st.m, mm) + dexp(x - mm);
  st.m = mm;
}
// Several values at once: one rescale per pack instead of one per element.
template <typename A, int V>
__device__ __forceinline__ void push_pack(MaxSum<A>& st, const A (&v)[V]) {
  A mm = st.m;
#pragma unroll
  for (int k = 0; k < V; ++k) mm = dmax(mm, v[k]);
  A s = st.s * rescale(st.m, mm);
#pragma unroll
  for (int k = 0; k < V; ++k) s += v[k] == -INFINITY ? A(0) : dexp(v[k] - mm);
  st.m = mm;
  st.s = s;
}
template <typename A>
__device__ __forceinline__ MaxSum<A> merge(MaxSum<A> a, MaxSum<A> b) {
  const A mm = dmax(a.m, b.m);
  return {mm, a.s * rescale(a.m, mm) + b.s * rescale(b.m, mm)};
}
template <typename A>
__device__ __forceinline__ MaxSum<A> warp_merge(MaxSum<A> v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum<A> w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, w);
  }
  return v;
}
// Merge over the block; every thread gets the result. Scratch: 32 entries each.
template <typename A>
__device__ __forceinline__ MaxSum<A> block_merge(MaxSum<A> v, A* sm, A* ss) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_merge(v);
  if (lane == 0) {
    sm[warp] = v.m;
    ss[warp] = v.s;
  }
  __syncthreads();
  MaxSum<A> r = lane < nw ? MaxSum<A>{sm[lane], ss[lane]} : MaxSum<A>{A(-INFINITY), A(0)};
  r = warp_merge(r);
  __syncthreads();
  return r;
}


// Final (max, sum) -> what the outputs need, with the CPU's conventions.
template <typename A>
struct RowStats {
  A m, inv, ls;
  bool empty;  // sum is not > 0 (all -inf, or NaN)
};
template <typename A>
__device__ __forceinline__ RowStats<A> finish(MaxSum<A> v) {
  RowStats<A> r;
  r.m = v.m == -INFINITY ? A(0) : v.m;  // an all -inf row: exp(-inf - 0) = 0 everywhere
  r.empty = !(v.s > A(0));
  r.inv = r.empty ? A(0) : A(1) / v.s;
  r.ls = dlog(v.s);
  return r;
}
template <typename A>
__device__ __forceinline__ A softmax_value(A x, const RowStats<A>& r, bool log) {
  // (x - m) - log(sum): the first difference is exact for the large entries.
  if (log) return r.empty ? A(-INFINITY) : (x - r.m) - r.ls;
  return dexp(x - r.m) * r.inv;
}

// ---- forward -------------------------------------------------------------------------------

// Rows of n elements with stride `inner` (1 when V > 1); row r starts at
// (r / inner) * n * inner + r % inner.
template <typename T, int V, bool kWarp>
__global__ void softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n,
                                    int64_t inner, bool log) {
  using A = acc_t<T>;
  __shared__ A sm[32], ss[32];
  int64_t r;
  int t, nt;
  row_slot<kWarp>(r, t, nt);
  if (r >= rows) return;  // only in warp mode (whole warps), so no barrier is skipped
  const int64_t base = (r / inner) * n * inner + r % inner;
  const T* xr = x + base;
  T* yr = y + base;
  MaxSum<A> acc{A(-INFINITY), A(0)};
  for (int64_t j = int64_t(t) * V; j < n; j += int64_t(nt) * V) {
    A v[V];
    load_pack<T, V>(xr + j * inner, v);
    push_pack(acc, v);
  }
  if constexpr (kWarp) acc = warp_merge(acc);
  else acc = block_merge(acc, sm, ss);
  const RowStats<A> rs = finish(acc);
  for (int64_t j = int64_t(t) * V; j < n; j += int64_t(nt) * V) {
    A v[V];
    load_pack<T, V>(xr + j * inner, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = softmax_value(v[k], rs, log);
    store_pack<T, V>(yr + j * inner, v);
  }
}

// One thread per row of n elements with stride inner (> 1).
template <typename T>
__global__ void softmax_lanes_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t lanes, int64_t n,
                                     int64_t inner, bool log) {
  using A = acc_t<T>;
  LATHE_CUDA_GRID_STRIDE(r, lanes) {
    const int64_t base = (r / inner) * n * inner + r % inner;
    const T* xr = x + base;
    T* yr = y + base;
    MaxSum<A> acc{A(-INFINITY), A(0)};
    for (int64_t j = 0; j < n; ++j) push(acc, ld(xr[j * inner]));
    const RowStats<A> rs = finish(acc);
    for (int64_t j = 0; j < n; ++j) yr[j * inner] = st<T>(softmax_value(ld(xr[j * inner]), rs, log));
  }
}

// ---- backward ------------------------------------------------------------------------------
//   softmax:     gx = y * (gy - sum(gy * y))
//   log_softmax: gx = gy - exp(y) * sum(gy)

template <typename T, int V, bool kWarp>
__global__ void softmax_bwd_rows_kernel(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx,
                                        int64_t rows, int64_t n, int64_t inner, bool log) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  int64_t r;
  int t, nt;
  row_slot<kWarp>(r, t, nt);
  if (r >= rows) return;  // warp mode only
  const int64_t base = (r / inner) * n * inner + r % inner;
  const T* yr = y + base;
  const T* gr = gy + base;
  T* orow = gx + base;
  A dot = 0;
  for (int64_t j = int64_t(t) * V; j < n; j += int64_t(nt) * V) {
    A g[V];
    load_pack<T, V>(gr + j * inner, g);
    if (log) {
#pragma unroll
      for (int k = 0; k < V; ++k) dot += g[k];
    } else {
      A yv[V];
      load_pack<T, V>(yr + j * inner, yv);
#pragma unroll
      for (int k = 0; k < V; ++k) dot += g[k] * yv[k];
    }
  }
  if constexpr (kWarp) dot = warp_sum(dot);
  else dot = block_sum(dot, scratch);
  for (int64_t j = int64_t(t) * V; j < n; j += int64_t(nt) * V) {
    A g[V], yv[V], o[V];
    load_pack<T, V>(gr + j * inner, g);
    load_pack<T, V>(yr + j * inner, yv);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = log ? g[k] - dexp(yv[k]) * dot : yv[k] * (g[k] - dot);
    store_pack<T, V>(orow + j * inner, o);
  }
}

template <typename T>
__global__ void softmax_bwd_lanes_kernel(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx,
                                         int64_t lanes, int64_t n, int64_t inner, bool log) {
  using A = acc_t<T>;
  LATHE_CUDA_GRID_STRIDE(r, lanes) {
    const int64_t base = (r / inner) * n * inner + r % inner;
    const T* yr = y + base;
    const T* gr = gy + base;
    T* orow = gx + base;
    A dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += log ? ld(gr[j * inner]) : ld(gr[j * inner]) * ld(yr[j * inner]);
    for (int64_t j = 0; j < n; ++j) {
      const A g = ld(gr[j * inner]), yv = ld(yr[j * inner]);
      orow[j * inner] = st<T>(log ? g - dexp(yv) * dot : yv * (g - dot));
    }
  }
}

// ---- host side -----------------------------------------------------------------------------

struct Lanes {
  int64_t outer = 1, n = 1, inner = 1;
};
Lanes lanes_of(const Shape& s, int64_t axis) {
  Lanes l;
  for (int64_t i = 0; i < axis; ++i) l.outer *= s[i];
  l.n = s.empty() ? 1 : s[axis];
  for (size_t i = static_cast<size_t>(axis) + 1; i < s.size(); ++i) l.inner *= s[i];
  return l;
}


// Row kernels: a warp per row up to 1024 elements, else a block of 128..1024 threads
// sized for about four packs per thread.
struct RowLaunch {
  bool warp;
  unsigned blocks, threads;
};
RowLaunch row_launch(int64_t rows, int64_t n, int V) {
  if (n <= 1024) {
    const int per_block = kThreads / 32;
    return {true, static_cast<unsigned>((rows + per_block - 1) / per_block), static_cast<unsigned>(kThreads)};
  }
  const int64_t want = (n / V + 3) / 4;
  unsigned th = 128;
  while (th < 1024 && th < want) th *= 2;
  return {false, static_cast<unsigned>(rows), th};
}

// Strided rows go to the lane kernel when there are enough of them to fill the GPU (or
// they are short); otherwise to the row kernels with strided loads.
bool use_lanes(const Lanes& l) { return l.inner > 1 && (l.outer * l.inner >= 8192 || l.n <= 64); }

template <typename T>
void softmax_t(const Tensor& x, int64_t axis, bool log, const Tensor& out) {
  const Lanes l = lanes_of(x.shape(), axis);
  const int64_t rows = l.outer * l.inner;
  const T* xp = ptr<T>(x);
  T* yp = ptr<T>(out);
  cudaStream_t s = stream(out.device().index);
  if (use_lanes(l)) {
    softmax_lanes_kernel<T><<<blocks_for(rows), kThreads, 0, s>>>(xp, yp, rows, l.n, l.inner, log);
    LATHE_CUDA_LAUNCH_CHECK("softmax (strided axis)");
    return;
  }
  LATHE_CHECK(rows <= INT32_MAX * 8LL) << "softmax: too many rows (" << rows << ")";
  constexpr int VV = 16 / sizeof(T);
  const bool vec = l.inner == 1 && l.n % VV == 0 && aligned16(xp) && aligned16(yp);
  const RowLaunch rl = row_launch(rows, l.n, vec ? VV : 1);
  if (vec) {
    if (rl.warp) softmax_rows_kernel<T, VV, true><<<rl.blocks, rl.threads, 0, s>>>(xp, yp, rows, l.n, 1, log);
    else softmax_rows_kernel<T, VV, false><<<rl.blocks, rl.threads, 0, s>>>(xp, yp, rows, l.n, 1, log);
  } else {
    if (rl.warp) softmax_rows_kernel<T, 1, true><<<rl.blocks, rl.threads, 0, s>>>(xp, yp, rows, l.n, l.inner, log);
    else softmax_rows_kernel<T, 1, false><<<rl.blocks, rl.threads, 0, s>>>(xp, yp, rows, l.n, l.inner, log);
  }
  LATHE_CUDA_LAUNCH_CHECK((log ? "log_softmax" : "softmax"));
}

template <typename T>
void softmax_backward_t(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) {
  const Lanes l = lanes_of(y.shape(), axis);
  const int64_t rows = l.outer * l.inner;
  const T* yp = ptr<T>(y);
  const T* gp = ptr<T>(gy);
  T* op = ptr<T>(out);
  cudaStream_t s = stream(out.device().index);
  if (use_lanes(l)) {
    softmax_bwd_lanes_kernel<T><<<blocks_for(rows), kThreads, 0, s>>>(yp, gp, op, rows, l.n, l.inner, log);
    LATHE_CUDA_LAUNCH_CHECK("softmax_backward (strided axis)");
    return;
  }
  LATHE_CHECK(rows <= INT32_MAX * 8LL) << "softmax_backward: too many rows (" << rows << ")";
  constexpr int VV = 16 / sizeof(T);
  const bool vec = l.inner == 1 && l.n % VV == 0 && aligned16(yp) && aligned16(gp) && aligned16(op);
  const RowLaunch rl = row_launch(rows, l.n, vec ? VV : 1);
  if (vec) {
    if (rl.warp)
      softmax_bwd_rows_kernel<T, VV, true><<<rl.blocks, rl.threads, 0, s>>>(yp, gp, op, rows, l.n, 1, log);
    else
      softmax_bwd_rows_kernel<T, VV, false><<<rl.blocks, rl.threads, 0, s>>>(yp, gp, op, rows, l.n, 1, log);
  } else {
    if (rl.warp)
      softmax_bwd_rows_kernel<T, 1, true><<<rl.blocks, rl.threads, 0, s>>>(yp, gp, op, rows, l.n, l.inner, log);
    else
      softmax_bwd_rows_kernel<T, 1, false><<<rl.blocks, rl.threads, 0, s>>>(yp, gp, op, rows, l.n, l.inner, log);
  }
  LATHE_CUDA_LAUNCH_CHECK((log ? "log_softmax_backward" : "softmax_backward"));
}

}  // namespace

void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) {
  if (out.numel() == 0) return;
  set_device(out.device().index);
  const Tensor xc = x.contiguous();
  LATHE_CUDA_DISPATCH_FLOAT((log ? "log_softmax" : "softmax"), x.dtype(), T, softmax_t<T>(xc, axis, log, out));
}

void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) {
  if (out.numel() == 0) return;
  set_device(out.device().index);
  const Tensor yc = y.contiguous(), gc = gy.contiguous();
  LATHE_CUDA_DISPATCH_FLOAT((log ? "log_softmax_backward" : "softmax_backward"), y.dtype(), T,
                            softmax_backward_t<T>(yc, gc, axis, log, out));
}

}  // namespace lathe::kernels::cuda
