// Fused softmax cross-entropy on CUDA: the formulas of kernels/cpu/cross_entropy.cpp
// (ignore_index, label smoothing as Szegedy et al., "Rethinking the Inception
// Architecture", 2016, sec. 7), with no host synchronisation anywhere:
//   forward:  one block per row finds the row max and sum of exp in one pass (the online
//             softmax of Milakov & Gimelshein, "Online normalizer calculation for softmax",
//             2018), writes lse and the row's loss; a second one-block kernel sums the row
//             losses and the counted rows in a fixed order (deterministic) into loss/count.
//   backward: reads grad_loss and count from device memory; one block per row writes
//             c * (softmax - eps/V), minus c * (1 - eps) at the target, c = grad / count.
//
// Invalid targets (not ignore_index and outside [0, V)): the CPU throws, which here would
// need a sync; instead that row's loss is NaN (so the mean loss is NaN) and its gradient
// row is NaN.
//
// Non-finite logits follow the CPU: a NaN anywhere in a row, or a max of +-inf, makes that
// row's lse NaN.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

int dev_of(const Tensor& t) { return t.device().index; }

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float log_acc(float v) { return logf(v); }
__device__ __forceinline__ double log_acc(double v) { return log(v); }

// Calls f(j, x[j]) for every j in [0, V) that this thread owns. The row start is only
// element-aligned (V is often odd), so a scalar head runs up to the first 16-byte boundary,
// then 16-byte vector loads, then a scalar tail.
template <typename T, typename F>
__device__ __forceinline__ void row_for_each(const T* __restrict__ x, int64_t V, F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(x);
  int64_t head = static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(T));
  if (head > V) head = V;
  for (int64_t j = tid; j < head; j += nt) f(j, x[j]);
  const int64_t nvec = (V - head) / kVec;
  const uint4* xv = reinterpret_cast<const uint4*>(x + head);
  for (int64_t k = tid; k < nvec; k += nt) {
    const uint4 u = xv[k];
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int q = 0; q < kVec; ++q) f(head + k * kVec + q, e[q]);
  }
  for (int64_t j = head + nvec * kVec + tid; j < V; j += nt) f(j, x[j]);
}

// (m, s) represents sum_j exp(x_j - m). Merging rescales to the larger max; equal maxima
// (including two -inf) scale by exactly 1 so that no exp(-inf - -inf) = NaN appears, while
// a NaN already in s still propagates.
template <typename A>
__device__ __forceinline__ void merge(A& m, A& s, A m2, A s2) {
  const A M = m > m2 ? m : m2;
  const A a = (m == M) ? s : s * exp_acc(m - M);
  const A b = (m2 == M) ? s2 : s2 * exp_acc(m2 - M);
  m = M;
  s = a + b;
}

// Block-wide merge of every thread's (m, s), in a fixed order; all threads get the result.
template <typename A>
__device__ __forceinline__ void block_merge(A& m, A& s, A* sm, A* ss) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < nw ? sm[lane] : A(-INFINITY);
    s = lane < nw ? ss[lane] : A(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) {
      sm[0] = m;
      ss[0] = s;
    }
  }
  __syncthreads();
  m = sm[0];
  s = ss[0];
  __syncthreads();  // sm/ss are reused
}

// One block per row (blocks stride over rows). lse[i] = m + log(s); row_loss[i] as the CPU:
//   nll    = (m - x_t) + log s
//   smooth = log s - sum_j (x_j - m) / V
//   loss_i = (1 - eps) * nll + eps * smooth       (0 for ignored rows, NaN for bad targets)
template <typename T, typename I>
__global__ void __launch_bounds__(1024) ce_forward_kernel(const T* __restrict__ x, const I* __restrict__ tg, int64_t N, int64_t V,
                                  int64_t ignore_index, double eps, acc_t<T>* __restrict__ lse,
                                  double* __restrict__ row_loss) {
  using A = acc_t<T>;
  __shared__ A sm[32], ss[32];
  __shared__ double sd_scratch[32];
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * V;
    A m = A(-INFINITY), s = A(0);
    row_for_each(xr, V, [&](int64_t, T raw) {
      const A v = ld(raw);
      if (v > m) {
        s = s * exp_acc(m - v) + A(1);  // m = -inf at the start: s * 0 + 1
        m = v;
      } else {
        // -inf adds nothing (and would give exp(-inf - -inf) = NaN while m is -inf);
        // NaN fails `v > m` and lands here, making s NaN as on the CPU.
        s += v == A(-INFINITY) ? A(0) : exp_acc(v - m);
      }
    });
    block_merge(m, s, sm, ss);
    // The CPU's sum of exp(x - max) is NaN when the max is +-inf (inf - inf); match it.
    if (isinf(m)) s = A(NAN);
    // Smoothing: sum_j (x_j - m) in double with the final max, as the CPU (second pass over
    // the row, which is still in L2). Skipped without smoothing, as on the CPU.
    double sd = 0.0;
    if (eps != 0.0) {
      double part = 0.0;
      row_for_each(xr, V, [&](int64_t, T raw) { part += static_cast<double>(ld(raw) - m); });
      sd = block_sum(part, sd_scratch);
    }
    if (threadIdx.x == 0) {
      const A log_s = log_acc(s);
      lse[row] = m + log_s;
      const int64_t t = static_cast<int64_t>(tg[row]);
      double loss = 0.0;
      if (t != ignore_index) {
        if (t < 0 || t >= V) {
          loss = NAN;  // the CPU throws; see the file comment
        } else {
          const double nll = static_cast<double>(m - ld(xr[t])) + static_cast<double>(log_s);
          const double smooth = static_cast<double>(log_s) - sd / static_cast<double>(V);
          loss = (1.0 - eps) * nll + eps * smooth;
        }
      }
      row_loss[row] = loss;
    }
  }
}

// One block: loss = mean of the counted rows' losses (0 when none), count = counted rows.
// Each thread sums a fixed set of rows, then a fixed tree: the same result every run.
template <typename A, typename I>
__global__ void __launch_bounds__(1024) ce_reduce_kernel(const double* __restrict__ row_loss, const I* __restrict__ tg, int64_t N,
                                 int64_t ignore_index, A* __restrict__ loss, int64_t* __restrict__ count) {
  __shared__ double dscratch[32];
  __shared__ long long cscratch[32];
  double total = 0.0;
  long long c = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    if (static_cast<int64_t>(tg[i]) == ignore_index) continue;
    total += row_loss[i];
    ++c;
  }
  total = block_sum(total, dscratch);
  c = block_sum(c, cscratch);
  if (threadIdx.x == 0) {
    loss[0] = static_cast<A>(c > 0 ? total / static_cast<double>(c) : 0.0);
    count[0] = static_cast<int64_t>(c);
  }
}

// out row = c * (exp(x - lse) - uni), minus c * hit at the target. kVecOut: x and out have
// the same address modulo 16, so the vector body can store 16 bytes too.
template <typename T, typename I, bool kVecOut>
__global__ void __launch_bounds__(1024) ce_backward_kernel(const T* __restrict__ x, const I* __restrict__ tg, const acc_t<T>* __restrict__ lse,
                                   const acc_t<T>* __restrict__ grad_loss, const int64_t* __restrict__ count,
                                   int64_t N, int64_t V, int64_t ignore_index, acc_t<T> hit, acc_t<T> uni,
                                   T* __restrict__ out) {
  using A = acc_t<T>;
  constexpr int kVec = 16 / sizeof(T);
  const int64_t cnt = *count;
  // As the CPU: grad / count in double, then rounded to the compute type.
  const A c = cnt > 0 ? static_cast<A>(static_cast<double>(*grad_loss) / static_cast<double>(cnt)) : A(0);
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* xr = x + row * V;
    T* orow = out + row * V;
    const int64_t t = static_cast<int64_t>(tg[row]);
    if (t == ignore_index || (c == A(0) && t >= 0 && t < V)) {
      for (int64_t j = tid; j < V; j += nt) orow[j] = st<T>(A(0));
      continue;
    }
    if (t < 0 || t >= V) {  // the CPU throws; see the file comment
      for (int64_t j = tid; j < V; j += nt) orow[j] = st<T>(A(NAN));
      continue;
    }
    const A l = lse[row];
    // (e - uni) - 0 == e - uni exactly, so one expression serves both cases.
    auto g = [&](int64_t j, T raw) { return st<T>(c * (exp_acc(ld(raw) - l) - uni - (j == t ? hit : A(0)))); };
    if constexpr (kVecOut) {
      const uintptr_t addr = reinterpret_cast<uintptr_t>(xr);
      int64_t head = static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(T));
      if (head > V) head = V;
      for (int64_t j = tid; j < head; j += nt) orow[j] = g(j, xr[j]);
      const int64_t nvec = (V - head) / kVec;
      const uint4* xv = reinterpret_cast<const uint4*>(xr + head);
      uint4* ov = reinterpret_cast<uint4*>(orow + head);
      for (int64_t k = tid; k < nvec; k += nt) {
        const uint4 u = xv[k];
        const T* e = reinterpret_cast<const T*>(&u);
        uint4 w;
        T* r = reinterpret_cast<T*>(&w);
#pragma unroll
        for (int q = 0; q < kVec; ++q) r[q] = g(head + k * kVec + q, e[q]);
        ov[k] = w;
      }
      for (int64_t j = head + nvec * kVec + tid; j < V; j += nt) orow[j] = g(j, xr[j]);
    } else {
      row_for_each(xr, V, [&](int64_t j, T raw) { orow[j] = g(j, raw); });
    }
  }
}

unsigned row_threads(int64_t V, int64_t elem_size) {
  // Enough threads that each issues a handful of 16-byte loads; at most 1024.
  const int64_t vec = V * elem_size / 16;
  if (vec >= 4096) return 1024;
  if (vec >= 1024) return 512;
  if (vec >= 256) return 256;
  return 128;
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(rows < 1 ? 1 : (rows > (int64_t(1) << 30) ? (int64_t(1) << 30) : rows));
}

}  // namespace

void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                   const CrossEntropyOut& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const int dev = dev_of(logits);
  set_device(dev);
  cudaStream_t s = stream(dev);
  if (N == 0) {
    LATHE_CUDA_CHECK(cudaMemsetAsync(out.loss.raw_data(), 0, out.loss.nbytes(), s));
    LATHE_CUDA_CHECK(cudaMemsetAsync(out.count.raw_data(), 0, out.count.nbytes(), s));
    return;
  }
  LATHE_CHECK(logits.is_contiguous() && targets.is_contiguous() && out.lse.is_contiguous())
      << "cross_entropy: cuda kernel needs contiguous logits, targets and lse";
  // Per-row losses in double, reduced by the second kernel; freed when this returns (stream
  // order makes that safe with the caching allocator).
  Tensor row_loss = Tensor::empty({N}, DType::f64, logits.device());
  LATHE_CUDA_DISPATCH_FLOAT("cross_entropy", logits.dtype(), T, LATHE_CUDA_DISPATCH_INDEX(
      "cross_entropy", targets.dtype(), I, {
        using A = acc_t<T>;
        ce_forward_kernel<T, I><<<row_blocks(N), row_threads(V, sizeof(T)), 0, s>>>(
            ptr<const T>(logits), ptr<const I>(targets), N, V, ignore_index, smoothing, ptr<A>(out.lse),
            ptr<double>(row_loss));
        LATHE_CUDA_LAUNCH_CHECK("cross_entropy");
        ce_reduce_kernel<A, I><<<1, 1024, 0, s>>>(ptr<const double>(row_loss), ptr<const I>(targets), N, ignore_index,
                                                  ptr<A>(out.loss), ptr<int64_t>(out.count));
        LATHE_CUDA_LAUNCH_CHECK("cross_entropy (mean)");
      }));
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss,
                            const Tensor& count, int64_t ignore_index, double smoothing, const Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  LATHE_CHECK(logits.is_contiguous() && targets.is_contiguous() && lse.is_contiguous() && out.is_contiguous())
      << "cross_entropy_backward: cuda kernel needs contiguous logits, targets, lse and output";
  LATHE_CHECK(count.dtype() == DType::i64 && count.numel() == 1)
      << "cross_entropy_backward: count must be one i64 element";
  LATHE_CHECK(grad_loss.numel() == 1 && grad_loss.dtype() == lse.dtype())
      << "cross_entropy_backward: grad_loss must be one element of lse's dtype";
  const int dev = dev_of(logits);
  set_device(dev);
  cudaStream_t s = stream(dev);
  const bool same_align =
      (reinterpret_cast<uintptr_t>(logits.raw_data()) & 15) == (reinterpret_cast<uintptr_t>(out.raw_data()) & 15);
  LATHE_CUDA_DISPATCH_FLOAT("cross_entropy_backward", logits.dtype(), T, LATHE_CUDA_DISPATCH_INDEX(
      "cross_entropy_backward", targets.dtype(), I, {
        using A = acc_t<T>;
        const A hit = static_cast<A>(1.0 - smoothing), uni = static_cast<A>(smoothing / static_cast<double>(V));
        if (same_align) {
          ce_backward_kernel<T, I, true><<<row_blocks(N), row_threads(V, sizeof(T)), 0, s>>>(
              ptr<const T>(logits), ptr<const I>(targets), ptr<const A>(lse), ptr<const A>(grad_loss),
              ptr<const int64_t>(count), N, V, ignore_index, hit, uni, ptr<T>(out));
        } else {
          ce_backward_kernel<T, I, false><<<row_blocks(N), row_threads(V, sizeof(T)), 0, s>>>(
              ptr<const T>(logits), ptr<const I>(targets), ptr<const A>(lse), ptr<const A>(grad_loss),
              ptr<const int64_t>(count), N, V, ignore_index, hit, uni, ptr<T>(out));
        }
      }));
  LATHE_CUDA_LAUNCH_CHECK("cross_entropy_backward");
}

}  // namespace lathe::kernels::cuda
