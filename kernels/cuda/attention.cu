// Scaled dot-product attention on the GPU, FlashAttention-2 style (Dao, "FlashAttention-2:
// Faster Attention with Better Parallelism and Work Partitioning", 2023): the T x S score
// matrix never reaches global memory. Same contract as kernels/cpu/attention.cpp: q [B,H,T,D],
// k and v [B,Hkv,S,D] (contiguous), head h reads kv head h / (H/Hkv); causal hides key s from
// query t when s > t + (S - T) (queries aligned to the end of the keys); a row that sees no
// key gives out = 0 and lse = -inf. A sliding window (Mistral; causal only) also hides the
// keys s <= t + (S - T) - window: each query sees itself and the window - 1 keys before it.
// Every kernel skips the key tiles (and, for dK/dV, the query tiles) wholly outside the band
// between the window start and the causal limit, and masks inside the tiles it visits.
//
// Forward (Alg. 1 of the paper). One block owns a tile of BQ query rows of one (b, h) and
// walks the key/value tiles (BK rows) up to the causal limit, keeping per row the running
// max m, the running sum l and the unnormalised output in registers (online softmax,
// Milakov & Gimelshein 2018): per tile S = Q K^T, m' = max(m, rowmax S), P = exp(S - m'),
// l = l e^(m-m') + rowsum P, O = O e^(m-m') + P V. At the end O /= l, lse = m + log l.
// Scores are kept in base 2 (scale * log2 e folded in, exp2 is one instruction).
// Global traffic per head: Q, O once, K and V once per query tile: (T/BQ) * S * D * 2.
//
// Backward (Alg. 2). delta_i = rowsum(dO * O) is computed first. Then two deterministic
// passes recompute P = exp(scale q.k - lse) tile by tile (no atomics, no T x S buffer):
//   dK/dV pass: one block per kv tile (b, hk, BKV keys), looping over the H/Hkv query heads
//     of its group and their query tiles; dV += P^T dO, dK += scale dS^T Q stay in
//     registers, dS = P * (dO V^T - delta). Reads Q, dO once per key tile.
//   dQ pass: one block per query tile looping over the key tiles: dQ += scale dS K.
//     Reads K, V once per query tile.
// Every sum runs in a fixed order, so results do not vary from run to run. A row that sees
// exactly one key has P = 1 and dS = 0 exactly (as the CPU gets by cancellation); the kernels
// set them so rather than leave rounding noise in a gradient that is exactly zero.
//
// Kernels, by dtype and head size D:
//  - bf16/f16, D in {64, 128}, 16-byte aligned: tensor cores (mma.sync m16n8k16, f32
//    accumulate; ldmatrix from shared tiles padded by 16 bytes a row, conflict-free). 4 warps,
//    each owning 16 rows of the block's tile (forward: 64 queries x 64-key tiles; dQ: 64
//    queries x 64/32-key tiles for D = 64/128; dK/dV: 64 keys x 64/32-query tiles). The
//    streamed tiles are double-buffered with cp.async, so the next tile's copy overlaps the
//    current tile's math. The first product's accumulators (S, or dS) become the A operand of
//    the second without touching shared memory; P and dS are rounded to the input dtype for
//    it, as in FlashAttention.
//  - f32 (and bf16/f16 with other D up to 256): SIMT FMA tiles in shared memory as f32,
//    register micro-tiles (4 keys x TM rows per thread, float4 shared loads), templated on
//    DMAX in {32, 64, 128, 256} with zero padding up to DMAX.
//  - f64 or D > 256 (or D == 0): one warp per row, a simple slow path.
// LATHE_CUDA_ATTENTION=simt|rowwise forces a slower path (for checking the fast one).
//
// Benchmark convention: forward FLOPs = 4 * B * H * T * S * D (two matmuls), halved when
// causal (T == S); backward = 2.5x forward (five matmuls, one is the recompute of S).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

constexpr int kAttnThreads = 128;  // every kernel here runs 4 warps per block
constexpr double kLog2e = 1.4426950408889634;
constexpr float kLn2 = 0.69314718055994531f;

// Problem sizes shared by all kernels.
struct Dims {
  int B, H, Hkv, T, S, D;
  int G;    // query heads per kv head (H / Hkv)
  int off;  // S - T: query t sees key s iff s <= t + off (causal)
  bool causal;
  int window;  // > 0: query t also needs s > t + off - window (causal only); 0 = none
  __device__ __forceinline__ bool visible(int t, int s) const {
    return s < S && (!causal || (s <= t + off && (window == 0 || s > t + off - window)));
  }
  // Row t sees the keys first(t) <= s < keys(t) (the CPU's Dims::first and Dims::keys).
  __device__ __forceinline__ int keys(int t) const { return causal ? min(max(t + off + 1, 0), S) : S; }
  __device__ __forceinline__ int first(int t) const { return window > 0 ? max(keys(t) - window, 0) : 0; }
  __device__ __forceinline__ int count(int t) const { return keys(t) - first(t); }
  // First key tile (of BK keys, on the grid from 0) that query rows >= t0 can see.
  __device__ __forceinline__ int tile_begin(int t0, int BK) const { return first(t0) / BK * BK; }
  // One past the last query that sees a key below s_end (all T without a window).
  __device__ __forceinline__ int query_end(int s_end) const {
    return window > 0 ? min(max(s_end - 1 - off + window, 0), T) : T;
  }
  // Element offsets of the start of query head bh = b*H + h and of kv head (b, hk).
  __device__ __forceinline__ int64_t q_head(int bh) const { return int64_t(bh) * T * D; }
  __device__ __forceinline__ int64_t kv_head(int bh) const {
    const int b = bh / H, h = bh - b * H;
    return (int64_t(b) * Hkv + h / G) * S * D;
  }
};

template <typename T>
struct FwdArgs {
  Dims d;
  const T* q;
  const T* k;
  const T* v;
  T* o;
  acc_t<T>* lse;
  acc_t<T> scale;
  float sl2;  // scale * log2(e), for the base-2 scores of the f32-accumulating kernels
};

template <typename T>
struct BwdArgs {
  Dims d;
  const T* go;
  const T* q;
  const T* k;
  const T* v;
  const acc_t<T>* lse;
  const acc_t<T>* delta;  // rowsum(dO * O), [B*H*T]
  T* dq;
  T* dk;
  T* dv;
  acc_t<T> scale;
  float sl2;
};

template <typename A>
__device__ __forceinline__ A exp_(A x) {
  if constexpr (std::is_same_v<A, double>) return ::exp(x);
  else return ::expf(x);
}
template <typename A>
__device__ __forceinline__ A log_(A x) {
  if constexpr (std::is_same_v<A, double>) return ::log(x);
  else return ::logf(x);
}

// ============================================================================================
// delta = rowsum(dO * O): one warp per row.
// ============================================================================================
template <typename T>
struct DeltaArgs {
  const T* go;
  const T* o;
  acc_t<T>* delta;
  int64_t rows;
  int D;
};

template <typename T>
__global__ void __launch_bounds__(kAttnThreads) attn_delta_kernel(DeltaArgs<T> a) {
  using A = acc_t<T>;
  const T* __restrict__ go = a.go;
  const T* __restrict__ o = a.o;
  const int64_t rows = a.rows;
  const int D = a.D;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (kAttnThreads / 32);
  for (int64_t r = int64_t(blockIdx.x) * (kAttnThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const T* g = go + r * D;
    const T* x = o + r * D;
    A s = 0;
    for (int c = lane; c < D; c += 32) s += ld(g[c]) * ld(x[c]);
    s = warp_sum(s);
    if (lane == 0) a.delta[r] = s;
  }
}

// ============================================================================================
// Row-wise path (f64, D > 256, D == 0): one warp per row, scores recomputed per chunk of 256
// output columns. Slow but simple; used where the tiled kernels do not apply.
// ============================================================================================
constexpr int kRowChunk = 8;  // output columns per lane per pass (256 per warp)

// Dot product of two D-vectors over the warp; every lane gets the sum.
template <typename T>
__device__ __forceinline__ acc_t<T> warp_dot(const T* a, const T* b, int D, int lane) {
  acc_t<T> s = 0;
  for (int c = lane; c < D; c += 32) s += ld(a[c]) * ld(b[c]);
  return warp_sum(s);
}

template <typename T>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_rowwise(FwdArgs<T> a) {
  using A = acc_t<T>;
  const Dims& d = a.d;
  const int lane = threadIdx.x & 31;
  const int64_t rows = int64_t(d.B) * d.H * d.T;
  const int64_t warps = int64_t(gridDim.x) * (kAttnThreads / 32);
  for (int64_t r = int64_t(blockIdx.x) * (kAttnThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int t = static_cast<int>(r % d.T);
    const int bh = static_cast<int>(r / d.T);
    const T* qr = a.q + r * d.D;
    const T* kb = a.k + d.kv_head(bh);
    const T* vb = a.v + d.kv_head(bh);
    const int n = d.keys(t), s_first = d.first(t);
    // Pass 1: max and sum (online, one key at a time).
    A m = -std::numeric_limits<A>::infinity(), l = 0;
    for (int s = s_first; s < n; ++s) {
      const A x = a.scale * warp_dot(qr, kb + int64_t(s) * d.D, d.D, lane);
      if (x > m) {
        l = l * exp_(m - x) + A(1);
        m = x;
      } else {
        l += exp_(x - m);
      }
    }
    const A lse = n > s_first ? m + log_(l) : -std::numeric_limits<A>::infinity();
    if (lane == 0) a.lse[r] = lse;
    // Pass 2: out = sum_s exp(x_s - lse) v_s, in chunks of 256 columns.
    for (int c0 = 0; c0 < d.D; c0 += 32 * kRowChunk) {
      A acc[kRowChunk];
#pragma unroll
      for (int j = 0; j < kRowChunk; ++j) acc[j] = 0;
      for (int s = s_first; s < n; ++s) {
        const A p = exp_(a.scale * warp_dot(qr, kb + int64_t(s) * d.D, d.D, lane) - lse);
        const T* vr = vb + int64_t(s) * d.D;
#pragma unroll
        for (int j = 0; j < kRowChunk; ++j) {
          const int c = c0 + lane + 32 * j;
          if (c < d.D) acc[j] += p * ld(vr[c]);
        }
      }
#pragma unroll
      for (int j = 0; j < kRowChunk; ++j) {
        const int c = c0 + lane + 32 * j;
        if (c < d.D) a.o[r * d.D + c] = st<T>(acc[j]);
      }
    }
  }
}

// dQ: one warp per query row.
template <typename T>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_dq_rowwise(BwdArgs<T> a) {
  using A = acc_t<T>;
  const Dims& d = a.d;
  const int lane = threadIdx.x & 31;
  const int64_t rows = int64_t(d.B) * d.H * d.T;
  const int64_t warps = int64_t(gridDim.x) * (kAttnThreads / 32);
  for (int64_t r = int64_t(blockIdx.x) * (kAttnThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int t = static_cast<int>(r % d.T);
    const int bh = static_cast<int>(r / d.T);
    const T* qr = a.q + r * d.D;
    const T* gr = a.go + r * d.D;
    const T* kb = a.k + d.kv_head(bh);
    const T* vb = a.v + d.kv_head(bh);
    const int n = d.keys(t), s_first = d.first(t);
    const A lse = n > s_first ? a.lse[r] : A(0);
    const A di = a.delta[r];
    for (int c0 = 0; c0 < d.D; c0 += 32 * kRowChunk) {
      A acc[kRowChunk];
#pragma unroll
      for (int j = 0; j < kRowChunk; ++j) acc[j] = 0;
      for (int s = s_first; s < n; ++s) {
        const T* kr = kb + int64_t(s) * d.D;
        const A p = exp_(a.scale * warp_dot(qr, kr, d.D, lane) - lse);
        const A ds = n - s_first == 1 ? A(0) : p * (warp_dot(gr, vb + int64_t(s) * d.D, d.D, lane) - di);
#pragma unroll
        for (int j = 0; j < kRowChunk; ++j) {
          const int c = c0 + lane + 32 * j;
          if (c < d.D) acc[j] += ds * ld(kr[c]);
        }
      }
#pragma unroll
      for (int j = 0; j < kRowChunk; ++j) {
        const int c = c0 + lane + 32 * j;
        if (c < d.D) a.dq[r * d.D + c] = st<T>(a.scale * acc[j]);
      }
    }
  }
}

// dK, dV: one warp per key row (b, hk, s), summing over the group's query heads.
template <typename T>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_dkv_rowwise(BwdArgs<T> a) {
  using A = acc_t<T>;
  const Dims& d = a.d;
  const int lane = threadIdx.x & 31;
  const int64_t rows = int64_t(d.B) * d.Hkv * d.S;
  const int64_t warps = int64_t(gridDim.x) * (kAttnThreads / 32);
  for (int64_t r = int64_t(blockIdx.x) * (kAttnThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int s = static_cast<int>(r % d.S);
    const int bhk = static_cast<int>(r / d.S);
    const int b = bhk / d.Hkv, hk = bhk - b * d.Hkv;
    const T* kr = a.k + r * d.D;
    const T* vr = a.v + r * d.D;
    // Queries that see key s: t + off >= s (and t + off - window < s with a window).
    const int t_begin = d.causal ? max(s - d.off, 0) : 0, t_end = d.query_end(s + 1);
    for (int c0 = 0; c0 < d.D; c0 += 32 * kRowChunk) {
      A dk[kRowChunk], dv[kRowChunk];
#pragma unroll
      for (int j = 0; j < kRowChunk; ++j) dk[j] = dv[j] = 0;
      for (int gi = 0; gi < d.G; ++gi) {
        const int bh = b * d.H + hk * d.G + gi;
        for (int t = t_begin; t < t_end; ++t) {
          const int64_t qrow = int64_t(bh) * d.T + t;
          const T* qr = a.q + qrow * d.D;
          const T* gr = a.go + qrow * d.D;
          const bool single = d.count(t) == 1;
          const A p = single ? A(1) : exp_(a.scale * warp_dot(qr, kr, d.D, lane) - a.lse[qrow]);
          const A ds = single ? A(0) : p * (warp_dot(gr, vr, d.D, lane) - a.delta[qrow]);
#pragma unroll
          for (int j = 0; j < kRowChunk; ++j) {
            const int c = c0 + lane + 32 * j;
            if (c < d.D) {
              dv[j] += p * ld(gr[c]);
              dk[j] += ds * ld(qr[c]);
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kRowChunk; ++j) {
        const int c = c0 + lane + 32 * j;
        if (c < d.D) {
          a.dk[r * d.D + c] = st<T>(a.scale * dk[j]);
          a.dv[r * d.D + c] = st<T>(dv[j]);
        }
      }
    }
  }
}

// ============================================================================================
// SIMT tiled path: f32 accumulation, tiles in shared memory as f32 with rows padded by 4
// floats (keeps float4 alignment; rows of different threads fall in different banks).
// Threads form 16 row groups x 8 column groups; the 8 lanes of a row group are consecutive,
// so row reductions are 3 xor-shuffles.
// ============================================================================================

// Copies rows [row0, row0 + R) of a row-major [nrows, D] matrix into shared [R][LD] as f32
// times `mul`, with zeros for rows >= nrows and columns in [D, DMAX).
template <int R, int DMAX, int LD, typename T>
__device__ __forceinline__ void load_rows_f32(float* dst, const T* __restrict__ src, int row0, int nrows, int D,
                                              float mul) {
  for (int e = threadIdx.x; e < R * DMAX; e += kAttnThreads) {
    const int r = e / DMAX, c = e - r * DMAX;
    float x = 0.f;
    if (row0 + r < nrows && c < D) x = ld(src[int64_t(row0 + r) * D + c]) * mul;
    dst[r * LD + c] = x;
  }
}

__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
__device__ __forceinline__ void fma4(float4& acc, float s, float4 v) {
  acc.x += s * v.x;
  acc.y += s * v.y;
  acc.z += s * v.z;
  acc.w += s * v.w;
}
__device__ __forceinline__ float f4_get(const float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
__device__ __forceinline__ float group8_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
}
__device__ __forceinline__ float group8_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x + __shfl_xor_sync(0xffffffffu, x, 4);
}

template <int DMAX, int TM>
struct SimtFwdCfg {
  static constexpr int BQ = 16 * TM;  // query rows per block (TM per thread)
  static constexpr int BK = 32;       // keys per tile (4 per thread: cg + 8j)
  static constexpr int NC = DMAX / 32;  // float4 output columns per thread: cg*4 + 32*jj
  static constexpr int LQ = DMAX + 4, LP = BK + 4;
  static constexpr size_t smem = sizeof(float) * (size_t(BQ) * LQ + 2 * size_t(BK) * LQ + size_t(BQ) * LP);
};

template <typename T, int DMAX, int TM>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_simt(FwdArgs<T> a) {
  using C = SimtFwdCfg<DMAX, TM>;
  constexpr int BQ = C::BQ, BK = C::BK, NC = C::NC, LQ = C::LQ, LP = C::LP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);  // [BQ][LQ], pre-scaled by scale*log2(e)
  float* Ks = Qs + BQ * LQ;                        // [BK][LQ]
  float* Vs = Ks + BK * LQ;                        // [BK][LQ]
  float* Ps = Vs + BK * LQ;                        // [BQ][LP]
  const Dims& d = a.d;
  const int BH = d.B * d.H, ntq = (d.T + BQ - 1) / BQ;
  // Later query tiles (more keys under causal) are scheduled first.
  const int bh = static_cast<int>(blockIdx.x % BH);
  const int t0 = (ntq - 1 - static_cast<int>(blockIdx.x / BH)) * BQ;
  const T* qb = a.q + d.q_head(bh);
  const T* kb = a.k + d.kv_head(bh);
  const T* vb = a.v + d.kv_head(bh);
  const int tid = threadIdx.x, rg = tid >> 3, cg = tid & 7;

  load_rows_f32<BQ, DMAX, LQ>(Qs, qb, t0, d.T, d.D, a.sl2);

  float m[TM], l[TM];
  float4 o[TM][NC];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) o[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const int kend = d.causal ? min(max(t0 + BQ + d.off, 0), d.S) : d.S;
  for (int k0 = d.tile_begin(t0, BK); k0 < kend; k0 += BK) {
    __syncthreads();  // the previous tile's readers of Ks/Vs/Ps are done
    load_rows_f32<BK, DMAX, LQ>(Ks, kb, k0, d.S, d.D, 1.f);
    load_rows_f32<BK, DMAX, LQ>(Vs, vb, k0, d.S, d.D, 1.f);
    __syncthreads();
    float sc[TM][4];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sc[i][j] = 0.f;
#pragma unroll 2
    for (int c = 0; c < DMAX; c += 4) {
      float4 qv[TM], kv[4];
#pragma unroll
      for (int i = 0; i < TM; ++i) qv[i] = *reinterpret_cast<const float4*>(Qs + (rg * TM + i) * LQ + c);
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = *reinterpret_cast<const float4*>(Ks + (cg + 8 * j) * LQ + c);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) sc[i][j] += dot4(qv[i], kv[j]);
    }
    // Online softmax per row (Milakov & Gimelshein 2018). A row with nothing visible yet
    // keeps m = -inf; its exponents use 0 instead so no -inf - -inf appears.
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int t = t0 + rg * TM + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (!d.visible(t, k0 + cg + 8 * j)) sc[i][j] = -INFINITY;
        mx = fmaxf(mx, sc[i][j]);
      }
      const float mnew = fmaxf(m[i], group8_max(mx));
      const float mu = mnew == -INFINITY ? 0.f : mnew;
      const float alpha = exp2f(m[i] - mu);
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p = exp2f(sc[i][j] - mu);
        Ps[(rg * TM + i) * LP + cg + 8 * j] = p;
        rs += p;
      }
      l[i] = l[i] * alpha + group8_sum(rs);
      m[i] = mnew;
#pragma unroll
      for (int jj = 0; jj < NC; ++jj) {
        o[i][jj].x *= alpha;
        o[i][jj].y *= alpha;
        o[i][jj].z *= alpha;
        o[i][jj].w *= alpha;
      }
    }
    __syncthreads();
    // O += P V
#pragma unroll 2
    for (int c = 0; c < BK; c += 4) {
      float4 pv[TM];
#pragma unroll
      for (int i = 0; i < TM; ++i) pv[i] = *reinterpret_cast<const float4*>(Ps + (rg * TM + i) * LP + c);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int jj = 0; jj < NC; ++jj) {
          const float4 vv = *reinterpret_cast<const float4*>(Vs + (c + u) * LQ + cg * 4 + 32 * jj);
#pragma unroll
          for (int i = 0; i < TM; ++i) fma4(o[i][jj], f4_get(pv[i], u), vv);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = t0 + rg * TM + i;
    if (t >= d.T) continue;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    T* orow = a.o + d.q_head(bh) + int64_t(t) * d.D;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int c = cg * 4 + 32 * jj + u;
        if (c < d.D) orow[c] = st<T>(f4_get(o[i][jj], u) * inv);
      }
    }
    if (cg == 0) a.lse[int64_t(bh) * d.T + t] = l[i] > 0.f ? (m[i] + log2f(l[i])) * kLn2 : -INFINITY;
  }
}

template <int DMAX, int TM>
struct SimtDqCfg {
  static constexpr int BQ = 16 * TM, BK = 32, NC = DMAX / 32, LQ = DMAX + 4, LP = BK + 4;
  static constexpr size_t smem = sizeof(float) * (2 * size_t(BQ) * LQ + 2 * size_t(BK) * LQ + size_t(BQ) * LP);
};

// dQ pass: thread layout as in the forward (rows rg*TM + i, keys cg + 8j, columns cg*4 + 32jj).
template <typename T, int DMAX, int TM>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_dq_simt(BwdArgs<T> a) {
  using C = SimtDqCfg<DMAX, TM>;
  constexpr int BQ = C::BQ, BK = C::BK, NC = C::NC, LQ = C::LQ, LP = C::LP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);  // [BQ][LQ] times scale*log2(e)
  float* Gs = Qs + BQ * LQ;                        // dO [BQ][LQ]
  float* Ks = Gs + BQ * LQ;                        // [BK][LQ]
  float* Vs = Ks + BK * LQ;                        // [BK][LQ]
  float* Ss = Vs + BK * LQ;                        // dS [BQ][LP]
  const Dims& d = a.d;
  const int BH = d.B * d.H, ntq = (d.T + BQ - 1) / BQ;
  const int bh = static_cast<int>(blockIdx.x % BH);
  const int t0 = (ntq - 1 - static_cast<int>(blockIdx.x / BH)) * BQ;
  const T* kb = a.k + d.kv_head(bh);
  const T* vb = a.v + d.kv_head(bh);
  const int tid = threadIdx.x, rg = tid >> 3, cg = tid & 7;

  load_rows_f32<BQ, DMAX, LQ>(Qs, a.q + d.q_head(bh), t0, d.T, d.D, a.sl2);
  load_rows_f32<BQ, DMAX, LQ>(Gs, a.go + d.q_head(bh), t0, d.T, d.D, 1.f);
  float lse2[TM], di[TM];
  bool single[TM];
  float4 acc[TM][NC];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = t0 + rg * TM + i;
    const int64_t row = int64_t(bh) * d.T + t;
    // Rows with no visible key (lse = -inf) or past T never use these.
    lse2[i] = t < d.T && d.count(t) > 0 ? a.lse[row] * float(kLog2e) : 0.f;
    di[i] = t < d.T ? a.delta[row] : 0.f;
    single[i] = d.count(t) == 1;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) acc[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const int kend = d.causal ? min(max(t0 + BQ + d.off, 0), d.S) : d.S;
  for (int k0 = d.tile_begin(t0, BK); k0 < kend; k0 += BK) {
    __syncthreads();
    load_rows_f32<BK, DMAX, LQ>(Ks, kb, k0, d.S, d.D, 1.f);
    load_rows_f32<BK, DMAX, LQ>(Vs, vb, k0, d.S, d.D, 1.f);
    __syncthreads();
    float sc[TM][4], dp[TM][4];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sc[i][j] = dp[i][j] = 0.f;
#pragma unroll 2
    for (int c = 0; c < DMAX; c += 4) {
      float4 qv[TM], gv[TM], kv[4], vv[4];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        qv[i] = *reinterpret_cast<const float4*>(Qs + (rg * TM + i) * LQ + c);
        gv[i] = *reinterpret_cast<const float4*>(Gs + (rg * TM + i) * LQ + c);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        kv[j] = *reinterpret_cast<const float4*>(Ks + (cg + 8 * j) * LQ + c);
        vv[j] = *reinterpret_cast<const float4*>(Vs + (cg + 8 * j) * LQ + c);
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          sc[i][j] += dot4(qv[i], kv[j]);
          dp[i][j] += dot4(gv[i], vv[j]);
        }
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int t = t0 + rg * TM + i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = t < d.T && d.visible(t, k0 + cg + 8 * j);
        const float p = ok ? exp2f(sc[i][j] - lse2[i]) : 0.f;
        Ss[(rg * TM + i) * LP + cg + 8 * j] = single[i] ? 0.f : p * (dp[i][j] - di[i]);
      }
    }
    __syncthreads();
    // dQ += dS K
#pragma unroll 2
    for (int c = 0; c < BK; c += 4) {
      float4 sv[TM];
#pragma unroll
      for (int i = 0; i < TM; ++i) sv[i] = *reinterpret_cast<const float4*>(Ss + (rg * TM + i) * LP + c);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int jj = 0; jj < NC; ++jj) {
          const float4 kv = *reinterpret_cast<const float4*>(Ks + (c + u) * LQ + cg * 4 + 32 * jj);
#pragma unroll
          for (int i = 0; i < TM; ++i) fma4(acc[i][jj], f4_get(sv[i], u), kv);
        }
      }
    }
  }
  const float scale = a.scale;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int t = t0 + rg * TM + i;
    if (t >= d.T) continue;
    T* row = a.dq + d.q_head(bh) + int64_t(t) * d.D;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int c = cg * 4 + 32 * jj + u;
        if (c < d.D) row[c] = st<T>(scale * f4_get(acc[i][jj], u));
      }
  }
}

template <int DMAX, int TM>
struct SimtDkvCfg {
  static constexpr int BKV = 16 * TM;  // keys per block (TM per thread: kg*TM + i)
  static constexpr int BQ = 32;        // queries per tile (4 per thread: qg + 8j)
  static constexpr int NC = DMAX / 32, LQ = DMAX + 4, LP = BQ + 4;
  static constexpr size_t smem =
      sizeof(float) * (2 * size_t(BKV) * LQ + 2 * size_t(BQ) * LQ + 2 * size_t(BKV) * LP + 2 * size_t(BQ));
};

// dK/dV pass: threads form 16 key groups x 8 query groups.
template <typename T, int DMAX, int TM>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_dkv_simt(BwdArgs<T> a) {
  using C = SimtDkvCfg<DMAX, TM>;
  constexpr int BKV = C::BKV, BQ = C::BQ, NC = C::NC, LQ = C::LQ, LP = C::LP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Ks = reinterpret_cast<float*>(smem_raw);  // [BKV][LQ] times scale*log2(e)
  float* Vs = Ks + BKV * LQ;                       // [BKV][LQ]
  float* Qs = Vs + BKV * LQ;                       // [BQ][LQ]
  float* Gs = Qs + BQ * LQ;                        // dO [BQ][LQ]
  float* Ps = Gs + BQ * LQ;                        // [BKV][LP]
  float* Ss = Ps + BKV * LP;                       // dS [BKV][LP]
  float* lse2 = Ss + BKV * LP;                     // [BQ]
  float* dls = lse2 + BQ;                          // delta [BQ]
  const Dims& d = a.d;
  const int BHk = d.B * d.Hkv;
  const int bhk = static_cast<int>(blockIdx.x % BHk);
  // Early key tiles (seen by more queries under causal) are scheduled first.
  const int k0 = static_cast<int>(blockIdx.x / BHk) * BKV;
  const int b = bhk / d.Hkv, hk = bhk - b * d.Hkv;
  const int64_t kvh = int64_t(bhk) * d.S * d.D;
  const int tid = threadIdx.x, kg = tid >> 3, qg = tid & 7;

  load_rows_f32<BKV, DMAX, LQ>(Ks, a.k + kvh, k0, d.S, d.D, a.sl2);
  load_rows_f32<BKV, DMAX, LQ>(Vs, a.v + kvh, k0, d.S, d.D, 1.f);
  float4 dk[TM][NC], dv[TM][NC];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) dk[i][jj] = dv[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
  const int q_begin = d.causal ? max(k0 - d.off, 0) : 0;  // first query that sees key k0
  const int q_end = d.query_end(min(k0 + BKV, d.S));     // past the last that sees one of the tile
  for (int gi = 0; gi < d.G; ++gi) {
    const int bh = b * d.H + hk * d.G + gi;
    for (int q0 = q_begin / BQ * BQ; q0 < q_end; q0 += BQ) {
      __syncthreads();
      load_rows_f32<BQ, DMAX, LQ>(Qs, a.q + d.q_head(bh), q0, d.T, d.D, 1.f);
      load_rows_f32<BQ, DMAX, LQ>(Gs, a.go + d.q_head(bh), q0, d.T, d.D, 1.f);
      for (int i = tid; i < BQ; i += kAttnThreads) {
        const int t = q0 + i;
        const int64_t row = int64_t(bh) * d.T + t;
        lse2[i] = t < d.T && d.count(t) > 0 ? a.lse[row] * float(kLog2e) : 0.f;
        dls[i] = t < d.T ? a.delta[row] : 0.f;
      }
      __syncthreads();
      float sc[TM][4], dp[TM][4];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) sc[i][j] = dp[i][j] = 0.f;
#pragma unroll 2
      for (int c = 0; c < DMAX; c += 4) {
        float4 kv[TM], vv[TM], qv[4], gv[4];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          kv[i] = *reinterpret_cast<const float4*>(Ks + (kg * TM + i) * LQ + c);
          vv[i] = *reinterpret_cast<const float4*>(Vs + (kg * TM + i) * LQ + c);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          qv[j] = *reinterpret_cast<const float4*>(Qs + (qg + 8 * j) * LQ + c);
          gv[j] = *reinterpret_cast<const float4*>(Gs + (qg + 8 * j) * LQ + c);
        }
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            sc[i][j] += dot4(kv[i], qv[j]);
            dp[i][j] += dot4(vv[i], gv[j]);
          }
      }
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int s = k0 + kg * TM + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int qi = qg + 8 * j, t = q0 + qi;
          const bool ok = t < d.T && d.visible(t, s);
          const bool single = d.count(t) == 1;
          const float p = ok ? (single ? 1.f : exp2f(sc[i][j] - lse2[qi])) : 0.f;
          Ps[(kg * TM + i) * LP + qi] = p;
          Ss[(kg * TM + i) * LP + qi] = single ? 0.f : p * (dp[i][j] - dls[qi]);
        }
      }
      __syncthreads();
      // dV += P dO, dK += dS Q (scaled at the end)
#pragma unroll 2
      for (int qi = 0; qi < BQ; qi += 4) {
        float4 pv[TM], sv[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          pv[i] = *reinterpret_cast<const float4*>(Ps + (kg * TM + i) * LP + qi);
          sv[i] = *reinterpret_cast<const float4*>(Ss + (kg * TM + i) * LP + qi);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
#pragma unroll
          for (int jj = 0; jj < NC; ++jj) {
            const float4 gv = *reinterpret_cast<const float4*>(Gs + (qi + u) * LQ + qg * 4 + 32 * jj);
            const float4 qv = *reinterpret_cast<const float4*>(Qs + (qi + u) * LQ + qg * 4 + 32 * jj);
#pragma unroll
            for (int i = 0; i < TM; ++i) {
              fma4(dv[i][jj], f4_get(pv[i], u), gv);
              fma4(dk[i][jj], f4_get(sv[i], u), qv);
            }
          }
        }
      }
    }
  }
  const float scale = a.scale;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int s = k0 + kg * TM + i;
    if (s >= d.S) continue;
    T* dkr = a.dk + kvh + int64_t(s) * d.D;
    T* dvr = a.dv + kvh + int64_t(s) * d.D;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int c = qg * 4 + 32 * jj + u;
        if (c < d.D) {
          dkr[c] = st<T>(scale * f4_get(dk[i][jj], u));
          dvr[c] = st<T>(f4_get(dv[i][jj], u));
        }
      }
  }
}

// ============================================================================================
// Tensor-core path (bf16/f16, D in {64, 128}). mma.sync m16n8k16 fragments (PTX ISA,
// "Matrix fragments for mma.m16n8k16"), g = lane / 4, c = lane % 4:
//   A 16x16: a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B 16x8:  b0 = (k 2c..2c+1, n g), b1 = (k 2c+8.., n g)
//   C 16x8:  c0,c1 = (g, 2c..2c+1), c2,c3 = (g+8, 2c..2c+1)
// so the C fragments of two adjacent n-tiles are the A fragment of one 16-wide k-step, which
// lets P and dS go from one product into the next without shared memory. Shared tiles are
// row-major with rows padded by 8 elements (16 bytes), so the 8 row addresses of an
// ldmatrix hit distinct banks.
// ============================================================================================

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix i / 8.
template <bool kTrans>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t addr = smem_u32(p);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  (void)addr, (void)r;
  __trap();  // unreachable: the host takes the tensor-core path on sm_80+ only
#else
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
  }
#endif
}

// c += a * b (16x8x16, f32 accumulate).
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  (void)c, (void)a, (void)b0, (void)b1;
  __trap();
#else
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// Two floats rounded to T, `lo` in the low half (the lower-indexed element of a fragment).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (std::is_same_v<T, bf16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &v, 4);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&u, &v, 4);
  }
  return u;
}

// The A fragment of one 16-wide k-step from the C fragments of its two n-tiles.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack2<T>(lo[0], lo[1]);
  a[1] = pack2<T>(lo[2], lo[3]);
  a[2] = pack2<T>(hi[0], hi[1]);
  a[3] = pack2<T>(hi[2], hi[3]);
}

// Lane addresses for ldmatrix x4 (element offsets into a row-major tile with row stride LD):
//  A fragment (16 rows m0.., k-step k0) of an [m][k] tile, and B fragments of two n-tiles
//  (n0, n0+8) from a [k][n] tile with .trans: row = base + lane%8 + (lane/8 % 2)*8,
//  col = base + lane/16*8. Registers: {a0..a3}, or {b0,b1 of n0, b0,b1 of n0+8}.
__device__ __forceinline__ int frag_a_off(int lane, int m0, int k0, int LD) {
  return (m0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + k0 + (lane >> 4) * 8;
}
//  B fragments of two n-tiles (n0, n0+8) at k-step k0 from an [n][k] tile (no .trans):
//  row = n0 + lane%8 + lane/16*8, col = k0 + (lane/8 % 2)*8. Registers {b0,b1 of n0,
//  b0,b1 of n0+8}.
__device__ __forceinline__ int frag_bnk_off(int lane, int n0, int k0, int LD) {
  return (n0 + (lane & 7) + (lane >> 4) * 8) * LD + k0 + ((lane >> 3) & 1) * 8;
}

// Copies rows [row0, row0 + R) of a row-major [nrows, D] matrix (16-byte aligned rows) into
// shared [R][LD], zero rows past nrows.
template <int R, int D, int LD, typename T>
__device__ __forceinline__ void load_rows_16b(T* dst, const T* __restrict__ src, int row0, int nrows) {
  constexpr int CPR = D * int(sizeof(T)) / 16;  // 16-byte chunks per row
  constexpr int EPC = 16 / int(sizeof(T));      // elements per chunk
  for (int e = threadIdx.x; e < R * CPR; e += kAttnThreads) {
    const int r = e / CPR, c = (e - r * CPR) * EPC;
    uint4 x = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r < nrows) x = *reinterpret_cast<const uint4*>(src + int64_t(row0 + r) * D + c);
    *reinterpret_cast<uint4*>(dst + r * LD + c) = x;
  }
}

// Asynchronous 16- and 4-byte copies global -> shared (sm_80+). With pred false nothing is
// read and the destination is zero-filled (src-size 0); src must still be a valid address.
// (Built for sm_80+; older targets get stubs, never called, see choose_path.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
__device__ __forceinline__ void cp_async16(void*, const void*, bool) { __trap(); }
__device__ __forceinline__ void cp_async4(void*, const void*, bool) { __trap(); }
__device__ __forceinline__ void cp_async_commit() {}
template <int N>
__device__ __forceinline__ void cp_async_wait() {}
#else
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(pred ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// load_rows_16b with cp.async: issues the copies, the caller commits and waits.
template <int R, int D, int LD, typename T>
__device__ __forceinline__ void cp_rows_16b(T* dst, const T* __restrict__ src, int row0, int nrows) {
  constexpr int CPR = D * int(sizeof(T)) / 16;
  constexpr int EPC = 16 / int(sizeof(T));
  for (int e = threadIdx.x; e < R * CPR; e += kAttnThreads) {
    const int r = e / CPR, c = (e - r * CPR) * EPC;
    const bool ok = row0 + r < nrows;
    cp_async16(dst + r * LD + c, ok ? src + int64_t(row0 + r) * D + c : src, ok);
  }
}

template <int D>
struct MmaFwdCfg {
  static constexpr int BQ = 64, BK = 64, LD = D + 8;
  // Two stages of K and V tiles (Q is staged through stage 0; its fragments then live in
  // registers).
  template <typename T>
  static constexpr size_t smem() { return sizeof(T) * 4 * size_t(BK) * LD; }
};

template <typename T, int D>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_mma(FwdArgs<T> a) {
  constexpr int BQ = MmaFwdCfg<D>::BQ, BK = MmaFwdCfg<D>::BK, LD = MmaFwdCfg<D>::LD;
  constexpr int KD = D / 16, NK = BK / 8, ND = D / 8;
  static_assert(BQ <= 2 * BK, "Q is staged in stage 0");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Stage i: K at buf + 2i*BK*LD, V at buf + (2i+1)*BK*LD, each [BK][LD].
  T* buf = reinterpret_cast<T*>(smem_raw);
  const Dims& d = a.d;
  const int BH = d.B * d.H, ntq = (d.T + BQ - 1) / BQ;
  const int bh = static_cast<int>(blockIdx.x % BH);
  const int t0 = (ntq - 1 - static_cast<int>(blockIdx.x / BH)) * BQ;
  const T* kb = a.k + d.kv_head(bh);
  const T* vb = a.v + d.kv_head(bh);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tc = lane & 3;

  load_rows_16b<BQ, D, LD>(buf, a.q + d.q_head(bh), t0, d.T);
  __syncthreads();
  uint32_t qf[KD][4];
#pragma unroll
  for (int ks = 0; ks < KD; ++ks) ldsm_x4<false>(qf[ks], buf + frag_a_off(lane, warp * 16, ks * 16, LD));
  __syncthreads();  // stage 0 is overwritten next

  const int r0 = t0 + warp * 16 + g, r1 = r0 + 8;  // this thread's two rows
  float o[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // l: this thread's partial sums
  const float sl2 = a.sl2;
  const int kend = d.causal ? min(max(t0 + BQ + d.off, 0), d.S) : d.S;
  const int kbeg = d.tile_begin(t0, BK);  // tiles before the first row's window are skipped
  const int ntiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
  // Double buffering: tile it+1 is copied (cp.async) while tile it is computed.
  if (ntiles > 0) {
    cp_rows_16b<BK, D, LD>(buf, kb, kbeg, d.S);
    cp_rows_16b<BK, D, LD>(buf + BK * LD, vb, kbeg, d.S);
  }
  cp_async_commit();
  for (int it = 0; it < ntiles; ++it) {
    const int k0 = kbeg + it * BK;
    if (it + 1 < ntiles) {
      T* nxt = buf + ((it + 1) & 1) * 2 * BK * LD;
      cp_rows_16b<BK, D, LD>(nxt, kb, k0 + BK, d.S);
      cp_rows_16b<BK, D, LD>(nxt + BK * LD, vb, k0 + BK, d.S);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of tile it have landed
    __syncthreads();     // and everyone's
    const T* Ks = buf + (it & 1) * 2 * BK * LD;
    const T* Vs = Ks + BK * LD;
    float s[NK][4];
#pragma unroll
    for (int n = 0; n < NK; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KD; ++ks) {
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t bf[4];
        ldsm_x4<false>(bf, Ks + frag_bnk_off(lane, np * 16, ks * 16, LD));
        mma16816<T>(s[2 * np], qf[ks], bf[0], bf[1]);
        mma16816<T>(s[2 * np + 1], qf[ks], bf[2], bf[3]);
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < NK; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + n * 8 + tc * 2 + (e & 1);
        const float x = d.visible(e < 2 ? r0 : r1, key) ? s[n][e] * sl2 : -INFINITY;
        s[n][e] = x;
        if (e < 2) mx0 = fmaxf(mx0, x);
        else mx1 = fmaxf(mx1, x);
      }
    }
    // The 4 lanes of a quad hold the same two rows.
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float mu0 = mn0 == -INFINITY ? 0.f : mn0, mu1 = mn1 == -INFINITY ? 0.f : mn1;
    const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1);
    m0 = mn0;
    m1 = mn1;
    float ls0 = 0.f, ls1 = 0.f;
#pragma unroll
    for (int n = 0; n < NK; ++n) {
      s[n][0] = exp2f(s[n][0] - mu0);
      s[n][1] = exp2f(s[n][1] - mu0);
      s[n][2] = exp2f(s[n][2] - mu1);
      s[n][3] = exp2f(s[n][3] - mu1);
      ls0 += s[n][0] + s[n][1];
      ls1 += s[n][2] + s[n][3];
    }
    l0 = l0 * al0 + ls0;
    l1 = l1 * al1 + ls1;
#pragma unroll
    for (int n = 0; n < ND; ++n) {
      o[n][0] *= al0;
      o[n][1] *= al0;
      o[n][2] *= al1;
      o[n][3] *= al1;
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[4];
      acc_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bf[4];
        ldsm_x4<true>(bf, Vs + frag_a_off(lane, kk * 16, np * 16, LD));
        mma16816<T>(o[2 * np], pa, bf[0], bf[1]);
        mma16816<T>(o[2 * np + 1], pa, bf[2], bf[3]);
      }
    }
    __syncthreads();  // stage it & 1 is refilled in the next iteration
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* ob = a.o + d.q_head(bh);
  if (r0 < d.T) {
#pragma unroll
    for (int n = 0; n < ND; ++n)
      *reinterpret_cast<uint32_t*>(ob + int64_t(r0) * D + n * 8 + tc * 2) = pack2<T>(o[n][0] * inv0, o[n][1] * inv0);
    if (tc == 0) a.lse[int64_t(bh) * d.T + r0] = l0 > 0.f ? (m0 + log2f(l0)) * kLn2 : -INFINITY;
  }
  if (r1 < d.T) {
#pragma unroll
    for (int n = 0; n < ND; ++n)
      *reinterpret_cast<uint32_t*>(ob + int64_t(r1) * D + n * 8 + tc * 2) = pack2<T>(o[n][2] * inv1, o[n][3] * inv1);
    if (tc == 0) a.lse[int64_t(bh) * d.T + r1] = l1 > 0.f ? (m1 + log2f(l1)) * kLn2 : -INFINITY;
  }
}

template <int D>
struct MmaDqCfg {
  static constexpr int BQ = 64, BK = D <= 64 ? 64 : 32, LD = D + 8;
  // Two stages of K and V tiles; Q and dO are staged through the same memory first (their
  // fragments then live in registers).
  template <typename T>
  static constexpr size_t smem() { return sizeof(T) * size_t(std::max(2 * BQ, 4 * BK)) * LD; }
};

// dQ pass on tensor cores: 4 warps x 16 query rows, loop over key tiles.
template <typename T, int D>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_dq_mma(BwdArgs<T> a) {
  constexpr int BQ = MmaDqCfg<D>::BQ, BK = MmaDqCfg<D>::BK, LD = MmaDqCfg<D>::LD;
  constexpr int KD = D / 16, NK = BK / 8, ND = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // First Q, dO [BQ][LD] each; then stage i: K at buf + 2i*BK*LD, V at buf + (2i+1)*BK*LD.
  T* buf = reinterpret_cast<T*>(smem_raw);
  T* Qs = buf;
  T* Gs = buf + BQ * LD;
  const Dims& d = a.d;
  const int BH = d.B * d.H, ntq = (d.T + BQ - 1) / BQ;
  const int bh = static_cast<int>(blockIdx.x % BH);
  const int t0 = (ntq - 1 - static_cast<int>(blockIdx.x / BH)) * BQ;
  const T* kb = a.k + d.kv_head(bh);
  const T* vb = a.v + d.kv_head(bh);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tc = lane & 3;

  load_rows_16b<BQ, D, LD>(Qs, a.q + d.q_head(bh), t0, d.T);
  load_rows_16b<BQ, D, LD>(Gs, a.go + d.q_head(bh), t0, d.T);
  __syncthreads();
  uint32_t qf[KD][4], gf[KD][4];
#pragma unroll
  for (int ks = 0; ks < KD; ++ks) {
    ldsm_x4<false>(qf[ks], Qs + frag_a_off(lane, warp * 16, ks * 16, LD));
    ldsm_x4<false>(gf[ks], Gs + frag_a_off(lane, warp * 16, ks * 16, LD));
  }
  __syncthreads();  // the staging memory is overwritten next
  const int r0 = t0 + warp * 16 + g, r1 = r0 + 8;
  const int64_t row0 = int64_t(bh) * d.T + r0, row1 = row0 + 8;
  const float lse0 = r0 < d.T && d.count(r0) > 0 ? a.lse[row0] * float(kLog2e) : 0.f;
  const float lse1 = r1 < d.T && d.count(r1) > 0 ? a.lse[row1] * float(kLog2e) : 0.f;
  const float di0 = r0 < d.T ? a.delta[row0] : 0.f, di1 = r1 < d.T ? a.delta[row1] : 0.f;
  const bool single0 = d.count(r0) == 1, single1 = d.count(r1) == 1;
  float acc[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  const float sl2 = a.sl2;
  const int kend = d.causal ? min(max(t0 + BQ + d.off, 0), d.S) : d.S;
  const int kbeg = d.tile_begin(t0, BK);
  const int ntiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
  if (ntiles > 0) {
    cp_rows_16b<BK, D, LD>(buf, kb, kbeg, d.S);
    cp_rows_16b<BK, D, LD>(buf + BK * LD, vb, kbeg, d.S);
  }
  cp_async_commit();
  for (int it = 0; it < ntiles; ++it) {
    const int k0 = kbeg + it * BK;
    if (it + 1 < ntiles) {
      T* nxt = buf + ((it + 1) & 1) * 2 * BK * LD;
      cp_rows_16b<BK, D, LD>(nxt, kb, k0 + BK, d.S);
      cp_rows_16b<BK, D, LD>(nxt + BK * LD, vb, k0 + BK, d.S);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* Ks = buf + (it & 1) * 2 * BK * LD;
    const T* Vs = Ks + BK * LD;
    float s[NK][4], dp[NK][4];
#pragma unroll
    for (int n = 0; n < NK; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KD; ++ks) {
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t bf[4];
        ldsm_x4<false>(bf, Ks + frag_bnk_off(lane, np * 16, ks * 16, LD));
        mma16816<T>(s[2 * np], qf[ks], bf[0], bf[1]);
        mma16816<T>(s[2 * np + 1], qf[ks], bf[2], bf[3]);
        ldsm_x4<false>(bf, Vs + frag_bnk_off(lane, np * 16, ks * 16, LD));
        mma16816<T>(dp[2 * np], gf[ks], bf[0], bf[1]);
        mma16816<T>(dp[2 * np + 1], gf[ks], bf[2], bf[3]);
      }
    }
    // dS = P * (dP - delta), into s
#pragma unroll
    for (int n = 0; n < NK; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + n * 8 + tc * 2 + (e & 1);
        const int t = e < 2 ? r0 : r1;
        const bool ok = t < d.T && d.visible(t, key);
        const float p = ok ? exp2f(s[n][e] * sl2 - (e < 2 ? lse0 : lse1)) : 0.f;
        s[n][e] = (e < 2 ? single0 : single1) ? 0.f : p * (dp[n][e] - (e < 2 ? di0 : di1));
      }
    }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t sa[4];
      acc_to_a<T>(sa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bf[4];
        ldsm_x4<true>(bf, Ks + frag_a_off(lane, kk * 16, np * 16, LD));
        mma16816<T>(acc[2 * np], sa, bf[0], bf[1]);
        mma16816<T>(acc[2 * np + 1], sa, bf[2], bf[3]);
      }
    }
    __syncthreads();  // stage it & 1 is refilled in the next iteration
  }
  const float scale = a.scale;
  T* qb = a.dq + d.q_head(bh);
#pragma unroll
  for (int n = 0; n < ND; ++n) {
    if (r0 < d.T)
      *reinterpret_cast<uint32_t*>(qb + int64_t(r0) * D + n * 8 + tc * 2) =
          pack2<T>(scale * acc[n][0], scale * acc[n][1]);
    if (r1 < d.T)
      *reinterpret_cast<uint32_t*>(qb + int64_t(r1) * D + n * 8 + tc * 2) =
          pack2<T>(scale * acc[n][2], scale * acc[n][3]);
  }
}

template <int D>
struct MmaDkvCfg {
  static constexpr int BKV = 64, BQ = D <= 64 ? 64 : 32, LD = D + 8;
  // One stage: Q and dO [BQ][LD] each, then lse and delta [BQ] as f32 (a multiple of 16 bytes).
  template <typename T>
  static constexpr size_t stage_bytes() { return sizeof(T) * 2 * size_t(BQ) * LD + sizeof(float) * 2 * BQ; }
  // K and V [BKV][LD], then two stages.
  template <typename T>
  static constexpr size_t smem() { return sizeof(T) * 2 * size_t(BKV) * LD + 2 * stage_bytes<T>(); }
};

// dK/dV pass on tensor cores: 4 warps x 16 keys; S^T = K Q^T and dP^T = V dO^T per query
// tile, then dV += P^T dO and dK += dS^T Q with P^T, dS^T straight from the accumulators.
// The (query head, query tile) pairs are one flat loop with double-buffered Q/dO/lse/delta.
template <typename T, int D>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_dkv_mma(BwdArgs<T> a) {
  using Cfg = MmaDkvCfg<D>;
  constexpr int BKV = Cfg::BKV, BQ = Cfg::BQ, LD = Cfg::LD;
  constexpr int KD = D / 16, NQ = BQ / 8, ND = D / 8;
  constexpr size_t kStage = Cfg::template stage_bytes<T>();
  static_assert(kStage % 16 == 0, "stages stay 16-byte aligned");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [BKV][LD]
  T* Vs = Ks + BKV * LD;                   // [BKV][LD]
  unsigned char* stages = reinterpret_cast<unsigned char*>(Vs + BKV * LD);
  const Dims& d = a.d;
  const int BHk = d.B * d.Hkv;
  const int bhk = static_cast<int>(blockIdx.x % BHk);
  const int k0 = static_cast<int>(blockIdx.x / BHk) * BKV;
  const int b = bhk / d.Hkv, hk = bhk - b * d.Hkv;
  const int64_t kvh = int64_t(bhk) * d.S * D;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tc = lane & 3;

  load_rows_16b<BKV, D, LD>(Ks, a.k + kvh, k0, d.S);  // visible after the loop's first barrier
  load_rows_16b<BKV, D, LD>(Vs, a.v + kvh, k0, d.S);
  const int s0 = k0 + warp * 16 + g, s1 = s0 + 8;  // this thread's two keys
  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
  const float sl2 = a.sl2;
  // Query tiles that can see a key of this tile: t + off >= k0 under causal, and with a
  // window t + off - window < the tile's last key.
  const int qt_first = (d.causal ? max(k0 - d.off, 0) : 0) / BQ;
  const int nqt = max((d.query_end(min(k0 + BKV, d.S)) + BQ - 1) / BQ - qt_first, 0);
  const int total = d.G * nqt;
  auto issue = [&](int it) {
    unsigned char* st = stages + (it & 1) * kStage;
    T* Qn = reinterpret_cast<T*>(st);
    T* Gn = Qn + BQ * LD;
    float* ln = reinterpret_cast<float*>(Gn + BQ * LD);
    float* dn = ln + BQ;
    const int gi = it / nqt, q0 = (qt_first + it - gi * nqt) * BQ;
    const int bh = b * d.H + hk * d.G + gi;
    cp_rows_16b<BQ, D, LD>(Qn, a.q + d.q_head(bh), q0, d.T);
    cp_rows_16b<BQ, D, LD>(Gn, a.go + d.q_head(bh), q0, d.T);
    for (int i = threadIdx.x; i < BQ; i += kAttnThreads) {
      const bool ok = q0 + i < d.T;
      const int64_t row = int64_t(bh) * d.T + (ok ? q0 + i : 0);
      cp_async4(ln + i, a.lse + row, ok);
      cp_async4(dn + i, a.delta + row, ok);
    }
  };
  if (total > 0) issue(0);
  cp_async_commit();
  for (int it = 0; it < total; ++it) {
    if (it + 1 < total) issue(it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int q0 = (qt_first + it % nqt) * BQ;
    const unsigned char* st = stages + (it & 1) * kStage;
    const T* Qs = reinterpret_cast<const T*>(st);
    const T* Gs = Qs + BQ * LD;
    const float* lse_s = reinterpret_cast<const float*>(Gs + BQ * LD);
    const float* dls = lse_s + BQ;
    float s[NQ][4], dp[NQ][4];
#pragma unroll
    for (int n = 0; n < NQ; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KD; ++ks) {
      uint32_t ka[4], va[4];
      ldsm_x4<false>(ka, Ks + frag_a_off(lane, warp * 16, ks * 16, LD));
      ldsm_x4<false>(va, Vs + frag_a_off(lane, warp * 16, ks * 16, LD));
#pragma unroll
      for (int np = 0; np < NQ / 2; ++np) {
        uint32_t bf[4];
        ldsm_x4<false>(bf, Qs + frag_bnk_off(lane, np * 16, ks * 16, LD));
        mma16816<T>(s[2 * np], ka, bf[0], bf[1]);
        mma16816<T>(s[2 * np + 1], ka, bf[2], bf[3]);
        ldsm_x4<false>(bf, Gs + frag_bnk_off(lane, np * 16, ks * 16, LD));
        mma16816<T>(dp[2 * np], va, bf[0], bf[1]);
        mma16816<T>(dp[2 * np + 1], va, bf[2], bf[3]);
      }
    }
    // P^T into s, dS^T into dp (rows = keys, columns = queries). lse is -inf only for rows
    // that see no key, where ok is false.
#pragma unroll
    for (int n = 0; n < NQ; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = n * 8 + tc * 2 + (e & 1), t = q0 + qi;
        const bool ok = t < d.T && d.visible(t, e < 2 ? s0 : s1);
        const bool single = d.count(t) == 1;
        const float p = ok ? (single ? 1.f : exp2f(s[n][e] * sl2 - lse_s[qi] * float(kLog2e))) : 0.f;
        s[n][e] = p;
        dp[n][e] = single ? 0.f : p * (dp[n][e] - dls[qi]);
      }
    }
    // dV += P^T dO, dK += dS^T Q
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      uint32_t pa[4], sa[4];
      acc_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
      acc_to_a<T>(sa, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bf[4];
        ldsm_x4<true>(bf, Gs + frag_a_off(lane, kk * 16, np * 16, LD));
        mma16816<T>(dv[2 * np], pa, bf[0], bf[1]);
        mma16816<T>(dv[2 * np + 1], pa, bf[2], bf[3]);
        ldsm_x4<true>(bf, Qs + frag_a_off(lane, kk * 16, np * 16, LD));
        mma16816<T>(dk[2 * np], sa, bf[0], bf[1]);
        mma16816<T>(dk[2 * np + 1], sa, bf[2], bf[3]);
      }
    }
    __syncthreads();  // stage it & 1 is refilled in the next iteration
  }
  const float scale = a.scale;
#pragma unroll
  for (int n = 0; n < ND; ++n) {
    const int c = n * 8 + tc * 2;
    if (s0 < d.S) {
      *reinterpret_cast<uint32_t*>(a.dk + kvh + int64_t(s0) * D + c) = pack2<T>(scale * dk[n][0], scale * dk[n][1]);
      *reinterpret_cast<uint32_t*>(a.dv + kvh + int64_t(s0) * D + c) = pack2<T>(dv[n][0], dv[n][1]);
    }
    if (s1 < d.S) {
      *reinterpret_cast<uint32_t*>(a.dk + kvh + int64_t(s1) * D + c) = pack2<T>(scale * dk[n][2], scale * dk[n][3]);
      *reinterpret_cast<uint32_t*>(a.dv + kvh + int64_t(s1) * D + c) = pack2<T>(dv[n][2], dv[n][3]);
    }
  }
}

// ============================================================================================
// Host side: path choice and launches.
// ============================================================================================

enum class Path { kMma, kSimt, kRowwise };

// LATHE_CUDA_ATTENTION=simt|rowwise caps the path (read once).
Path forced_path() {
  static const Path p = [] {
    const char* e = std::getenv("LATHE_CUDA_ATTENTION");
    if (e && std::strcmp(e, "rowwise") == 0) return Path::kRowwise;
    if (e && std::strcmp(e, "simt") == 0) return Path::kSimt;
    return Path::kMma;
  }();
  return p;
}


// tensor_cores: the device is sm_80 or newer (mma.sync bf16, ldmatrix, cp.async).
template <typename T>
Path choose_path(const Dims& d, bool tensor_cores, std::initializer_list<const void*> ptrs) {
  Path p = Path::kRowwise;
  if constexpr (!std::is_same_v<T, double>) {
    if (d.D >= 1 && d.D <= 256) p = Path::kSimt;
    if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
      bool ok = tensor_cores && (d.D == 64 || d.D == 128);
      for (const void* q : ptrs) ok = ok && aligned16(q);
      if (ok) p = Path::kMma;
    }
  }
  return std::max(p, forced_path());  // enum order: a forced path can only be slower
}

// Launch with `smem` bytes of dynamic shared memory (opting in above the 48 KiB default).
template <typename Kernel, typename Args>
void launch(Kernel kernel, int64_t blocks, size_t smem, cudaStream_t st, const Args& args, const char* what) {
  LATHE_CHECK(blocks > 0 && blocks < (int64_t(1) << 31)) << what << ": grid of " << blocks << " blocks";
  if (smem > 48 * 1024) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  kernel<<<static_cast<unsigned>(blocks), kAttnThreads, smem, st>>>(args);
  LATHE_CUDA_LAUNCH_CHECK(what);
}

int64_t rowwise_blocks(int64_t rows) {
  const int64_t per = kAttnThreads / 32;
  return std::min<int64_t>((rows + per - 1) / per, 65535LL * 32);
}

template <int N>
using int_c = std::integral_constant<int, N>;

// Calls f(int_c<DMAX>) for the smallest DMAX in {32, 64, 128, 256} >= D.
template <typename F>
void dispatch_dmax(int D, F&& f) {
  if (D <= 32) f(int_c<32>{});
  else if (D <= 64) f(int_c<64>{});
  else if (D <= 128) f(int_c<128>{});
  else f(int_c<256>{});
}

template <typename T>
void attention_fwd_impl(const FwdArgs<T>& a, Path path, cudaStream_t st) {
  const Dims& d = a.d;
  const int64_t BH = int64_t(d.B) * d.H;
  if (path == Path::kMma) {
    if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
      const int64_t blocks = BH * ((d.T + 63) / 64);
      if (d.D == 64) launch(attn_fwd_mma<T, 64>, blocks, MmaFwdCfg<64>::smem<T>(), st, a, "attention (mma)");
      else launch(attn_fwd_mma<T, 128>, blocks, MmaFwdCfg<128>::smem<T>(), st, a, "attention (mma)");
      return;
    }
  }
  if (path == Path::kSimt) {
    if constexpr (!std::is_same_v<T, double>) {
      dispatch_dmax(d.D, [&](auto dmax) {
        constexpr int DMAX = decltype(dmax)::value;
        constexpr int TM = DMAX <= 128 ? 4 : 2;
        using C = SimtFwdCfg<DMAX, TM>;
        launch(attn_fwd_simt<T, DMAX, TM>, BH * ((d.T + C::BQ - 1) / C::BQ), C::smem, st, a, "attention (simt)");
      });
      return;
    }
  }
  launch(attn_fwd_rowwise<T>, rowwise_blocks(BH * d.T), 0, st, a, "attention (rowwise)");
}

template <typename T>
void attention_bwd_impl(const BwdArgs<T>& a, Path path, cudaStream_t st) {
  const Dims& d = a.d;
  const int64_t BH = int64_t(d.B) * d.H, BHk = int64_t(d.B) * d.Hkv;
  if (path == Path::kMma) {
    if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
      auto run = [&](auto dim) {
        constexpr int D = decltype(dim)::value;
        using Q = MmaDqCfg<D>;
        using K = MmaDkvCfg<D>;
        launch(attn_bwd_dkv_mma<T, D>, BHk * ((d.S + K::BKV - 1) / K::BKV), K::template smem<T>(), st, a,
               "attention_backward dk/dv (mma)");
        launch(attn_bwd_dq_mma<T, D>, BH * ((d.T + Q::BQ - 1) / Q::BQ), Q::template smem<T>(), st, a,
               "attention_backward dq (mma)");
      };
      if (d.D == 64) run(int_c<64>{});
      else run(int_c<128>{});
      return;
    }
  }
  if (path == Path::kSimt) {
    if constexpr (!std::is_same_v<T, double>) {
      dispatch_dmax(d.D, [&](auto dmax) {
        constexpr int DMAX = decltype(dmax)::value;
        constexpr int TM = DMAX <= 64 ? 4 : 2;
        using K = SimtDkvCfg<DMAX, TM>;
        using Q = SimtDqCfg<DMAX, TM>;
        launch(attn_bwd_dkv_simt<T, DMAX, TM>, BHk * ((d.S + K::BKV - 1) / K::BKV), K::smem, st, a,
               "attention_backward dk/dv (simt)");
        launch(attn_bwd_dq_simt<T, DMAX, TM>, BH * ((d.T + Q::BQ - 1) / Q::BQ), Q::smem, st, a,
               "attention_backward dq (simt)");
      });
      return;
    }
  }
  launch(attn_bwd_dkv_rowwise<T>, rowwise_blocks(BHk * d.S), 0, st, a, "attention_backward dk/dv (rowwise)");
  launch(attn_bwd_dq_rowwise<T>, rowwise_blocks(BH * d.T), 0, st, a, "attention_backward dq (rowwise)");
}

Dims make_dims(const Tensor& q, const Tensor& k, bool causal, int64_t window) {
  for (int64_t x : {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)}) {
    LATHE_CHECK(x < (int64_t(1) << 30)) << "attention (cuda): a dimension of q " << q.shape_str() << " or k "
                                        << k.shape_str() << " is too large";
  }
  Dims d{};
  d.B = static_cast<int>(q.size(0));
  d.H = static_cast<int>(q.size(1));
  d.Hkv = static_cast<int>(k.size(1));
  d.T = static_cast<int>(q.size(2));
  d.S = static_cast<int>(k.size(2));
  d.D = static_cast<int>(q.size(3));
  d.G = d.H / d.Hkv;
  d.off = d.S - d.T;
  d.causal = causal;
  // A window of S or more keys hides nothing (a row never sees more than S keys).
  d.window = causal && window > 0 && window < d.S ? static_cast<int>(window) : 0;
  LATHE_CHECK(int64_t(d.B) * d.H < (int64_t(1) << 31) && int64_t(d.B) * d.Hkv * d.S < (int64_t(1) << 31))
      << "attention (cuda): too many heads";
  return d;
}

void check_contiguous(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) LATHE_CHECK(t->is_contiguous()) << op << " (cuda): expected contiguous tensors";
}

}  // namespace

void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window,
               const AttentionOut& out) {
  const int dev = q.device().index;
  set_device(dev);
  check_contiguous("attention", {&q, &k, &v, &out.out, &out.lse});
  const Dims d = make_dims(q, k, causal, window);
  if (int64_t(d.B) * d.H * d.T == 0) return;
  cudaStream_t st = stream(dev);
  LATHE_CUDA_DISPATCH_FLOAT("attention", q.dtype(), T, {
    FwdArgs<T> a{};
    a.d = d;
    a.q = ptr<const T>(q);
    a.k = ptr<const T>(k);
    a.v = ptr<const T>(v);
    a.o = ptr<T>(out.out);
    a.lse = ptr<acc_t<T>>(out.lse);
    a.scale = static_cast<acc_t<T>>(scale);
    a.sl2 = static_cast<float>(scale * kLog2e);
    attention_fwd_impl<T>(a, choose_path<T>(d, props(dev).major >= 8, {a.q, a.k, a.v, a.o}), st);
  });
}

void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, int64_t window,
                        const AttentionGrads& grads) {
  const int dev = q.device().index;
  set_device(dev);
  check_contiguous("attention_backward", {&gout, &q, &k, &v, &out, &lse, &grads.dq, &grads.dk, &grads.dv});
  const Dims d = make_dims(q, k, causal, window);
  cudaStream_t st = stream(dev);
  if (int64_t(d.B) * d.H * d.T == 0 || d.S == 0 || d.D == 0) {
    // Nothing to sum over (the op layer normally handles these): zero gradients.
    for (const Tensor* g : {&grads.dq, &grads.dk, &grads.dv}) {
      if (g->numel() > 0) LATHE_CUDA_CHECK(cudaMemsetAsync(g->raw_data(), 0, g->numel() * dtype_size(g->dtype()), st));
    }
    return;
  }
  const int64_t rows = int64_t(d.B) * d.H * d.T;
  Tensor delta = Tensor::empty({rows}, lse.dtype(), q.device());
  LATHE_CUDA_DISPATCH_FLOAT("attention_backward", q.dtype(), T, {
    using A = acc_t<T>;
    launch(attn_delta_kernel<T>, rowwise_blocks(rows), 0, st,
           DeltaArgs<T>{ptr<const T>(gout), ptr<const T>(out), ptr<A>(delta), rows, d.D},
           "attention_backward delta");
    BwdArgs<T> a{};
    a.d = d;
    a.go = ptr<const T>(gout);
    a.q = ptr<const T>(q);
    a.k = ptr<const T>(k);
    a.v = ptr<const T>(v);
    a.lse = ptr<const A>(lse);
    a.delta = ptr<const A>(delta);
    a.dq = ptr<T>(grads.dq);
    a.dk = ptr<T>(grads.dk);
    a.dv = ptr<T>(grads.dv);
    a.scale = static_cast<A>(scale);
    a.sl2 = static_cast<float>(scale * kLog2e);
    attention_bwd_impl<T>(a, choose_path<T>(d, props(dev).major >= 8, {a.go, a.q, a.k, a.v, a.dq, a.dk, a.dv}), st);
  });
}

}  // namespace lathe::kernels::cuda
