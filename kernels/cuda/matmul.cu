// CUDA matmul through cuBLAS (cublasGemmStridedBatchedEx), on strided views where BLAS can
// read them directly.
//
// lathe is row-major and cuBLAS column-major. A row-major matrix is the column-major
// storage of its transpose, so out = op(a) @ op(b) is computed as
// out^T = op(b)^T @ op(a)^T in column-major: b is cuBLAS's first operand, a its second,
// m = N, n = M, and out (contiguous) is an N x M column-major matrix with ld N.
//
// Layouts follow kernels/cpu/matmul.cpp: a stored matrix with strides (s0, s1) is
// row-major (ld s0) when s1 == 1 and column-major (ld s1) when s0 == 1; the second case
// flips the BLAS transpose flag instead of copying. Only a matrix with neither unit stride
// is copied, keeping its broadcast (stride-0) batch dims unmaterialised.
//
// Batch dims: when b is shared by every batch entry (stride 0, as a 2-D weight expanded by
// the op layer) and a's batch folds into its rows, the whole product is one GEMM with
// batch * M rows. Otherwise the trailing batch dims that a and b each address with a
// single stride become cuBLAS's batch, and the remaining leading dims are looped on the
// host (an operand is made contiguous instead when that loop would be long).
//
// Precision: f32 runs in exact f32 (CUBLAS_COMPUTE_32F with the default math mode, so no
// TF32), f64 in f64, bf16/f16 with f32 accumulation and one rounding on store; reduced-
// precision split-K reductions are disallowed so the 16-bit outputs round once, as on the CPU.
// matmul_acc is the same call with beta = 1 (C += alpha op(a) op(b)).
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

#define LATHE_CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                             \
    cublasStatus_t lathe_st_ = (expr);                                                             \
    LATHE_CHECK(lathe_st_ == CUBLAS_STATUS_SUCCESS) << "cuBLAS error in " #expr ": "               \
                                                    << cublasGetStatusString(lathe_st_);           \
  } while (0)

namespace lathe::kernels::cuda {

namespace {

constexpr int kMaxDevices = 16;
// cuBLAS's recommended workspace on Hopper. Setting it explicitly keeps cuBLAS from
// allocating during a call, which CUDA graph capture requires.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// One handle per device, bound to the device's compute stream, created on first use.
cublasHandle_t handle(int dev) {
  static std::mutex mu;
  static cublasHandle_t handles[kMaxDevices] = {};
  LATHE_CHECK(dev >= 0 && dev < kMaxDevices) << "matmul: cuda:" << dev << " is beyond the supported devices";
  std::lock_guard<std::mutex> lk(mu);
  if (!handles[dev]) {
    set_device(dev);
    cublasHandle_t h = nullptr;
    LATHE_CUBLAS_CHECK(cublasCreate(&h));
    // SetStream resets the workspace to cuBLAS's own pool, so it goes first.
    LATHE_CUBLAS_CHECK(cublasSetStream(h, stream(dev)));
    void* ws = nullptr;
    LATHE_CUDA_CHECK(cudaMalloc(&ws, kWorkspaceBytes));  // held for the process's lifetime
    LATHE_CUBLAS_CHECK(cublasSetWorkspace(h, ws, kWorkspaceBytes));
    LATHE_CUBLAS_CHECK(
        cublasSetMathMode(h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                       CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    handles[dev] = h;
  }
  return handles[dev];
}

// Copy of t, contiguous except for its stride-0 dims among the first `lead` dims, which
// stay stride 0 (a shared weight is not copied once per batch entry).
Tensor compact_copy(const Tensor& t, int64_t lead) {
  Shape s = t.shape();
  for (int64_t d = 0; d < lead; ++d)
    if (t.stride(d) == 0) s[d] = 1;
  Tensor src = t.as_strided(s, t.strides(), t.offset());
  Tensor dst = Tensor::empty(s, t.dtype(), t.device());
  dst.copy_(src);
  return dst.expand(t.shape());
}

struct BlasMat {
  bool ok = false;
  bool trans = false;  // cuBLAS op flag (see the file comment: same rule as the CPU's row-major flag)
  int64_t ld = 0;
};

// A stored (rows, cols) matrix with strides (s0, s1), used as op(stored) with op =
// transpose iff `trans`. Row-major storage keeps the flag, column-major storage flips it;
// the derivation is the same for both operands of out^T = op(b)^T op(a)^T.
BlasMat blas_layout(int64_t rows, int64_t cols, int64_t s0, int64_t s1, bool trans) {
  const int64_t rmin = std::max<int64_t>(rows, 1), cmin = std::max<int64_t>(cols, 1);
  if (cols == 1 || s1 == 1) {  // row-major (any column stride works for a single column)
    const int64_t ld = rows == 1 ? cmin : s0;
    if (ld >= cmin) return {true, trans, ld};
  }
  if (rows == 1 || s0 == 1) {  // column-major
    const int64_t ld = cols == 1 ? rmin : s1;
    if (ld >= rmin) return {true, !trans, ld};
  }
  return {};
}

BlasMat layout_of(const Tensor& t, bool trans) {
  return blas_layout(t.size(-2), t.size(-1), t.stride(-2), t.stride(-1), trans);
}

// Whether batch dims [from, nb) of t are addressed by one stride (linear batch index times
// `stride`); dims of size 1 do not constrain it.
bool single_stride(const Tensor& t, const Shape& bsz, int64_t from, int64_t& stride) {
  const int64_t nb = static_cast<int64_t>(bsz.size());
  bool have = false;
  int64_t expect = 0;
  stride = 0;
  for (int64_t d = nb - 1; d >= from; --d) {
    if (bsz[d] == 1) continue;
    if (!have) {
      stride = t.stride(d);
      expect = stride * bsz[d];
      have = true;
    } else {
      if (t.stride(d) != expect) return false;
      expect *= bsz[d];
    }
  }
  return true;
}

struct GemmTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
  bool dbl;  // alpha/beta are double
};

GemmTypes gemm_types(DType dt, const Tensor& a, const Tensor& b) {
  switch (dt) {
    case DType::f32: return {CUDA_R_32F, CUBLAS_COMPUTE_32F, false};
    case DType::f64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F, true};
    case DType::bf16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, false};
    case DType::f16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F, false};
    default:
      LATHE_FAIL() << "matmul: no cuda kernel for dtype " << dtype_name(dt) << " (a " << a.shape_str() << ", b "
                   << b.shape_str() << ")";
  }
  return {};
}

int to_int(int64_t v, const char* what) {
  LATHE_CHECK(v >= 0 && v <= INT_MAX) << "matmul: " << what << " = " << v << " exceeds cuBLAS's int range";
  return static_cast<int>(v);
}

}  // namespace

namespace {

// out = alpha op(a) op(b) + beta out with beta 0 (matmul) or 1 (matmul_acc).
void gemm_into(const Tensor& a_in, const Tensor& b_in, bool ta, bool tb, double alpha_v, double beta_v,
               const Tensor& out) {
  const int dev = out.device().index;
  set_device(dev);
  const int64_t M = out.size(-2), N = out.size(-1);
  const int64_t K = ta ? a_in.size(-2) : a_in.size(-1);
  if (out.numel() == 0) return;
  LATHE_CHECK(a_in.dtype() == out.dtype() && b_in.dtype() == out.dtype())
      << "matmul: dtypes differ: a " << dtype_name(a_in.dtype()) << ", b " << dtype_name(b_in.dtype()) << ", out "
      << dtype_name(out.dtype());
  LATHE_CHECK(out.is_contiguous()) << "matmul: out must be contiguous";
  cudaStream_t s = stream(dev);
  if (K == 0) {  // an empty sum; with beta = 0 and k = 0 cuBLAS need not write C at all
    if (beta_v == 0) LATHE_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), s));
    return;
  }
  const GemmTypes gt = gemm_types(out.dtype(), a_in, b_in);
  const int64_t nb = out.dim() - 2;
  const Shape bsz(out.shape().begin(), out.shape().end() - 2);
  const int64_t batch = out.numel() / (M * N);

  Tensor a = a_in, b = b_in;
  BlasMat la = layout_of(a, ta), lb = layout_of(b, tb);
  if (!la.ok) {
    a = compact_copy(a, nb);
    la = layout_of(a, ta);
  }
  if (!lb.ok) {
    b = compact_copy(b, nb);
    lb = layout_of(b, tb);
  }
  LATHE_CHECK(la.ok && lb.ok) << "matmul: no BLAS layout for a " << a.shape_str() << " / b " << b.shape_str();

  const float alpha_f = static_cast<float>(alpha_v), beta_f = static_cast<float>(beta_v);
  const void* alpha = gt.dbl ? static_cast<const void*>(&alpha_v) : static_cast<const void*>(&alpha_f);
  const void* beta = gt.dbl ? static_cast<const void*>(&beta_v) : static_cast<const void*>(&beta_f);
  cublasHandle_t h = handle(dev);
  const size_t es = out.element_size();

  // C^T (N x Mc, column-major, ld N) = op(b)^T op(a)^T for `count` entries at the given strides.
  auto gemm = [&](const char* ap, const BlasMat& lay_a, int64_t sa, const char* bp, const BlasMat& lay_b,
                  int64_t sb, char* cp, int64_t Mc, int64_t count) {
    LATHE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, lay_b.trans ? CUBLAS_OP_T : CUBLAS_OP_N, lay_a.trans ? CUBLAS_OP_T : CUBLAS_OP_N, to_int(N, "N"),
        to_int(Mc, "M"), to_int(K, "K"), alpha, bp, gt.data, to_int(lay_b.ld, "ldb"), static_cast<long long>(sb),
        ap, gt.data, to_int(lay_a.ld, "lda"), static_cast<long long>(sa), beta, cp, gt.data, to_int(N, "ldc"),
        static_cast<long long>(Mc * N), to_int(count, "batch"), gt.compute, CUBLAS_GEMM_DEFAULT));
  };
  const char* ap = static_cast<const char*>(a.raw_data());
  const char* bp = static_cast<const char*>(b.raw_data());
  char* cp = static_cast<char*>(out.raw_data());

  // One GEMM with batch * M rows: b shared by every entry and a's batch continuing its rows
  // (row i of entry e at e * sa + i * row_stride, so sa == M * row_stride).
  if (batch > 1) {
    int64_t sa = 0, sb = 0;
    if (single_stride(b, bsz, 0, sb) && sb == 0 && single_stride(a, bsz, 0, sa)) {
      const int64_t row_stride = ta ? a.stride(-1) : a.stride(-2);
      if (sa == M * row_stride) {
        const int64_t R = batch * M;
        const BlasMat lf = ta ? blas_layout(K, R, a.stride(-2), a.stride(-1), ta)
                              : blas_layout(R, K, a.stride(-2), a.stride(-1), ta);
        if (lf.ok) {
          gemm(ap, lf, 0, bp, lb, 0, cp, R, 1);
          return;
        }
      }
    }
  }

  // Smallest p such that batch dims [p, nb) are single-strided in both a and b.
  auto split_of = [&]() {
    int64_t p = 0, st = 0;
    while (p < nb && !(single_stride(a, bsz, p, st) && single_stride(b, bsz, p, st))) ++p;
    return p;
  };
  int64_t p = split_of();
  int64_t loops = 1;
  for (int64_t d = 0; d < p; ++d) loops *= bsz[d];
  if (loops > 16) {
    // A long host loop of small batched calls: materialise the operand(s) instead.
    int64_t st = 0;
    if (!single_stride(a, bsz, 0, st)) {
      a = a.contiguous();
      la = layout_of(a, ta);
      ap = static_cast<const char*>(a.raw_data());
    }
    if (!single_stride(b, bsz, 0, st)) {
      b = b.contiguous();
      lb = layout_of(b, tb);
      bp = static_cast<const char*>(b.raw_data());
    }
    LATHE_CHECK(la.ok && lb.ok) << "matmul: no BLAS layout for a " << a.shape_str() << " / b " << b.shape_str();
    p = split_of();
    loops = 1;
    for (int64_t d = 0; d < p; ++d) loops *= bsz[d];
  }
  int64_t sa = 0, sb = 0;
  single_stride(a, bsz, p, sa);
  single_stride(b, bsz, p, sb);
  const int64_t inner = loops > 0 ? batch / loops : 0;
  for (int64_t li = 0; li < loops; ++li) {
    int64_t oa = 0, ob = 0, rem = li;
    for (int64_t d = p - 1; d >= 0; --d) {
      const int64_t i = rem % bsz[d];
      rem /= bsz[d];
      oa += i * a.stride(d);
      ob += i * b.stride(d);
    }
    gemm(ap + oa * static_cast<int64_t>(es), la, sa, bp + ob * static_cast<int64_t>(es), lb, sb,
         cp + li * inner * M * N * static_cast<int64_t>(es), M, inner);
  }
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, const Tensor& out) {
  gemm_into(a, b, ta, tb, 1.0, 0.0, out);
}

void matmul_acc(const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha, const Tensor& out) {
  gemm_into(a, b, ta, tb, alpha, 1.0, out);
}

}  // namespace lathe::kernels::cuda
