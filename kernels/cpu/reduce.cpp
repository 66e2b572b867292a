// CPU reductions over any set of axes of a strided tensor.
//
// Each op is a small "reducer" (init / update / merge / finish) run by one of two loops:
// - rowwise: one output at a time walks its reduced elements (dims coalesced, unit-stride
//   inner loop when the innermost reduced dim is contiguous). Long reductions are cut into
//   fixed-size chunks whose partial states are merged in order, so results do not depend
//   on the thread count.
// - columnwise: when x's last dim is kept and contiguous (e.g. summing [B, T, C] over B, T
//   for a bias gradient), a block of adjacent outputs is updated together per reduced
//   element, reading x row by row instead of with a large stride.
// Sums, means, variances and norms accumulate in double for every floating dtype; float
// sums over a unit-stride run use kParts independent partials (kernels/cpu/partials.h)
// combined in a fixed order, so they are not bound by the latency of one add chain and
// still do not depend on the thread count.
#include <cmath>
#include <limits>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/partials.h"

namespace lathe::kernels::cpu {

using detail::comp_t;
using detail::is_float_v;
using detail::ld;
using detail::st;

namespace {

template <typename C>
inline bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return std::isnan(v);
  else return false;
}

enum class SumKind { sum, mean, sumsq_sqrt };

template <typename T, SumKind K>
struct SumReducer {
  using C = comp_t<T>;
  using State = std::conditional_t<is_float_v<T>, double, int64_t>;
  using Out = std::conditional_t<is_float_v<T>, T, int64_t>;
  State init() const { return 0; }
  void update(State& s, C v, int64_t) const {
    if constexpr (K == SumKind::sumsq_sqrt) s += State(v) * State(v);
    else s += State(v);
  }
  void merge(State& a, const State& b) const { a += b; }
  // Folds n unit-stride elements; only used for floating dtypes (integer sums are exact
  // in any order and already fast).
  static constexpr bool kContiguousFold = is_float_v<T>;
  void fold_contiguous(State& s, const T* q, int64_t n) const {
    if constexpr (K == SumKind::sumsq_sqrt) {
      s += partials::sum<double>(n, [q](int64_t j) {
        const double v = static_cast<double>(ld(q[j]));
        return v * v;
      });
    } else {
      s += partials::sum<double>(n, [q](int64_t j) { return static_cast<double>(ld(q[j])); });
    }
  }
  Out finish(const State& s, int64_t n) const {
    if constexpr (is_float_v<T>) {
      double r = s;
      if constexpr (K == SumKind::mean) r = s / static_cast<double>(n);
      if constexpr (K == SumKind::sumsq_sqrt) r = std::sqrt(s);
      return st<T>(static_cast<C>(r));
    } else {
      (void)n;
      return s;
    }
  }
};

// Welford's online update, with Chan et al.'s pairwise merge of partial states.
template <typename T>
struct VarReducer {
  using C = comp_t<T>;
  struct State {
    double n = 0, mean = 0, m2 = 0;
  };
  using Out = T;
  int64_t correction = 1;
  static constexpr bool kContiguousFold = false;
  State init() const { return {}; }
  void update(State& s, C v, int64_t) const {
    double x = static_cast<double>(v);
    s.n += 1;
    double d = x - s.mean;
    s.mean += d / s.n;
    s.m2 += d * (x - s.mean);
  }
  void merge(State& a, const State& b) const {
    if (b.n == 0) return;
    double n = a.n + b.n, d = b.mean - a.mean;
    a.mean += d * b.n / n;
    a.m2 += b.m2 + d * d * a.n * b.n / n;
    a.n = n;
  }
  Out finish(const State& s, int64_t n) const {
    double den = static_cast<double>(n - correction);
    double r = den > 0 ? s.m2 / den : std::numeric_limits<double>::quiet_NaN();
    return st<T>(static_cast<C>(r));
  }
};

// max/min; NaN wins (propagates), like numpy.
template <typename T, bool IsMax>
struct MinMaxReducer {
  using C = comp_t<T>;
  using State = C;
  using Out = T;
  static constexpr bool kContiguousFold = false;
  State init() const {
    if constexpr (std::is_floating_point_v<C>)
      return IsMax ? -std::numeric_limits<C>::infinity() : std::numeric_limits<C>::infinity();
    else return IsMax ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
  }
  void update(State& s, C v, int64_t) const {
    if ((IsMax ? v > s : v < s) || is_nan(v)) s = v;
  }
  void merge(State& a, const State& b) const {
    if (is_nan(a)) return;
    update(a, b, 0);
  }
  Out finish(const State& s, int64_t) const { return st<T>(s); }
};

// First index of the maximum (a NaN counts as the maximum).
template <typename T>
struct ArgmaxReducer {
  using C = comp_t<T>;
  struct State {
    C v{};
    int64_t i = -1;
  };
  using Out = int64_t;
  static constexpr bool kContiguousFold = false;
  State init() const { return {}; }
  static bool beats(C v, C best) { return v > best || (is_nan(v) && !is_nan(best)); }
  void update(State& s, C v, int64_t r) const {
    if (s.i < 0 || beats(v, s.v)) {
      s.v = v;
      s.i = r;
    }
  }
  // b holds later indices than a
  void merge(State& a, const State& b) const {
    if (b.i >= 0 && (a.i < 0 || beats(b.v, a.v))) a = b;
  }
  Out finish(const State& s, int64_t) const { return s.i; }
};

struct Dims {
  std::vector<int64_t> size, stride;  // stride in elements of x
};

// Merges consecutive entries that walk memory as one dim (keeps row-major order).
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
  if (out.size.empty()) {
    out.size.push_back(1);
    out.stride.push_back(0);
  }
  return out;
}

int64_t offset_of(int64_t linear, const Dims& d) {
  int64_t off = 0;
  for (int64_t k = static_cast<int64_t>(d.size.size()) - 1; k >= 0; --k) {
    off += (linear % d.size[k]) * d.stride[k];
    linear /= d.size[k];
  }
  return off;
}

// Folds reduced elements [r0, r1) (row-major over rd) starting at p into s.
template <typename T, typename Red>
void reduce_range(const Red& red, typename Red::State& s, const T* p, const Dims& rd, int64_t r0, int64_t r1) {
  const int64_t nd = static_cast<int64_t>(rd.size.size());
  const int64_t inner = rd.size[nd - 1], is = rd.stride[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  int64_t rem = r0;
  for (int64_t k = nd - 1; k >= 0; --k) {
    idx[k] = rem % rd.size[k];
    rem /= rd.size[k];
  }
  int64_t r = r0;
  while (r < r1) {
    int64_t off = 0;
    for (int64_t k = 0; k < nd - 1; ++k) off += idx[k] * rd.stride[k];
    const T* q = p + off;
    int64_t c0 = idx[nd - 1], c1 = std::min(inner, c0 + (r1 - r));
    if (is == 1) {
      if constexpr (Red::kContiguousFold) red.fold_contiguous(s, q + c0, c1 - c0);
      else
        for (int64_t c = c0; c < c1; ++c) red.update(s, ld(q[c]), r + c - c0);
    } else {
      for (int64_t c = c0; c < c1; ++c) red.update(s, ld(q[c * is]), r + c - c0);
    }
    r += c1 - c0;
    idx[nd - 1] = 0;
    for (int64_t k = nd - 2; k >= 0; --k) {
      if (++idx[k] < rd.size[k]) break;
      idx[k] = 0;
    }
  }
}

constexpr int64_t kChunk = 16384;  // reduced elements per partial state

template <typename T, typename Red>
void reduce_rowwise(const Red& red, const T* x, const Dims& kept, const Dims& rd, int64_t R,
                    typename Red::Out* out) {
  using State = typename Red::State;
  const int64_t O = shape_numel(kept.size);
  const int64_t nchunks = std::max<int64_t>(1, (R + kChunk - 1) / kChunk);
  const bool par = O * R > detail::kParallelGrain;
  if (nchunks == 1) {
#pragma omp parallel for schedule(static) if (par)
    for (int64_t o = 0; o < O; ++o) {
      State s = red.init();
      if (R > 0) reduce_range<T>(red, s, x + offset_of(o, kept), rd, 0, R);
      out[o] = red.finish(s, R);
    }
    return;
  }
  std::vector<State> part(static_cast<size_t>(O * nchunks));
  const int64_t tasks = O * nchunks;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < tasks; ++t) {
    int64_t o = t / nchunks, ch = t % nchunks;
    State s = red.init();
    reduce_range<T>(red, s, x + offset_of(o, kept), rd, ch * kChunk, std::min(R, (ch + 1) * kChunk));
    part[t] = s;
  }
  for (int64_t o = 0; o < O; ++o) {
    State s = part[o * nchunks];
    for (int64_t ch = 1; ch < nchunks; ++ch) red.merge(s, part[o * nchunks + ch]);
    out[o] = red.finish(s, R);
  }
}

// x's last dim (size `cols`, stride 1) is kept; `outer` are the other kept dims.
template <typename T, typename Red>
void reduce_columnwise(const Red& red, const T* x, const Dims& outer, int64_t cols, const Dims& rd, int64_t R,
                       typename Red::Out* out) {
  using State = typename Red::State;
  constexpr int64_t kBlock = 256;
  const int64_t Ko = shape_numel(outer.size);
  const int64_t nblk = (cols + kBlock - 1) / kBlock;
  const int64_t tasks = Ko * nblk;
  const int64_t nd = static_cast<int64_t>(rd.size.size());
#pragma omp parallel for schedule(static) if (Ko * cols * R > detail::kParallelGrain)
  for (int64_t t = 0; t < tasks; ++t) {
    int64_t ko = t / nblk, c0 = (t % nblk) * kBlock, nc = std::min(kBlock, cols - c0);
    State s[kBlock];
    for (int64_t c = 0; c < nc; ++c) s[c] = red.init();
    const T* base = x + offset_of(ko, outer) + c0;
    std::vector<int64_t> idx(nd, 0);
    int64_t off = 0;
    for (int64_t r = 0; r < R; ++r) {
      const T* q = base + off;
      for (int64_t c = 0; c < nc; ++c) red.update(s[c], ld(q[c]), r);
      for (int64_t k = nd - 1; k >= 0; --k) {  // odometer step, offset kept incrementally
        off += rd.stride[k];
        if (++idx[k] < rd.size[k]) break;
        off -= rd.stride[k] * rd.size[k];
        idx[k] = 0;
      }
    }
    typename Red::Out* o = out + ko * cols + c0;
    for (int64_t c = 0; c < nc; ++c) o[c] = red.finish(s[c], R);
  }
}

template <typename T, typename Red>
void run_reduce(const Red& red, const Tensor& x, const std::vector<int64_t>& axes, const Tensor& out) {
  using Out = typename Red::Out;
  LATHE_CHECK(out.dtype() == dtype_of<Out>::value)
      << "reduce: output dtype " << dtype_name(out.dtype()) << " does not match the kernel's "
      << dtype_name(dtype_of<Out>::value);
  const int64_t nd = x.dim();
  std::vector<bool> red_axis(static_cast<size_t>(nd), false);
  for (int64_t a : axes) red_axis[a] = true;
  Dims kept, rdraw;
  for (int64_t d = 0; d < nd; ++d) {
    Dims& to = red_axis[d] ? rdraw : kept;
    to.size.push_back(x.size(d));
    to.stride.push_back(x.stride(d));
  }
  const int64_t R = shape_numel(rdraw.size);
  Dims rd = coalesce(rdraw);
  const T* xp = static_cast<const T*>(x.raw_data());
  Out* op = static_cast<Out*>(out.raw_data());
  if (out.numel() == 0) return;
  bool columnwise = nd >= 1 && !red_axis[nd - 1] && x.stride(nd - 1) == 1 && x.size(nd - 1) >= 8 && R > 1;
  if (columnwise) {
    Dims outer = kept;
    int64_t cols = outer.size.back();
    outer.size.pop_back();
    outer.stride.pop_back();
    reduce_columnwise<T>(red, xp, outer, cols, rd, R, op);
  } else {
    reduce_rowwise<T>(red, xp, kept, rd, R, op);
  }
}

template <typename T>
void reduce_t(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction,
              const Tensor& out) {
  switch (op) {
    case ReduceOp::sum: return run_reduce<T>(SumReducer<T, SumKind::sum>{}, x, axes, out);
    case ReduceOp::max: return run_reduce<T>(MinMaxReducer<T, true>{}, x, axes, out);
    case ReduceOp::min: return run_reduce<T>(MinMaxReducer<T, false>{}, x, axes, out);
    case ReduceOp::argmax: return run_reduce<T>(ArgmaxReducer<T>{}, x, axes, out);
    case ReduceOp::mean:
    case ReduceOp::var:
    case ReduceOp::norm:
      if constexpr (is_float_v<T>) {
        if (op == ReduceOp::mean) return run_reduce<T>(SumReducer<T, SumKind::mean>{}, x, axes, out);
        if (op == ReduceOp::norm) return run_reduce<T>(SumReducer<T, SumKind::sumsq_sqrt>{}, x, axes, out);
        VarReducer<T> v;
        v.correction = correction;
        return run_reduce<T>(v, x, axes, out);
      } else {
        LATHE_FAIL() << "reduce: mean/var/norm need a floating dtype, got " << dtype_name(x.dtype());
      }
  }
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out) {
  LATHE_DISPATCH_DTYPE(x.dtype(), T, reduce_t<T>(op, x, axes, correction, out));
}

}  // namespace lathe::kernels::cpu
