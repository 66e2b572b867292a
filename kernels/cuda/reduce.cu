// CUDA reductions over any set of axes of a strided tensor (semantics of
// kernels/cpu/reduce.cpp: sums, means, variances and norms accumulate in double for every
// floating dtype, integer sums in int64; max/min propagate NaN; argmax returns the first
// index of the maximum, a NaN counting as the maximum).
//
// Each op is a reducer (init / update / merge / finish over a small State). x's dims are
// split into kept dims (whose row-major order is out's contiguous order) and reduced dims,
// each coalesced, so element r of output o lives at kept.offset(o) + red.offset(r).
// Two layouts:
// - rows: a group of `tpo` threads (a power of two up to the block) per output, each
//   thread folding elements r = tid, tid + tpo, ... then a warp-shuffle + shared-memory
//   tree. Coalesced when the innermost reduced dim is contiguous.
// - columns: when the innermost kept dim has stride 1 (e.g. a bias gradient, [B*T, C]
//   summed over rows), 32 adjacent outputs per block column, 8 thread rows splitting the
//   reduced elements, so every warp reads 32 consecutive elements.
// When the outputs alone cannot fill the GPU (e.g. a 50M-element sum into one value for a
// gradient norm), each output's reduced range is cut into G chunks: pass 1 writes one
// partial State per (output, chunk) into a workspace, pass 2 merges them in a fixed tree.
// Launch shapes depend only on the shapes and the device's SM count, and no atomics are
// used, so results are deterministic.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {


// ---- reducers (States are plain aggregates so they can live in __shared__) -----------------

enum class SumKind { sum, mean, sumsq_sqrt };

template <typename T, SumKind K>
struct SumRed {
  using C = comp_t<T>;
  using State = std::conditional_t<is_float_v<T>, double, int64_t>;
  using Out = std::conditional_t<is_float_v<T>, T, int64_t>;
  __device__ __forceinline__ State init() const { return 0; }
  __device__ __forceinline__ void update(State& s, T raw, int64_t) const {
    const C v = ldc(raw);
    if constexpr (K == SumKind::sumsq_sqrt) s += State(v) * State(v);
    else s += State(v);
  }
  __device__ __forceinline__ void merge(State& a, const State& b) const { a += b; }
  __device__ __forceinline__ Out finish(const State& s, int64_t n) const {
    if constexpr (is_float_v<T>) {
      double r = s;
      if constexpr (K == SumKind::mean) r = s / static_cast<double>(n);
      if constexpr (K == SumKind::sumsq_sqrt) r = sqrt(s);
      return stc<T>(static_cast<C>(r));  // double -> compute type -> T, as the CPU rounds
    } else {
      (void)n;
      return s;
    }
  }
};

struct VarState {
  double n, mean, m2;
};

// Welford's online update, merged with Chan, Golub & LeVeque's pairwise formula.
template <typename T>
struct VarRed {
  using C = comp_t<T>;
  using State = VarState;
  using Out = T;
  int64_t correction;
  __device__ __forceinline__ State init() const { return {0.0, 0.0, 0.0}; }
  __device__ __forceinline__ void update(State& s, T raw, int64_t) const {
    const double x = static_cast<double>(ldc(raw));
    s.n += 1;
    const double d = x - s.mean;
    s.mean += d / s.n;
    s.m2 += d * (x - s.mean);
  }
  __device__ __forceinline__ void merge(State& a, const State& b) const {
    if (b.n == 0) return;
    if (a.n == 0) {
      a = b;
      return;
    }
    const double n = a.n + b.n, d = b.mean - a.mean;
    a.mean += d * b.n / n;
    a.m2 += b.m2 + d * d * a.n * b.n / n;
    a.n = n;
  }
  __device__ __forceinline__ Out finish(const State& s, int64_t n) const {
    const double den = static_cast<double>(n - correction);
    const double r = den > 0 ? s.m2 / den : std::numeric_limits<double>::quiet_NaN();
    return stc<T>(static_cast<C>(r));
  }
};

// max / min; a NaN wins (propagates), like numpy.
template <typename T, bool IsMax>
struct MinMaxRed {
  using C = comp_t<T>;
  using State = C;
  using Out = T;
  __device__ __forceinline__ State init() const {
    if constexpr (std::is_floating_point_v<C>)
      return IsMax ? -std::numeric_limits<C>::infinity() : std::numeric_limits<C>::infinity();
    else return IsMax ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
  }
  __device__ __forceinline__ void step(State& s, C v) const {
    if ((IsMax ? v > s : v < s) || is_nan(v)) s = v;
  }
  __device__ __forceinline__ void update(State& s, T raw, int64_t) const { step(s, ldc(raw)); }
  __device__ __forceinline__ void merge(State& a, const State& b) const {
    if (is_nan(a)) return;
    step(a, b);
  }
  __device__ __forceinline__ Out finish(const State& s, int64_t) const { return stc<T>(s); }
};

template <typename C>
struct ArgState {
  C v;
  int64_t i;  // -1: nothing seen
};

// First index of the maximum (a NaN counts as the maximum). The merge is symmetric (ties go
// to the lower index), so any merge order gives the CPU's sequential answer.
template <typename T>
struct ArgmaxRed {
  using C = comp_t<T>;
  using State = ArgState<C>;
  using Out = int64_t;
  __device__ __forceinline__ State init() const { return {C(0), -1}; }
  __device__ __forceinline__ static bool beats(C v, C best) { return v > best || (is_nan(v) && !is_nan(best)); }
  // A thread visits its elements in increasing r, so a strict "beats" keeps the first.
  __device__ __forceinline__ void update(State& s, T raw, int64_t r) const {
    const C v = ldc(raw);
    if (s.i < 0 || beats(v, s.v)) {
      s.v = v;
      s.i = r;
    }
  }
  __device__ __forceinline__ void merge(State& a, const State& b) const {
    if (b.i < 0) return;
    if (a.i < 0 || beats(b.v, a.v) || (!beats(a.v, b.v) && b.i < a.i)) a = b;
  }
  __device__ __forceinline__ Out finish(const State& s, int64_t) const { return s.i; }
};

// ---- device helpers --------------------------------------------------------------------------

// Offset of row-major index `lin` under ix, in index type I (uint32_t when it fits: 64-bit
// division is several times slower). The outermost dim needs no division; nd == 0 gives 0.
template <typename I>
__device__ __forceinline__ int64_t offset_of(const Indexer& ix, int64_t lin) {
  I i = static_cast<I>(lin);
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 1; --d) {
    if (d >= ix.nd) continue;
    const I sz = static_cast<I>(ix.size[d]);
    const I q = i / sz;
    off += static_cast<int64_t>(i - q * sz) * ix.stride[d];
    i = q;
  }
  return off + static_cast<int64_t>(i) * ix.stride[0];
}

// Any trivially copyable State through a warp shuffle, one 32-bit word at a time.
template <typename S>
__device__ __forceinline__ S shfl_down_state(const S& s, int delta) {
  constexpr int W = (sizeof(S) + 3) / 4;
  uint32_t w[W];
  memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = __shfl_down_sync(0xffffffffu, w[k], delta);
  S r;
  memcpy(&r, w, sizeof(S));
  return r;
}

// Folds elements r0, r0 + step, ... < r1 of one output (base pointer p) into s; four loads
// are issued before their updates so each thread keeps several reads in flight.
template <typename I, typename T, typename Red>
__device__ __forceinline__ void fold(const Red& red, typename Red::State& s, const T* p, const Indexer& rix,
                                     int64_t r0, int64_t r1, int64_t step) {
  int64_t r = r0;
  for (; r + 3 * step < r1; r += 4 * step) {
    const T v0 = p[offset_of<I>(rix, r)];
    const T v1 = p[offset_of<I>(rix, r + step)];
    const T v2 = p[offset_of<I>(rix, r + 2 * step)];
    const T v3 = p[offset_of<I>(rix, r + 3 * step)];
    red.update(s, v0, r);
    red.update(s, v1, r + step);
    red.update(s, v2, r + 2 * step);
    red.update(s, v3, r + 3 * step);
  }
  for (; r < r1; r += step) red.update(s, p[offset_of<I>(rix, r)], r);
}

// Merges the States of each group of `tpo` consecutive threads along x (blockDim.x == tpo,
// blockDim.x * blockDim.y == kThreads). The result is valid in the group's thread 0.
// smem holds kThreads / 32 States. Every thread of the block must call it.
template <typename Red, typename S>
__device__ __forceinline__ S group_reduce(const Red& red, S s, int tpo, S* smem) {
  const int w = tpo < 32 ? tpo : 32;
  // Lane l merges lane l + d; lanes l < d stay inside their group, the rest are unused.
  for (int d = w >> 1; d > 0; d >>= 1) {
    const S o = shfl_down_state(s, d);
    red.merge(s, o);
  }
  if (tpo > 32) {
    const int tx = threadIdx.x, nw = tpo >> 5, slot = threadIdx.y * nw + (tx >> 5);
    if ((tx & 31) == 0) smem[slot] = s;
    __syncthreads();
    if (tx == 0)
      for (int k = 1; k < nw; ++k) red.merge(s, smem[slot + k]);
    __syncthreads();  // smem is reused by the next task
  }
  return s;
}

// ---- kernels ---------------------------------------------------------------------------------

// Rows layout. Task t = (o, g) = (t / G, t % G) covers reduced elements [g*chunk, ...) of
// output o; FINAL (G == 1) writes out[o], else the partial State into part[t].
template <bool FINAL, typename I, typename T, typename Red>
__global__ void __launch_bounds__(kThreads) reduce_rows_k(const T* __restrict__ x, Red red, Indexer kix, Indexer rix,
                                                          int64_t ntasks, int64_t G, int64_t chunk, int64_t R,
                                                          void* dst) {
  using S = typename Red::State;
  __shared__ S smem[kThreads / 32];
  const int tpo = blockDim.x, rows = blockDim.y;
  for (int64_t base = int64_t(blockIdx.x) * rows; base < ntasks; base += int64_t(gridDim.x) * rows) {
    const int64_t task = base + threadIdx.y;
    S s = red.init();
    if (task < ntasks) {
      const int64_t o = task / G, g = task - o * G;
      const int64_t r0 = g * chunk, r1 = min(R, r0 + chunk);
      fold<I>(red, s, x + offset_of<I>(kix, o), rix, r0 + threadIdx.x, r1, tpo);
    }
    s = group_reduce(red, s, tpo, smem);
    if (task < ntasks && threadIdx.x == 0) {
      if constexpr (FINAL) static_cast<typename Red::Out*>(dst)[task] = red.finish(s, R);
      else static_cast<S*>(dst)[task] = s;
    }
  }
}

constexpr int kColRows = kThreads / 32;

// Columns layout: blockIdx.x picks 32 adjacent columns (innermost kept dim, stride 1 in x),
// task = (oo, g) over the other kept dims and the chunks. Output o = oo * cols + c; its
// partial for chunk g goes to part[o * G + g].
template <bool FINAL, typename I, typename T, typename Red>
__global__ void __launch_bounds__(kThreads) reduce_cols_k(const T* __restrict__ x, Red red, Indexer oix, int64_t cols,
                                                          Indexer rix, int64_t ntasks, int64_t G, int64_t chunk,
                                                          int64_t R, void* dst) {
  using S = typename Red::State;
  __shared__ S smem[kColRows][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  for (int64_t task = blockIdx.y; task < ntasks; task += gridDim.y) {
    const int64_t oo = task / G, g = task - oo * G;
    const int64_t r0 = g * chunk, r1 = min(R, r0 + chunk);
    S s = red.init();
    if (c < cols) fold<I>(red, s, x + offset_of<I>(oix, oo) + c, rix, r0 + ty, r1, kColRows);
    smem[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < cols) {
      for (int k = 1; k < kColRows; ++k) red.merge(s, smem[k][tx]);
      const int64_t o = oo * cols + c;
      if constexpr (FINAL) static_cast<typename Red::Out*>(dst)[o] = red.finish(s, R);
      else static_cast<S*>(dst)[o * G + g] = s;
    }
    __syncthreads();
  }
}

// Pass 2: merges the G partial States of each output (part[o * G + g]) and finishes.
template <typename Red>
__global__ void __launch_bounds__(kThreads) reduce_merge_k(const typename Red::State* __restrict__ part, Red red,
                                                           int64_t O, int64_t G, int64_t R,
                                                           typename Red::Out* __restrict__ out) {
  using S = typename Red::State;
  __shared__ S smem[kThreads / 32];
  const int tpo = blockDim.x, rows = blockDim.y;
  for (int64_t base = int64_t(blockIdx.x) * rows; base < O; base += int64_t(gridDim.x) * rows) {
    const int64_t o = base + threadIdx.y;
    S s = red.init();
    if (o < O)
      for (int64_t g = threadIdx.x; g < G; g += tpo) red.merge(s, part[o * G + g]);
    s = group_reduce(red, s, tpo, smem);
    if (o < O && threadIdx.x == 0) out[o] = red.finish(s, R);
  }
}

// ---- host side -------------------------------------------------------------------------------

struct Dims {
  std::vector<int64_t> size, stride;
};

// Drops size-1 dims and merges neighbours that walk memory as one dim (row-major order kept).
Dims coalesce(const Dims& in) {
  Dims out;
  for (size_t i = 0; i < in.size.size(); ++i) {
    if (in.size[i] == 1) continue;
    if (!out.size.empty() && out.stride.back() == in.stride[i] * in.size[i]) {
      out.size.back() *= in.size[i];
      out.stride.back() = in.stride[i];
    } else {
      out.size.push_back(in.size[i]);
      out.stride.push_back(in.stride[i]);
    }
  }
  return out;
}

Indexer to_indexer(const Dims& d, const Tensor& x) {
  LATHE_CHECK(d.size.size() <= static_cast<size_t>(kMaxDims))
      << "reduce: x " << x.shape_str() << " has more than " << kMaxDims
      << " non-mergeable kept or reduced dims; make it contiguous first";
  Indexer ix;
  ix.nd = static_cast<int>(d.size.size());
  for (size_t k = 0; k < d.size.size(); ++k) {
    ix.size[k] = d.size[k];
    ix.stride[k] = d.stride[k];
  }
  return ix;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p <<= 1;
  return p;
}

// Chunks per output: enough tasks to fill `target` blocks, but each chunk at least
// `min_chunk` elements; at most kMaxChunks so pass 2 stays one short merge per output.
constexpr int64_t kMaxChunks = 4096;
void plan_chunks(int64_t R, int64_t blocks, int64_t target, int64_t min_chunk, int64_t& G, int64_t& chunk) {
  G = 1;
  chunk = R > 0 ? R : 1;
  if (blocks >= target || R < 2 * min_chunk) return;
  int64_t g = std::min(ceil_div(target, blocks), ceil_div(R, min_chunk));
  g = std::min(g, kMaxChunks);
  if (g <= 1) return;
  chunk = ceil_div(R, g);
  G = ceil_div(R, chunk);
}

template <typename T, typename Red>
void run_reduce(const Red& red, const Tensor& x, const std::vector<int64_t>& axes, const Tensor& out) {
  using S = typename Red::State;
  using Out = typename Red::Out;
  const int64_t O = out.numel();
  if (O == 0) return;
  const int dev = x.device().index;
  set_device(dev);
  cudaStream_t st = stream(dev);

  const int64_t nd = x.dim();
  std::vector<bool> is_red(static_cast<size_t>(nd), false);
  for (int64_t a : axes) is_red[a] = true;
  Dims kept_raw, red_raw;
  for (int64_t d = 0; d < nd; ++d) {
    Dims& to = is_red[d] ? red_raw : kept_raw;
    to.size.push_back(x.size(d));
    to.stride.push_back(x.stride(d));
  }
  int64_t R = 1;
  for (int64_t s : red_raw.size) R *= s;
  const Dims kept = coalesce(kept_raw), rd = coalesce(red_raw);
  const Indexer rix = to_indexer(rd, x);
  const T* xp = ptr<const T>(x);
  const int64_t target = int64_t(props(dev).multiProcessorCount) * (2048 / kThreads);  // one full wave
  const bool small_index = R <= int64_t(UINT32_MAX) && O <= int64_t(UINT32_MAX);

  // Columns when the innermost kept dim is unit-stride and wide enough to fill a warp's reads.
  const bool columns = !kept.size.empty() && kept.stride.back() == 1 && kept.size.back() >= 16 && R > 1;

  int64_t G = 1, chunk = 1;
  Tensor work;  // pass-1 partials; freed in stream order after the launches
  void* dst = out.raw_data();
  auto use_workspace = [&](int64_t nstates) {
    work = Tensor::empty({nstates * static_cast<int64_t>(sizeof(S))}, DType::u8, x.device());
    dst = work.raw_data();
  };

  if (columns) {
    const int64_t cols = kept.size.back();
    Dims outer = kept;
    outer.size.pop_back();
    outer.stride.pop_back();
    const Indexer oix = to_indexer(outer, x);
    const int64_t Oo = O / cols, bx = ceil_div(cols, 32);
    plan_chunks(R, bx * Oo, target, int64_t(kColRows) * 32, G, chunk);
    if (G > 1) use_workspace(O * G);
    const int64_t ntasks = Oo * G;
    const dim3 grid(static_cast<unsigned>(bx), static_cast<unsigned>(std::min<int64_t>(ntasks, 65535)));
    const dim3 block(32, kColRows);
    if (G == 1) {
      if (small_index) reduce_cols_k<true, uint32_t><<<grid, block, 0, st>>>(xp, red, oix, cols, rix, ntasks, G, chunk, R, dst);
      else reduce_cols_k<true, uint64_t><<<grid, block, 0, st>>>(xp, red, oix, cols, rix, ntasks, G, chunk, R, dst);
    } else {
      if (small_index) reduce_cols_k<false, uint32_t><<<grid, block, 0, st>>>(xp, red, oix, cols, rix, ntasks, G, chunk, R, dst);
      else reduce_cols_k<false, uint64_t><<<grid, block, 0, st>>>(xp, red, oix, cols, rix, ntasks, G, chunk, R, dst);
    }
  } else {
    const Indexer kix = to_indexer(kept, x);
    const int tpo = pow2_at_least(R, kThreads);
    const int rows = kThreads / tpo;
    plan_chunks(R, ceil_div(O, rows), target, int64_t(tpo) * 16, G, chunk);
    if (G > 1) use_workspace(O * G);
    const int64_t ntasks = O * G;
    const unsigned grid = blocks_for(ntasks, rows);
    const dim3 block(tpo, rows);
    if (G == 1) {
      if (small_index) reduce_rows_k<true, uint32_t><<<grid, block, 0, st>>>(xp, red, kix, rix, ntasks, G, chunk, R, dst);
      else reduce_rows_k<true, uint64_t><<<grid, block, 0, st>>>(xp, red, kix, rix, ntasks, G, chunk, R, dst);
    } else {
      if (small_index) reduce_rows_k<false, uint32_t><<<grid, block, 0, st>>>(xp, red, kix, rix, ntasks, G, chunk, R, dst);
      else reduce_rows_k<false, uint64_t><<<grid, block, 0, st>>>(xp, red, kix, rix, ntasks, G, chunk, R, dst);
    }
  }
  LATHE_CUDA_LAUNCH_CHECK("reduce");
  if (G > 1) {
    const int tpo = pow2_at_least(G, kThreads);
    const int rows = kThreads / tpo;
    reduce_merge_k<Red><<<blocks_for(O, rows), dim3(tpo, rows), 0, st>>>(static_cast<const S*>(dst), red, O, G, R,
                                                                         ptr<Out>(out));
    LATHE_CUDA_LAUNCH_CHECK("reduce (merge partials)");
  }
}

template <typename T>
void reduce_t(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out) {
  switch (op) {
    case ReduceOp::sum: return run_reduce<T>(SumRed<T, SumKind::sum>{}, x, axes, out);
    case ReduceOp::max: return run_reduce<T>(MinMaxRed<T, true>{}, x, axes, out);
    case ReduceOp::min: return run_reduce<T>(MinMaxRed<T, false>{}, x, axes, out);
    case ReduceOp::argmax: return run_reduce<T>(ArgmaxRed<T>{}, x, axes, out);
    case ReduceOp::mean:
    case ReduceOp::var:
    case ReduceOp::norm:
      if constexpr (is_float_v<T>) {
        if (op == ReduceOp::mean) return run_reduce<T>(SumRed<T, SumKind::mean>{}, x, axes, out);
        if (op == ReduceOp::norm) return run_reduce<T>(SumRed<T, SumKind::sumsq_sqrt>{}, x, axes, out);
        return run_reduce<T>(VarRed<T>{correction}, x, axes, out);
      } else {
        LATHE_FAIL() << "reduce: mean/var/norm need a floating dtype, got " << dtype_name(x.dtype());
      }
  }
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out) {
  const bool integer = !is_floating(x.dtype());
  const DType want = (op == ReduceOp::argmax || (op == ReduceOp::sum && integer)) ? DType::i64 : x.dtype();
  LATHE_CHECK(out.dtype() == want) << "reduce: output dtype " << dtype_name(out.dtype()) << " does not match the kernel's "
                                   << dtype_name(want);
  LATHE_CHECK(out.is_contiguous()) << "reduce: the output must be contiguous";
  LATHE_CUDA_DISPATCH_ALL(x.dtype(), T, reduce_t<T>(op, x, axes, correction, out));
}

}  // namespace lathe::kernels::cuda
