// Layer norm (Ba et al., 2016) and RMS norm (Zhang & Sennrich, 2019) over the last dim,
// forward and backward, matching kernels/cpu/norm.cpp.
//
// Rows (contiguous, C values each) go one per warp when C <= 1024, else one per block;
// a row is re-read from global memory for each pass (it stays in L1/L2 between them), with
// 16-byte vector loads when C and the pointers allow. As on the CPU, the forward row
// statistics are accumulated in double (two-pass variance: no cancellation for rows with a
// large mean; population variance) and the outputs computed in the compute precision.
//
// Backward: dx is a per-row kernel. dweight/dbias are sums over rows, computed without
// atomics so they are bitwise reproducible: a column kernel sums fixed chunks of rows into
// a [chunks, C] scratch (the chunking depends only on the row count), and a second kernel
// adds the chunks in order.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

// ---- device helpers ----------------------------------------------------------------------


// Sum over the row's group of threads; every thread gets it.
template <bool kWarp, typename S>
__device__ __forceinline__ S group_sum(S v, S* scratch) {
  if constexpr (kWarp) return warp_sum(v);
  else return block_sum(v, scratch);
}

// ---- forward -------------------------------------------------------------------------------

// w and b (compute type, [C]) may be null.
template <typename T, int V, bool kWarp>
__global__ void layer_norm_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ w,
                                  const acc_t<T>* __restrict__ b, T* __restrict__ y, acc_t<T>* __restrict__ mean,
                                  acc_t<T>* __restrict__ rstd, int64_t rows, int64_t C, double eps) {
  using A = acc_t<T>;
  __shared__ double scratch[32];
  int64_t r;
  int t, nt;
  row_slot<kWarp>(r, t, nt);
  if (r >= rows) return;  // only in warp mode (whole warps), so no barrier is skipped
  const T* xr = x + r * C;
  T* yr = y + r * C;
  const int64_t step = int64_t(nt) * V;
  double s = 0;
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A v[V];
    load_pack<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) s += static_cast<double>(v[k]);
  }
  const double mu = group_sum<kWarp>(s, scratch) / static_cast<double>(C);
  double q = 0;
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A v[V];
    load_pack<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const double d = static_cast<double>(v[k]) - mu;
      q += d * d;
    }
  }
  const double var = group_sum<kWarp>(q, scratch) / static_cast<double>(C);
  const double rs = 1.0 / sqrt(var + eps);
  if (t == 0) {
    mean[r] = static_cast<A>(mu);
    rstd[r] = static_cast<A>(rs);
  }
  const A am = static_cast<A>(mu), ar = static_cast<A>(rs);
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A v[V];
    load_pack<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A h = (v[k] - am) * ar;
      if (w) h *= w[j + k];
      if (b) h += b[j + k];
      v[k] = h;
    }
    store_pack<T, V>(yr + j, v);
  }
}

template <typename T, int V, bool kWarp>
__global__ void rms_norm_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ w, T* __restrict__ y,
                                acc_t<T>* __restrict__ rstd, int64_t rows, int64_t C, double eps) {
  using A = acc_t<T>;
  __shared__ double scratch[32];
  int64_t r;
  int t, nt;
  row_slot<kWarp>(r, t, nt);
  if (r >= rows) return;  // warp mode only
  const T* xr = x + r * C;
  T* yr = y + r * C;
  const int64_t step = int64_t(nt) * V;
  double q = 0;
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A v[V];
    load_pack<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const double d = static_cast<double>(v[k]);
      q += d * d;
    }
  }
  const double ms = group_sum<kWarp>(q, scratch) / static_cast<double>(C);
  const A ar = static_cast<A>(1.0 / sqrt(ms + eps));
  if (t == 0) rstd[r] = ar;
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A v[V];
    load_pack<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A h = v[k] * ar;
      if (w) h *= w[j + k];
      v[k] = h;
    }
    store_pack<T, V>(yr + j, v);
  }
}

// ---- backward ------------------------------------------------------------------------------
// With xhat = (x - mean) * rstd (mean = 0 for RMS norm) and g = gy * w:
//   layer norm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMS norm:   dx = rstd * (g - xhat * mean(g * xhat))
//   dw = sum_rows gy * xhat, db = sum_rows gy.

// g = gy * w rounded on its own: if the compiler fused the product into the later
// subtraction (g - mean(g)), a row whose terms cancel exactly (C = 1, or constant rows) would
// keep the product's rounding residual, times rstd (up to 1/sqrt(eps)), where the CPU gives 0.
template <typename A>
__device__ __forceinline__ A mul_rn(A a, A b) {
  if constexpr (std::is_same_v<A, double>) return __dmul_rn(a, b);
  else return __fmul_rn(a, b);
}

template <typename T, int V, bool kWarp, bool kCentered>
__global__ void norm_dx_kernel(const T* __restrict__ gy, const T* __restrict__ x, const acc_t<T>* __restrict__ w,
                               const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                               T* __restrict__ dx, int64_t rows, int64_t C) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  int64_t r;
  int t, nt;
  row_slot<kWarp>(r, t, nt);
  if (r >= rows) return;  // warp mode only
  const T* xr = x + r * C;
  const T* gr = gy + r * C;
  T* dr = dx + r * C;
  const A mu = kCentered ? mean[r] : A(0), rs = rstd[r];
  const int64_t step = int64_t(nt) * V;
  A sg = 0, sgx = 0;
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A xv[V], gv[V];
    load_pack<T, V>(xr + j, xv);
    load_pack<T, V>(gr + j, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A xh = (xv[k] - mu) * rs;
      const A g = w ? mul_rn<A>(gv[k], w[j + k]) : gv[k];
      sg += g;
      sgx += g * xh;
    }
  }
  if constexpr (kCentered) sg = group_sum<kWarp>(sg, scratch);
  sgx = group_sum<kWarp>(sgx, scratch);
  const A a = kCentered ? sg / static_cast<A>(C) : A(0);
  const A bc = sgx / static_cast<A>(C);
  for (int64_t j = int64_t(t) * V; j < C; j += step) {
    A xv[V], gv[V];
    load_pack<T, V>(xr + j, xv);
    load_pack<T, V>(gr + j, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A xh = (xv[k] - mu) * rs;
      const A g = w ? mul_rn<A>(gv[k], w[j + k]) : gv[k];
      xv[k] = rs * (g - a - xh * bc);
    }
    store_pack<T, V>(dr + j, xv);
  }
}

constexpr int kColTile = 32, kRowLanes = 8;

// Block (kColTile, kRowLanes): columns blockIdx.x * 32 + tx, rows of chunk blockIdx.y.
// pw / pb ([chunks, C], compute type) may be null when that gradient is not wanted.
template <typename T, bool kCentered>
__global__ void norm_param_partials_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                           const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                                           acc_t<T>* __restrict__ pw, acc_t<T>* __restrict__ pb, int64_t rows,
                                           int64_t C, int64_t rows_per_chunk) {
  using A = acc_t<T>;
  __shared__ A sw[kRowLanes][kColTile], sb[kRowLanes][kColTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = int64_t(blockIdx.x) * kColTile + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  A aw = 0, ab = 0;
  if (j < C) {
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) {
      const A g = ld(gy[r * C + j]);
      if (pw) {
        const A mu = kCentered ? mean[r] : A(0);
        aw += g * ((ld(x[r * C + j]) - mu) * rstd[r]);
      }
      ab += g;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < C) {
    A tw = 0, tb = 0;
#pragma unroll
    for (int k = 0; k < kRowLanes; ++k) {  // fixed order
      tw += sw[k][tx];
      tb += sb[k][tx];
    }
    if (pw) pw[chunk * C + j] = tw;
    if (pb) pb[chunk * C + j] = tb;
  }
}

// out[j] = sum over chunks of part[chunk, j], in chunk order.
template <typename A>
__global__ void sum_chunks_kernel(const A* __restrict__ part, A* __restrict__ out, int64_t chunks, int64_t C) {
  LATHE_CUDA_GRID_STRIDE(j, C) {
    A s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += part[c * C + j];
    out[j] = s;
  }
}

// ---- host side -----------------------------------------------------------------------------


// A warp per row up to C = 1024, else a block of 128..1024 threads sized for about four
// packs per thread.
struct RowLaunch {
  bool warp;
  unsigned blocks, threads;
};
RowLaunch row_launch(int64_t rows, int64_t C, int V) {
  if (C <= 1024) {
    const int per_block = kThreads / 32;
    return {true, static_cast<unsigned>((rows + per_block - 1) / per_block), static_cast<unsigned>(kThreads)};
  }
  const int64_t want = (C / V + 3) / 4;
  unsigned th = 128;
  while (th < 1024 && th < want) th *= 2;
  return {false, static_cast<unsigned>(rows), th};
}

DType acc_dtype(DType dt) { return dt == DType::f64 ? DType::f64 : DType::f32; }
Tensor as_acc(const Tensor& t, DType acc) { return t.defined() ? t.to(acc).contiguous() : Tensor(); }
template <typename A>
A* ptr_or_null(const Tensor& t) {
  return t.defined() ? ptr<A>(t) : nullptr;
}

// Launches K<V, warp> for the vector width and row mode that fit.
#define LATHE_NORM_LAUNCH(KERNEL, VEC, RL, S, ...)                                        \
  do {                                                                                   \
    if (VEC) {                                                                           \
      if ((RL).warp) KERNEL<T, VV, true><<<(RL).blocks, (RL).threads, 0, S>>>(__VA_ARGS__);  \
      else KERNEL<T, VV, false><<<(RL).blocks, (RL).threads, 0, S>>>(__VA_ARGS__);           \
    } else {                                                                             \
      if ((RL).warp) KERNEL<T, 1, true><<<(RL).blocks, (RL).threads, 0, S>>>(__VA_ARGS__);   \
      else KERNEL<T, 1, false><<<(RL).blocks, (RL).threads, 0, S>>>(__VA_ARGS__);            \
    }                                                                                    \
  } while (0)

template <typename T>
void layer_norm_t(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) {
  using A = acc_t<T>;
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const T* xp = ptr<T>(x);
  T* yp = ptr<T>(out.y);
  constexpr int VV = 16 / sizeof(T);
  const bool vec = C % VV == 0 && aligned16(xp) && aligned16(yp);
  const RowLaunch rl = row_launch(rows, C, vec ? VV : 1);
  cudaStream_t s = stream(out.y.device().index);
  LATHE_NORM_LAUNCH(layer_norm_kernel, vec, rl, s, xp, ptr_or_null<A>(w), ptr_or_null<A>(b), yp, ptr<A>(out.mean),
                    ptr<A>(out.rstd), rows, C, eps);
  LATHE_CUDA_LAUNCH_CHECK("layer_norm");
}

template <typename T>
void rms_norm_t(const Tensor& x, const Tensor& w, double eps, const NormOut& out) {
  using A = acc_t<T>;
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const T* xp = ptr<T>(x);
  T* yp = ptr<T>(out.y);
  constexpr int VV = 16 / sizeof(T);
  const bool vec = C % VV == 0 && aligned16(xp) && aligned16(yp);
  const RowLaunch rl = row_launch(rows, C, vec ? VV : 1);
  cudaStream_t s = stream(out.y.device().index);
  LATHE_NORM_LAUNCH(rms_norm_kernel, vec, rl, s, xp, ptr_or_null<A>(w), yp, ptr<A>(out.rstd), rows, C, eps);
  LATHE_CUDA_LAUNCH_CHECK("rms_norm");
}

template <typename T, bool kCentered>
void norm_backward_t(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                     const Tensor& dx, const Tensor& dw, const Tensor& db) {
  using A = acc_t<T>;
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const T* xp = ptr<T>(x);
  const T* gp = ptr<T>(gy);
  T* dxp = ptr<T>(dx);
  const A* mp = kCentered ? ptr<A>(mean) : nullptr;
  const A* rp = ptr<A>(rstd);
  cudaStream_t s = stream(x.device().index);

  constexpr int VV = 16 / sizeof(T);
  const bool vec = C % VV == 0 && aligned16(xp) && aligned16(gp) && aligned16(dxp);
  const RowLaunch rl = row_launch(rows, C, vec ? VV : 1);
  const A* wp = ptr_or_null<A>(w);
  if (vec) {
    if (rl.warp) norm_dx_kernel<T, VV, true, kCentered><<<rl.blocks, rl.threads, 0, s>>>(gp, xp, wp, mp, rp, dxp, rows, C);
    else norm_dx_kernel<T, VV, false, kCentered><<<rl.blocks, rl.threads, 0, s>>>(gp, xp, wp, mp, rp, dxp, rows, C);
  } else {
    if (rl.warp) norm_dx_kernel<T, 1, true, kCentered><<<rl.blocks, rl.threads, 0, s>>>(gp, xp, wp, mp, rp, dxp, rows, C);
    else norm_dx_kernel<T, 1, false, kCentered><<<rl.blocks, rl.threads, 0, s>>>(gp, xp, wp, mp, rp, dxp, rows, C);
  }
  LATHE_CUDA_LAUNCH_CHECK((kCentered ? "layer_norm_backward (dx)" : "rms_norm_backward (dx)"));

  if (!dw.defined() && !db.defined()) return;
  // Chunks of at least 16 rows, at most 256 chunks: enough blocks to fill the GPU with
  // ceil(C / 32) column tiles, and a chunking that depends only on the row count.
  const int64_t per = std::max<int64_t>(16, (rows + 255) / 256);
  const int64_t chunks = (rows + per - 1) / per;
  const DType acc = acc_dtype(x.dtype());
  Tensor pw = dw.defined() ? Tensor::empty({chunks, C}, acc, x.device()) : Tensor();
  Tensor pb = db.defined() ? Tensor::empty({chunks, C}, acc, x.device()) : Tensor();
  const dim3 grid(static_cast<unsigned>((C + kColTile - 1) / kColTile), static_cast<unsigned>(chunks));
  const dim3 block(kColTile, kRowLanes);
  norm_param_partials_kernel<T, kCentered><<<grid, block, 0, s>>>(gp, xp, mp, rp, ptr_or_null<A>(pw),
                                                                  ptr_or_null<A>(pb), rows, C, per);
  LATHE_CUDA_LAUNCH_CHECK((kCentered ? "layer_norm_backward (param partials)" : "rms_norm_backward (param partials)"));
  if (dw.defined()) {
    sum_chunks_kernel<A><<<blocks_for(C), kThreads, 0, s>>>(ptr<A>(pw), ptr<A>(dw), chunks, C);
    LATHE_CUDA_LAUNCH_CHECK((kCentered ? "layer_norm_backward (dweight)" : "rms_norm_backward (dweight)"));
  }
  if (db.defined()) {
    sum_chunks_kernel<A><<<blocks_for(C), kThreads, 0, s>>>(ptr<A>(pb), ptr<A>(db), chunks, C);
    LATHE_CUDA_LAUNCH_CHECK((kCentered ? "layer_norm_backward (dbias)" : "rms_norm_backward (dbias)"));
  }
}

void norm_backward(bool centered, const char* op, const Tensor& gy, const Tensor& x, const Tensor& w,
                   const Tensor& mean, const Tensor& rstd, const NormGrads& out) {
  set_device(x.device().index);
  if (x.numel() == 0) {  // no rows: the parameter gradients are empty sums
    if (out.dweight.defined()) out.dweight.zero_();
    if (out.dbias.defined()) out.dbias.zero_();
    return;
  }
  const DType acc = acc_dtype(x.dtype());
  const Tensor xc = x.contiguous(), gc = gy.contiguous(), wc = as_acc(w, acc);
  const Tensor mc = centered ? mean.contiguous() : Tensor(), rc = rstd.contiguous();
  const int64_t C = x.size(-1);
  // Parameter gradients are summed in the compute precision, then cast to their dtype.
  auto acc_out = [&](const Tensor& t) {
    if (!t.defined()) return Tensor();
    return t.dtype() == acc && t.is_contiguous() ? t : Tensor::empty({C}, acc, x.device());
  };
  const Tensor dw = acc_out(out.dweight), db = acc_out(out.dbias);
  if (centered) {
    LATHE_CUDA_DISPATCH_FLOAT(op, x.dtype(), T, (norm_backward_t<T, true>(gc, xc, wc, mc, rc, out.dx, dw, db)));
  } else {
    LATHE_CUDA_DISPATCH_FLOAT(op, x.dtype(), T, (norm_backward_t<T, false>(gc, xc, wc, mc, rc, out.dx, dw, db)));
  }
  if (dw.defined() && !dw.is_same(out.dweight)) out.dweight.copy_(dw);
  if (db.defined() && !db.is_same(out.dbias)) out.dbias.copy_(db);
}

}  // namespace

void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) {
  if (x.numel() == 0) return;
  set_device(x.device().index);
  const DType acc = acc_dtype(x.dtype());
  const Tensor xc = x.contiguous(), wc = as_acc(w, acc), bc = as_acc(b, acc);
  LATHE_CUDA_DISPATCH_FLOAT("layer_norm", x.dtype(), T, layer_norm_t<T>(xc, wc, bc, eps, out));
}

void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& rstd, const NormGrads& out) {
  norm_backward(true, "layer_norm_backward", gy, x, w, mean, rstd, out);
}

void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) {
  if (x.numel() == 0) return;
  set_device(x.device().index);
  const Tensor xc = x.contiguous(), wc = as_acc(w, acc_dtype(x.dtype()));
  LATHE_CUDA_DISPATCH_FLOAT("rms_norm", x.dtype(), T, rms_norm_t<T>(xc, wc, eps, out));
}

void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                       const NormGrads& out) {
  norm_backward(false, "rms_norm_backward", gy, x, w, Tensor(), rstd, out);
}

}  // namespace lathe::kernels::cuda
