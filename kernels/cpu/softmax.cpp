// Softmax and log-softmax along one axis, and their backward passes.
// A contiguous x is seen as [outer, n, inner]; each (outer, inner) lane of n values is
// one independent row (stride `inner`), so any axis works without a transpose.
// Rows are made stable by subtracting their max before exponentiating. Softmax takes one
// exp per element: exp(x - max) is stored, summed, then scaled by 1/sum. exp is
// vmath::exp (kernels/cpu/vmath.h) for float, in a plain loop the compiler vectorizes. Row
// maxima and sums use kParts independent partials (kernels/cpu/partials.h), combined in a
// fixed order, so they overlap instead of forming one serial chain.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/nn.h"
#include "kernels/cpu/partials.h"
#include "kernels/cpu/vmath.h"

namespace lathe::kernels::cpu {

using nn_detail::acc_t;
using nn_detail::load;
using nn_detail::store;

namespace {

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

template <typename T>
void softmax_kernel(const Tensor& x, int64_t axis, bool log, const Tensor& out) {
  using A = acc_t<T>;
  const Lanes l = lanes_of(x.shape(), axis);
  const T* xp = x.data<T>();
  T* op = out.data<T>();
  const int64_t lanes = l.outer * l.inner, n = l.n, st = l.inner;
  // The exps are kept in the compute precision until scaled: in the output row itself when
  // T is the compute type, in a per-thread row buffer otherwise (bf16/f16 would round twice).
  constexpr bool kInPlace = std::is_same_v<T, A>;
#pragma omp parallel if (lanes * n > 16384)
  {
    std::vector<A> buf(kInPlace && !log && st != 1 ? 0 : static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < lanes; ++r) {
      const int64_t base = (r / st) * n * st + (r % st);
      const T* xr = xp + base;
      T* orow = op + base;
      A m = partials::max<A>(n, [xr, st](int64_t j) { return load(xr[j * st]); });
      // A fully masked row (all -inf) has no mass: softmax gives zeros and log-softmax -inf,
      // instead of the NaNs that inf - inf would produce.
      if (m == -std::numeric_limits<A>::infinity()) m = 0;
      // Unit-stride rows: the exps in one vectorizable loop (into the output when it has the
      // compute type, else the row buffer), then summed; the same sum in the same order as
      // the strided path below.
      A* e = buf.data();
      if constexpr (kInPlace) {
        if (!log) e = orow;
      }
      if (st == 1) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) e[j] = vmath::exp_of<A>(load(xr[j]) - m);
      }
      if (log) {
        const A sum = st == 1 ? partials::sum<A>(n, [e](int64_t j) { return e[j]; })
                              : partials::sum<A>(n, [xr, st, m](int64_t j) {
                                  return vmath::exp_of<A>(load(xr[j * st]) - m);
                                });
        // (x - m) - log(sum) rather than x - (m + log(sum)): the first difference is exact for
        // the large entries, so f32 keeps full relative precision even for logits near 1e3.
        const A ls = std::log(sum);
        const A ninf = -std::numeric_limits<A>::infinity();
        for (int64_t j = 0; j < n; ++j) orow[j * st] = store<T>(sum > A(0) ? (load(xr[j * st]) - m) - ls : ninf);
        continue;
      }
      A sum;
      if (st == 1) {
        sum = partials::sum<A>(n, [e](int64_t j) { return e[j]; });
        const A inv = sum > A(0) ? A(1) / sum : A(0);
        for (int64_t j = 0; j < n; ++j) orow[j] = store<T>(e[j] * inv);
      } else if constexpr (kInPlace) {
        sum = partials::sum<A>(n, [xr, orow, st, m](int64_t j) {
          const A ej = vmath::exp_of<A>(load(xr[j * st]) - m);
          orow[j * st] = ej;
          return ej;
        });
        const A inv = sum > A(0) ? A(1) / sum : A(0);
        for (int64_t j = 0; j < n; ++j) orow[j * st] *= inv;
      } else {
        sum = partials::sum<A>(n, [xr, e, st, m](int64_t j) {
          e[j] = vmath::exp_of<A>(load(xr[j * st]) - m);
          return e[j];
        });
        const A inv = sum > A(0) ? A(1) / sum : A(0);
        for (int64_t j = 0; j < n; ++j) orow[j * st] = store<T>(e[j] * inv);
      }
    }
  }
}

template <typename T>
void softmax_backward_kernel(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) {
  using A = acc_t<T>;
  const Lanes l = lanes_of(y.shape(), axis);
  const T* yp = y.data<T>();
  const T* gp = gy.data<T>();
  T* op = out.data<T>();
  const int64_t lanes = l.outer * l.inner, n = l.n, st = l.inner;
#pragma omp parallel for schedule(static) if (lanes * n > 16384)
  for (int64_t r = 0; r < lanes; ++r) {
    const int64_t base = (r / st) * n * st + (r % st);
    const T* yr = yp + base;
    const T* gr = gp + base;
    T* orow = op + base;
    if (log) {
      const A dot = partials::sum<A>(n, [gr, st](int64_t j) { return load(gr[j * st]); });
      for (int64_t j = 0; j < n; ++j)
        orow[j * st] = store<T>(load(gr[j * st]) - vmath::exp_of<A>(load(yr[j * st])) * dot);
    } else {
      const A dot = partials::sum<A>(n, [gr, yr, st](int64_t j) { return load(gr[j * st]) * load(yr[j * st]); });
      for (int64_t j = 0; j < n; ++j) orow[j * st] = store<T>(load(yr[j * st]) * (load(gr[j * st]) - dot));
    }
  }
}

}  // namespace

void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) {
  Tensor xc = x.contiguous();
  LATHE_NN_DISPATCH_FLOAT(log ? "log_softmax" : "softmax", x.dtype(), T,
                          softmax_kernel<T>(xc, axis, log, out));
}

void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) {
  Tensor yc = y.contiguous(), gc = gy.contiguous();
  LATHE_NN_DISPATCH_FLOAT(log ? "log_softmax_backward" : "softmax_backward", y.dtype(), T,
                          softmax_backward_kernel<T>(yc, gc, axis, log, out));
}

}  // namespace lathe::kernels::cpu
