// Thin SVD and QR on cuSOLVER for GaLore's basis refresh. Each call reads cuSOLVER's info
// back to the host (one sync per refresh, every T steps, never on the ordinary step).
//
// Layout: a row-major [m, n] is the column-major n x m matrix X = a^T. cuSOLVER's gesvd needs
// rows >= cols, so with n >= m it factors X directly (its U is vt, its VT is u, see
// kernels/cpu/linalg.cpp); with n < m it factors a itself (a transposed copy) and transposes
// the two factors back.
#include <cusolverDn.h>

#include <algorithm>
#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

#define LATHE_CUSOLVER_CHECK(expr)                                                                \
  do {                                                                                            \
    cusolverStatus_t lathe_st_ = (expr);                                                          \
    LATHE_CHECK(lathe_st_ == CUSOLVER_STATUS_SUCCESS) << "cuSOLVER error " << int(lathe_st_) << " in " #expr; \
  } while (0)

namespace lathe::kernels::cuda {

namespace {

constexpr int kMaxDevices = 16;

cusolverDnHandle_t solver(int dev) {
  static std::mutex mu;
  static cusolverDnHandle_t handles[kMaxDevices] = {};
  LATHE_CHECK(dev >= 0 && dev < kMaxDevices) << "cuSOLVER: cuda:" << dev << " is beyond the supported devices";
  std::lock_guard<std::mutex> lk(mu);
  if (!handles[dev]) {
    set_device(dev);
    cusolverDnHandle_t h = nullptr;
    LATHE_CUSOLVER_CHECK(cusolverDnCreate(&h));
    LATHE_CUSOLVER_CHECK(cusolverDnSetStream(h, stream(dev)));
    handles[dev] = h;
  }
  return handles[dev];
}

cusolverStatus_t gesvd_buffer(cusolverDnHandle_t h, int m, int n, float*, int* lwork) {
  return cusolverDnSgesvd_bufferSize(h, m, n, lwork);
}
cusolverStatus_t gesvd_buffer(cusolverDnHandle_t h, int m, int n, double*, int* lwork) {
  return cusolverDnDgesvd_bufferSize(h, m, n, lwork);
}
cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* s, float* u, int ldu, float* vt,
                       int ldvt, float* work, int lwork, int* info) {
  return cusolverDnSgesvd(h, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, nullptr, info);
}
cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* s, double* u, int ldu,
                       double* vt, int ldvt, double* work, int lwork, int* info) {
  return cusolverDnDgesvd(h, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, nullptr, info);
}
cusolverStatus_t geqrf_buffer(cusolverDnHandle_t h, int m, int n, float* a, int lda, int* lwork) {
  return cusolverDnSgeqrf_bufferSize(h, m, n, a, lda, lwork);
}
cusolverStatus_t geqrf_buffer(cusolverDnHandle_t h, int m, int n, double* a, int lda, int* lwork) {
  return cusolverDnDgeqrf_bufferSize(h, m, n, a, lda, lwork);
}
cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* tau, float* work, int lwork,
                       int* info) {
  return cusolverDnSgeqrf(h, m, n, a, lda, tau, work, lwork, info);
}
cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* tau, double* work, int lwork,
                       int* info) {
  return cusolverDnDgeqrf(h, m, n, a, lda, tau, work, lwork, info);
}
cusolverStatus_t orgqr_buffer(cusolverDnHandle_t h, int m, int n, int k, const float* a, int lda, const float* tau,
                              int* lwork) {
  return cusolverDnSorgqr_bufferSize(h, m, n, k, a, lda, tau, lwork);
}
cusolverStatus_t orgqr_buffer(cusolverDnHandle_t h, int m, int n, int k, const double* a, int lda, const double* tau,
                              int* lwork) {
  return cusolverDnDorgqr_bufferSize(h, m, n, k, a, lda, tau, lwork);
}
cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, int k, float* a, int lda, const float* tau, float* work,
                       int lwork, int* info) {
  return cusolverDnSorgqr(h, m, n, k, a, lda, tau, work, lwork, info);
}
cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, int k, double* a, int lda, const double* tau, double* work,
                       int lwork, int* info) {
  return cusolverDnDorgqr(h, m, n, k, a, lda, tau, work, lwork, info);
}

int read_info(const Tensor& info) { return static_cast<int>(info.to(Device::cpu()).data<int32_t>()[0]); }

template <typename T>
void svd_impl(const Tensor& a, const SvdOut& out) {
  const int dev = a.device().index;
  set_device(dev);
  cusolverDnHandle_t h = solver(dev);
  const int m = static_cast<int>(a.size(0)), n = static_cast<int>(a.size(1)), k = std::min(m, n);
  Tensor info = Tensor::zeros({1}, DType::i32, a.device());
  int lwork = 0;
  if (n >= m) {
    // Column-major X = a^T (n x m, rows >= cols): U_X -> vt, VT_X -> u.
    Tensor x = a.clone();
    LATHE_CUSOLVER_CHECK(gesvd_buffer(h, n, m, static_cast<T*>(nullptr), &lwork));
    Tensor work = Tensor::empty({std::max(1, lwork)}, a.dtype(), a.device());
    LATHE_CUSOLVER_CHECK(gesvd(h, n, m, x.data<T>(), n, out.s.data<T>(), out.vt.data<T>(), n, out.u.data<T>(), k,
                               work.data<T>(), lwork, info.data<int32_t>()));
  } else {
    // a^T row-major [n, m] is a column-major (m x n, rows >= cols): U_a (m x k) lands as
    // u^T [k, m] and VT_a (k x n) as vt^T [n, k].
    Tensor x = a.transpose(0, 1).contiguous();
    Tensor ut = Tensor::empty({k, m}, a.dtype(), a.device());
    Tensor v = Tensor::empty({n, k}, a.dtype(), a.device());
    LATHE_CUSOLVER_CHECK(gesvd_buffer(h, m, n, static_cast<T*>(nullptr), &lwork));
    Tensor work = Tensor::empty({std::max(1, lwork)}, a.dtype(), a.device());
    LATHE_CUSOLVER_CHECK(gesvd(h, m, n, x.data<T>(), m, out.s.data<T>(), ut.data<T>(), m, v.data<T>(), k,
                               work.data<T>(), lwork, info.data<int32_t>()));
    out.u.copy_(ut.transpose(0, 1));
    out.vt.copy_(v.transpose(0, 1));
  }
  const int i = read_info(info);
  LATHE_CHECK(i == 0) << "svd: cuSOLVER gesvd on [" << m << ", " << n << "] "
                      << (i > 0 ? "did not converge (is the input finite?)" : "rejected an argument") << " (info "
                      << i << ")";
}

template <typename T>
void qr_impl(const Tensor& a, const Tensor& q) {
  const int dev = a.device().index;
  set_device(dev);
  cusolverDnHandle_t h = solver(dev);
  const int m = static_cast<int>(a.size(0)), k = static_cast<int>(a.size(1));
  // Column-major m x k = the row-major transpose [k, m].
  Tensor w = a.transpose(0, 1).contiguous();
  Tensor tau = Tensor::empty({k}, a.dtype(), a.device());
  Tensor info = Tensor::zeros({1}, DType::i32, a.device());
  int l1 = 0, l2 = 0;
  LATHE_CUSOLVER_CHECK(geqrf_buffer(h, m, k, w.data<T>(), m, &l1));
  LATHE_CUSOLVER_CHECK(orgqr_buffer(h, m, k, k, w.data<T>(), m, tau.data<T>(), &l2));
  const int lwork = std::max(1, std::max(l1, l2));
  Tensor work = Tensor::empty({lwork}, a.dtype(), a.device());
  LATHE_CUSOLVER_CHECK(geqrf(h, m, k, w.data<T>(), m, tau.data<T>(), work.data<T>(), lwork, info.data<int32_t>()));
  LATHE_CUSOLVER_CHECK(orgqr(h, m, k, k, w.data<T>(), m, tau.data<T>(), work.data<T>(), lwork, info.data<int32_t>()));
  const int i = read_info(info);
  LATHE_CHECK(i == 0) << "qr_q: cuSOLVER on [" << m << ", " << k << "] failed (info " << i << ")";
  q.copy_(w.transpose(0, 1));
}

}  // namespace

void svd(const Tensor& a, const SvdOut& out) {
  if (a.dtype() == DType::f32) return svd_impl<float>(a, out);
  if (a.dtype() == DType::f64) return svd_impl<double>(a, out);
  LATHE_FAIL() << "svd: needs f32 or f64 on CUDA, got " << dtype_name(a.dtype());
}

void qr_q(const Tensor& a, const Tensor& q) {
  if (a.dtype() == DType::f32) return qr_impl<float>(a, q);
  if (a.dtype() == DType::f64) return qr_impl<double>(a, q);
  LATHE_FAIL() << "qr_q: needs f32 or f64 on CUDA, got " << dtype_name(a.dtype());
}

}  // namespace lathe::kernels::cuda
