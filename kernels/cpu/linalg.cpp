// LAPACK's Fortran entry points, called on row-major data by reading it as the transposed
// column-major matrix (no copy beyond the one LAPACK destroys): a row-major [m, n] is the
// column-major n x m matrix X = a^T, and the SVD X = Ux S VxT gives a = VxT^T S Ux^T, so
// Ux (n x k, column-major) is already vt [k, n] row-major and VxT (k x m) is u [m, k].
#include "kernels/cpu/linalg.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

extern "C" {
// Hidden Fortran string lengths are left out: every character argument here is one letter
// and LAPACK never reads their lengths.
void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s, float* u,
             const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork, int* iwork, int* info);
void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda, double* s, double* u,
             const int* ldu, double* vt, const int* ldvt, double* work, const int* lwork, int* iwork, int* info);
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work, const int* lwork,
             int* info);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work, const int* lwork,
             int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau, float* work,
             const int* lwork, int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau, double* work,
             const int* lwork, int* info);
}

namespace lathe::kernels::cpu {

namespace {

void gesdd(const char* jobz, int m, int n, float* a, int lda, float* s, float* u, int ldu, float* vt, int ldvt,
           float* work, int lwork, int* iwork, int* info) {
  sgesdd_(jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info);
}
void gesdd(const char* jobz, int m, int n, double* a, int lda, double* s, double* u, int ldu, double* vt, int ldvt,
           double* work, int lwork, int* iwork, int* info) {
  dgesdd_(jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info);
}
void geqrf(int m, int n, float* a, int lda, float* tau, float* work, int lwork, int* info) {
  sgeqrf_(&m, &n, a, &lda, tau, work, &lwork, info);
}
void geqrf(int m, int n, double* a, int lda, double* tau, double* work, int lwork, int* info) {
  dgeqrf_(&m, &n, a, &lda, tau, work, &lwork, info);
}
void orgqr(int m, int n, int k, float* a, int lda, const float* tau, float* work, int lwork, int* info) {
  sorgqr_(&m, &n, &k, a, &lda, tau, work, &lwork, info);
}
void orgqr(int m, int n, int k, double* a, int lda, const double* tau, double* work, int lwork, int* info) {
  dorgqr_(&m, &n, &k, a, &lda, tau, work, &lwork, info);
}

template <typename T>
void svd_impl(const Tensor& a, const SvdOut& out) {
  const int m = static_cast<int>(a.size(0)), n = static_cast<int>(a.size(1));
  const int k = std::min(m, n);
  // Column-major X = a^T is n x m; gesdd overwrites it, so work on a copy.
  std::vector<T> x(a.data<T>(), a.data<T>() + a.numel());
  for (T v : x)
    LATHE_CHECK(std::isfinite(static_cast<double>(v))) << "svd: input [" << m << ", " << n << "] is not finite";
  const int lda = std::max(1, n);
  std::vector<int> iwork(8 * static_cast<size_t>(k));
  int info = 0, lwork = -1;
  T wq = 0;
  gesdd("S", n, m, x.data(), lda, out.s.data<T>(), out.vt.data<T>(), lda, out.u.data<T>(), std::max(1, k), &wq,
        lwork, iwork.data(), &info);
  LATHE_CHECK(info == 0) << "svd: LAPACK gesdd workspace query failed (info " << info << ")";
  lwork = static_cast<int>(wq) + 1;
  std::vector<T> work(static_cast<size_t>(lwork));
  gesdd("S", n, m, x.data(), lda, out.s.data<T>(), out.vt.data<T>(), lda, out.u.data<T>(), std::max(1, k),
        work.data(), lwork, iwork.data(), &info);
  LATHE_CHECK(info == 0) << "svd: LAPACK gesdd on [" << m << ", " << n << "] "
                         << (info > 0 ? "did not converge" : "rejected an argument") << " (info " << info << ")";
}

template <typename T>
void qr_impl(const Tensor& a, const Tensor& q) {
  const int m = static_cast<int>(a.size(0)), k = static_cast<int>(a.size(1));
  if (k == 0) return;
  // LAPACK wants the column-major m x k matrix: transpose the row-major input once.
  const T* src = a.data<T>();
  std::vector<T> w(static_cast<size_t>(m) * k);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < k; ++j) w[i + static_cast<size_t>(j) * m] = src[static_cast<size_t>(i) * k + j];
  std::vector<T> tau(static_cast<size_t>(k));
  int info = 0;
  T wq1 = 0, wq2 = 0;
  geqrf(m, k, w.data(), m, tau.data(), &wq1, -1, &info);
  LATHE_CHECK(info == 0) << "qr_q: LAPACK geqrf workspace query failed (info " << info << ")";
  orgqr(m, k, k, w.data(), m, tau.data(), &wq2, -1, &info);
  LATHE_CHECK(info == 0) << "qr_q: LAPACK orgqr workspace query failed (info " << info << ")";
  const int lwork = static_cast<int>(std::max(wq1, wq2)) + 1;
  std::vector<T> work(static_cast<size_t>(lwork));
  geqrf(m, k, w.data(), m, tau.data(), work.data(), lwork, &info);
  LATHE_CHECK(info == 0) << "qr_q: LAPACK geqrf on [" << m << ", " << k << "] failed (info " << info << ")";
  orgqr(m, k, k, w.data(), m, tau.data(), work.data(), lwork, &info);
  LATHE_CHECK(info == 0) << "qr_q: LAPACK orgqr on [" << m << ", " << k << "] failed (info " << info << ")";
  T* dst = q.data<T>();
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < k; ++j) dst[static_cast<size_t>(i) * k + j] = w[i + static_cast<size_t>(j) * m];
}

}  // namespace

void svd(const Tensor& a, const SvdOut& out) {
  if (a.numel() == 0) return;
  if (a.dtype() == DType::f32) return svd_impl<float>(a, out);
  if (a.dtype() == DType::f64) return svd_impl<double>(a, out);
  LATHE_FAIL() << "svd: needs f32 or f64 on the CPU, got " << dtype_name(a.dtype());
}

void qr_q(const Tensor& a, const Tensor& q) {
  if (a.dtype() == DType::f32) return qr_impl<float>(a, q);
  if (a.dtype() == DType::f64) return qr_impl<double>(a, q);
  LATHE_FAIL() << "qr_q: needs f32 or f64 on the CPU, got " << dtype_name(a.dtype());
}

}  // namespace lathe::kernels::cpu
