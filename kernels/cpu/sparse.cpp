// SpIEL's sparse weight gradient on the CPU: one dot product over the tokens per selected
// entry, threads split over the entries (each sums its tokens in order, so the result does not
// depend on the thread count).
#include "kernels/cpu/elementwise.h"

namespace lathe::kernels::cpu {

using detail::comp_t;
using detail::ld;
using detail::st;

namespace {

template <typename X>
void sparse_grad_loop(const X* xp, const X* gp, const int64_t* r, const int64_t* c, X* o, int64_t T, int64_t in,
                      int64_t no, int64_t k) {
  using C = comp_t<X>;
#pragma omp parallel for schedule(static) if (k * T > detail::kParallelGrain)
  for (int64_t n = 0; n < k; ++n) {
    const X* xc = xp + c[n];
    const X* gr = gp + r[n];
    C acc = 0;
    for (int64_t t = 0; t < T; ++t) acc += ld(xc[t * in]) * ld(gr[t * no]);
    o[n] = st<X>(acc);
  }
}

}  // namespace

void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols, const Tensor& out) {
  const int64_t T = x.size(0), in = x.size(1), no = dy.size(1), k = out.numel();
  check_index_range("sparse_delta_grad (rows)", rows, no);
  check_index_range("sparse_delta_grad (cols)", cols, in);
  LATHE_DISPATCH_DTYPE(x.dtype(), X, {
    if constexpr (detail::is_float_v<X>) {
      sparse_grad_loop<X>(x.data<X>(), dy.data<X>(), rows.data<int64_t>(), cols.data<int64_t>(), out.data<X>(), T,
                          in, no, k);
    } else {
      LATHE_FAIL() << "sparse_delta_grad: no cpu kernel for dtype " << dtype_name(x.dtype());
    }
  });
}

}  // namespace lathe::kernels::cpu
