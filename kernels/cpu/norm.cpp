// Layer norm (Ba et al., 2016) and RMS norm (Zhang & Sennrich, 2019) over the last dim,
// with fused backward passes.
//
// Row statistics are accumulated in double (cheap next to the memory traffic) so f32 rows
// of a few thousand values keep full precision, each in kParts independent partials
// combined in a fixed order (kernels/cpu/partials.h): no serial add chain per row, and the
// same bits for any thread count. The weight/bias gradients are sums over
// rows; to stay deterministic for any thread count, rows are cut into blocks whose number
// depends only on the row count, each block writes its own partial sums, and the partials
// are added in block order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/nn.h"
#include "kernels/cpu/partials.h"

namespace lathe::kernels::cpu {

using nn_detail::acc_dtype;
using nn_detail::acc_t;
using nn_detail::load;
using nn_detail::store;

namespace {

// Rows per block for the parameter-gradient partial sums: at most ~64 blocks.
int64_t rows_per_block(int64_t rows) { return std::max<int64_t>(16, (rows + 63) / 64); }

Tensor as_acc(const Tensor& t, DType acc) { return t.defined() ? t.to(acc).contiguous() : Tensor(); }

template <typename T>
void layer_norm_kernel(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) {
  using A = acc_t<T>;
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const T* xp = x.data<T>();
  T* yp = out.y.data<T>();
  A* mp = out.mean.data<A>();
  A* rp = out.rstd.data<A>();
  const A* wp = w.defined() ? w.data<A>() : nullptr;
  const A* bp = b.defined() ? b.data<A>() : nullptr;
#pragma omp parallel for schedule(static) if (rows * C > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xp + r * C;
    T* yr = yp + r * C;
    const double s = partials::sum<double>(C, [xr](int64_t j) { return static_cast<double>(load(xr[j])); });
    const double mean = s / static_cast<double>(C);
    // two-pass variance: no cancellation for rows with a large mean
    const double v = partials::sum<double>(C, [xr, mean](int64_t j) {
      const double d = static_cast<double>(load(xr[j])) - mean;
      return d * d;
    });
    const double rstd = 1.0 / std::sqrt(v / static_cast<double>(C) + eps);
    mp[r] = static_cast<A>(mean);
    rp[r] = static_cast<A>(rstd);
    const A am = static_cast<A>(mean), ar = static_cast<A>(rstd);
    for (int64_t j = 0; j < C; ++j) {
      A h = (load(xr[j]) - am) * ar;
      if (wp) h *= wp[j];
      if (bp) h += bp[j];
      yr[j] = store<T>(h);
    }
  }
}

template <typename T>
void rms_norm_kernel(const Tensor& x, const Tensor& w, double eps, const NormOut& out) {
  using A = acc_t<T>;
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const T* xp = x.data<T>();
  T* yp = out.y.data<T>();
  A* rp = out.rstd.data<A>();
  const A* wp = w.defined() ? w.data<A>() : nullptr;
#pragma omp parallel for schedule(static) if (rows * C > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xp + r * C;
    T* yr = yp + r * C;
    const double ss = partials::sum<double>(C, [xr](int64_t j) {
      const double v = static_cast<double>(load(xr[j]));
      return v * v;
    });
    const A rstd = static_cast<A>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
    rp[r] = rstd;
    for (int64_t j = 0; j < C; ++j) {
      A h = load(xr[j]) * rstd;
      if (wp) h *= wp[j];
      yr[j] = store<T>(h);
    }
  }
}

// Shared backward of both norms. With xhat = (x - mean) * rstd (mean = 0 for RMS norm)
// and g = gy * w:
//   layer norm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMS norm:   dx = rstd * (g - xhat * mean(g * xhat))
// dw = sum_rows gy * xhat, db = sum_rows gy.
// dw_acc/db_acc (acc dtype [C], may be undefined) receive the parameter gradients.
template <typename T>
void norm_backward_kernel(bool centered, const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, const Tensor& dx, const Tensor& dw_acc, const Tensor& db_acc) {
  using A = acc_t<T>;
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const T* xp = x.data<T>();
  const T* gp = gy.data<T>();
  T* dxp = dx.data<T>();
  const A* mp = centered ? mean.data<A>() : nullptr;
  const A* rp = rstd.data<A>();
  const A* wp = w.defined() ? w.data<A>() : nullptr;
  const bool need_dw = dw_acc.defined(), need_db = db_acc.defined();

  const int64_t per = rows_per_block(rows);
  const int64_t nblk = (rows + per - 1) / per;
  std::vector<A> pw(need_dw ? static_cast<size_t>(nblk * C) : 0, A(0));
  std::vector<A> pb(need_db ? static_cast<size_t>(nblk * C) : 0, A(0));

#pragma omp parallel if (rows * C > 16384)
  {
    std::vector<A> g(static_cast<size_t>(C)), xh(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t r0 = blk * per, r1 = std::min(rows, r0 + per);
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = xp + r * C;
        const T* gr = gp + r * C;
        T* dr = dxp + r * C;
        const A mu = mp ? mp[r] : A(0), rs = rp[r];
        for (int64_t j = 0; j < C; ++j) {
          const A gyj = load(gr[j]);
          xh[j] = (load(xr[j]) - mu) * rs;
          g[j] = wp ? gyj * wp[j] : gyj;
          if (need_dw) pw[blk * C + j] += gyj * xh[j];
          if (need_db) pb[blk * C + j] += gyj;
        }
        A sg, sgx;
        const A* gv = g.data();
        const A* xv = xh.data();
        partials::sum2<A>(
            C, [gv](int64_t j) { return gv[j]; }, [gv, xv](int64_t j) { return gv[j] * xv[j]; }, sg, sgx);
        const A a = centered ? sg / static_cast<A>(C) : A(0);
        const A bcoef = sgx / static_cast<A>(C);
        for (int64_t j = 0; j < C; ++j) dr[j] = store<T>(rs * (g[j] - a - xh[j] * bcoef));
      }
    }
  }
  // Partials added in block order: the same result for any number of threads.
  auto reduce = [&](const std::vector<A>& part, const Tensor& dst) {
    A* d = dst.data<A>();
#pragma omp parallel for schedule(static) if (nblk * C > 16384)
    for (int64_t j = 0; j < C; ++j) {
      A s = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) s += part[blk * C + j];
      d[j] = s;
    }
  };
  if (need_dw) reduce(pw, dw_acc);
  if (need_db) reduce(pb, db_acc);
}

void norm_backward(bool centered, const char* op, const Tensor& gy, const Tensor& x, const Tensor& w,
                   const Tensor& mean, const Tensor& rstd, const NormGrads& out) {
  const DType acc = acc_dtype(x.dtype());
  Tensor xc = x.contiguous(), gc = gy.contiguous(), wc = as_acc(w, acc);
  Tensor mc = centered ? mean.contiguous() : Tensor(), rc = rstd.contiguous();
  const int64_t C = x.size(-1);
  // Parameter gradients are summed in the compute precision, then cast to their dtype.
  auto acc_out = [&](const Tensor& t) {
    if (!t.defined()) return Tensor();
    return t.dtype() == acc ? t : Tensor::empty({C}, acc, Device::cpu());
  };
  Tensor dw = acc_out(out.dweight), db = acc_out(out.dbias);
  LATHE_NN_DISPATCH_FLOAT(op, x.dtype(), T,
                          norm_backward_kernel<T>(centered, gc, xc, wc, mc, rc, out.dx, dw, db));
  if (dw.defined() && !dw.is_same(out.dweight)) out.dweight.copy_(dw);
  if (db.defined() && !db.is_same(out.dbias)) out.dbias.copy_(db);
}

}  // namespace

void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) {
  const DType acc = acc_dtype(x.dtype());
  Tensor xc = x.contiguous(), wc = as_acc(w, acc), bc = as_acc(b, acc);
  LATHE_NN_DISPATCH_FLOAT("layer_norm", x.dtype(), T, layer_norm_kernel<T>(xc, wc, bc, eps, out));
}

void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& rstd, const NormGrads& out) {
  norm_backward(true, "layer_norm_backward", gy, x, w, mean, rstd, out);
}

void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) {
  Tensor xc = x.contiguous(), wc = as_acc(w, acc_dtype(x.dtype()));
  LATHE_NN_DISPATCH_FLOAT("rms_norm", x.dtype(), T, rms_norm_kernel<T>(xc, wc, eps, out));
}

void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                       const NormGrads& out) {
  norm_backward(false, "rms_norm_backward", gy, x, w, Tensor(), rstd, out);
}

}  // namespace lathe::kernels::cpu
