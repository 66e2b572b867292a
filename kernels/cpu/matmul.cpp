// CPU matmul: OpenBLAS sgemm/dgemm per batch entry, called directly on strided views; a
// weight shared by the batch (a linear layer's) with a's entries stacked row-major is one
// call over all of a's rows.
//
// A stored matrix with strides (s0, s1) is row-major with leading dim s0 when s1 == 1, and
// the row-major transpose (leading dim s1) when s0 == 1; in the second case the BLAS
// transpose flag is flipped instead of copying. Only matrices with neither unit stride
// (or a zero stride from broadcasting inside the matrix) are copied, and the copy keeps
// broadcast batch dims unmaterialized. Small per-batch products skip BLAS and run a
// plain loop in parallel over the batch (BLAS stays single-caller and threads itself).
// bf16/f16 go through f32 and are rounded once at the end. matmul_acc is the same with
// C += alpha op(a) op(b) (BLAS beta = 1).
#include <cblas.h>

#include <cmath>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/linalg.h"

namespace lathe::kernels::cpu {

namespace {

// Copy of t in `dt` that is contiguous except for its stride-0 (broadcast) dims among the
// first `lead` dims, which stay stride 0 (a shared weight is not copied once per batch).
Tensor compact_copy(const Tensor& t, DType dt, int64_t lead) {
  Shape s = t.shape();
  for (int64_t d = 0; d < lead; ++d)
    if (t.stride(d) == 0) s[d] = 1;
  Tensor src = t.as_strided(s, t.strides(), t.offset());
  Tensor dst = Tensor::empty(s, dt, t.device());
  copy_strided_cpu(dst, src);
  return dst.expand(t.shape());
}

struct BlasMat {
  bool ok = false;
  bool trans = false;  // BLAS op flag for the row-major view
  int64_t ld = 0;
};

// (rows, cols) with strides (s0, s1), used as op(stored) with op = transpose iff `trans`.
BlasMat blas_layout(int64_t rows, int64_t cols, int64_t s0, int64_t s1, bool trans) {
  BlasMat m;
  const int64_t rmin = std::max<int64_t>(rows, 1), cmin = std::max<int64_t>(cols, 1);
  // row-major: unit column stride (any stride works for a single column)
  if (cols == 1 || s1 == 1) {
    int64_t ld = rows == 1 ? cmin : s0;
    if (ld >= cmin) return {true, trans, ld};
  }
  // column-major = row-major transpose
  if (rows == 1 || s0 == 1) {
    int64_t ld = cols == 1 ? rmin : s1;
    if (ld >= rmin) return {true, !trans, ld};
  }
  return m;
}

template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  auto opa = ta ? CblasTrans : CblasNoTrans;
  auto opb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, opa, opb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    cblas_dgemm(CblasRowMajor, opa, opb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

// Offsets of batch entry `bi` of a and b (batch dims = all but the last two).
struct BatchOffsets {
  Shape sizes, sa, sb;
  void at(int64_t bi, int64_t& oa, int64_t& ob) const {
    oa = ob = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      int64_t i = bi % sizes[d];
      bi /= sizes[d];
      oa += i * sa[d];
      ob += i * sb[d];
    }
  }
};

// True when every batch dim of b is broadcast (stride 0) and a's batch entries are
// row-major [M, K] blocks following one another at M * lda (size-1 dims skipped), so the
// batched product is the single product of a's rows stacked and b.
bool foldable_batch(const BatchOffsets& bo, const BlasMat& la, int64_t M) {
  if (la.trans) return false;
  int64_t expect = M * la.ld;
  for (int64_t d = static_cast<int64_t>(bo.sizes.size()) - 1; d >= 0; --d) {
    if (bo.sizes[d] == 1) continue;
    if (bo.sb[d] != 0 || bo.sa[d] != expect) return false;
    expect *= bo.sizes[d];
  }
  return true;
}

// out = alpha op(a) op(b) + beta out, beta 0 (matmul: out is not read) or 1 (matmul_acc).
template <typename T>
void matmul_t(const Tensor& a_in, const Tensor& b_in, bool ta, bool tb, const Tensor& out, T alpha = 1, T beta = 0) {
  const int64_t M = out.size(-2), N = out.size(-1);
  const int64_t K = ta ? a_in.size(-2) : a_in.size(-1);
  const int64_t batch = M * N == 0 ? 0 : out.numel() / (M * N);
  T* cp = static_cast<T*>(out.raw_data());
  if (out.numel() == 0) return;
  if (K == 0) {
    if (beta == 0) out.zero_();
    return;
  }
  Tensor a = a_in, b = b_in;
  BatchOffsets bo;
  auto batch_strides = [&]() {
    bo.sizes.assign(out.shape().begin(), out.shape().end() - 2);
    bo.sa.assign(a.strides().begin(), a.strides().end() - 2);
    bo.sb.assign(b.strides().begin(), b.strides().end() - 2);
  };
  batch_strides();

  // Small products: a plain loop on the strided views, parallel over the batch.
  if (M * N * K <= 32 * 32 * 32 && batch > 1) {
    const int64_t a0 = a.stride(-2), a1 = a.stride(-1), b0 = b.stride(-2), b1 = b.stride(-1);
    // element (i, k) of op(a) and (k, j) of op(b)
    const int64_t ai = ta ? a1 : a0, ak = ta ? a0 : a1, bk = tb ? b1 : b0, bj = tb ? b0 : b1;
    const T* ap = static_cast<const T*>(a.raw_data());
    const T* bp = static_cast<const T*>(b.raw_data());
#pragma omp parallel for schedule(static) if (batch * M * N * K > detail::kParallelGrain)
    for (int64_t bi = 0; bi < batch; ++bi) {
      int64_t oa, ob;
      bo.at(bi, oa, ob);
      const T* A = ap + oa;
      const T* B = bp + ob;
      T* C = cp + bi * M * N;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          T acc = 0;
          for (int64_t k = 0; k < K; ++k) acc += A[i * ai + k * ak] * B[k * bk + j * bj];
          C[i * N + j] = beta == 0 ? alpha * acc : alpha * acc + C[i * N + j];
        }
    }
    return;
  }

  BlasMat la = blas_layout(a.size(-2), a.size(-1), a.stride(-2), a.stride(-1), ta);
  if (!la.ok) {
    a = compact_copy(a, a.dtype(), a.dim() - 2);
    la = blas_layout(a.size(-2), a.size(-1), a.stride(-2), a.stride(-1), ta);
  }
  BlasMat lb = blas_layout(b.size(-2), b.size(-1), b.stride(-2), b.stride(-1), tb);
  if (!lb.ok) {
    b = compact_copy(b, b.dtype(), b.dim() - 2);
    lb = blas_layout(b.size(-2), b.size(-1), b.stride(-2), b.stride(-1), tb);
  }
  LATHE_CHECK(la.ok && lb.ok) << "matmul: no BLAS layout for a " << a.shape_str() << " / b " << b.shape_str();
  batch_strides();
  const T* ap = static_cast<const T*>(a.raw_data());
  const T* bp = static_cast<const T*>(b.raw_data());
  if (batch > 1 && foldable_batch(bo, la, M)) {
    // A weight shared by every batch entry and row-major batches of a laid end to end: one
    // [batch*M, K] x [K, N] product. OpenBLAS packs b once instead of once per entry and its
    // kernel runs on longer panels (a 256-row call reached ~60 GFLOP/s, 2048 rows ~75-80).
    gemm<T>(la.trans, lb.trans, batch * M, N, K, alpha, ap, la.ld, bp, lb.ld, beta, cp, std::max<int64_t>(N, 1));
    return;
  }
  for (int64_t bi = 0; bi < batch; ++bi) {
    int64_t oa, ob;
    bo.at(bi, oa, ob);
    gemm<T>(la.trans, lb.trans, M, N, K, alpha, ap + oa, la.ld, bp + ob, lb.ld, beta, cp + bi * M * N,
            std::max<int64_t>(N, 1));
  }
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out) {
  switch (out.dtype()) {
    case DType::f64: return matmul_t<double>(a, b, trans_a, trans_b, out);
    case DType::f32: return matmul_t<float>(a, b, trans_a, trans_b, out);
    case DType::bf16:
    case DType::f16: {
      Tensor af = compact_copy(a, DType::f32, a.dim()), bf = compact_copy(b, DType::f32, b.dim());
      Tensor tmp = Tensor::empty(out.shape(), DType::f32, out.device());
      matmul_t<float>(af, bf, trans_a, trans_b, tmp);
      copy_strided_cpu(out, tmp);  // rounds to nearest even once
      return;
    }
    default:
      LATHE_FAIL() << "matmul: no cpu kernel for dtype " << dtype_name(out.dtype()) << " (a " << a.shape_str()
                   << ", b " << b.shape_str() << ")";
  }
}

void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha, const Tensor& out) {
  switch (out.dtype()) {
    case DType::f64: return matmul_t<double>(a, b, trans_a, trans_b, out, alpha, 1.0);
    case DType::f32: return matmul_t<float>(a, b, trans_a, trans_b, out, static_cast<float>(alpha), 1.0f);
    case DType::bf16:
    case DType::f16: {
      // Accumulated in f32 on a widened copy of out, rounded once.
      Tensor af = compact_copy(a, DType::f32, a.dim()), bf = compact_copy(b, DType::f32, b.dim());
      Tensor acc = compact_copy(out, DType::f32, 0);
      matmul_t<float>(af, bf, trans_a, trans_b, acc, static_cast<float>(alpha), 1.0f);
      copy_strided_cpu(out, acc);
      return;
    }
    default:
      LATHE_FAIL() << "matmul_acc: no cpu kernel for dtype " << dtype_name(out.dtype()) << " (a " << a.shape_str()
                   << ", b " << b.shape_str() << ")";
  }
}

}  // namespace lathe::kernels::cpu
