// matmul: shape rules (trans flags, broadcast batch dims) and output allocation; the
// product itself is the Backend's (OpenBLAS on the CPU, kernels/cpu/matmul.cpp).
#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  LATHE_CHECK(a.defined() && b.defined()) << "matmul: undefined input tensor";
  auto shapes = [&]() {
    return std::string("a ") + a.shape_str() + (trans_a ? " (transposed)" : "") + ", b " + b.shape_str() +
           (trans_b ? " (transposed)" : "");
  };
  LATHE_CHECK(a.dim() >= 2 && b.dim() >= 2) << "matmul: inputs need at least 2 dims: " << shapes();
  LATHE_CHECK(a.dtype() == b.dtype()) << "matmul: dtype mismatch: a is " << dtype_name(a.dtype()) << ", b is "
                                      << dtype_name(b.dtype()) << " (" << shapes() << ")";
  LATHE_CHECK(is_floating(a.dtype())) << "matmul: needs a floating dtype, got " << dtype_name(a.dtype()) << " ("
                                      << shapes() << ")";
  LATHE_CHECK(a.device() == b.device()) << "matmul: device mismatch: a on " << a.device().str() << ", b on "
                                        << b.device().str() << " (" << shapes() << ")";
  const int64_t M = trans_a ? a.size(-1) : a.size(-2);
  const int64_t Ka = trans_a ? a.size(-2) : a.size(-1);
  const int64_t Kb = trans_b ? b.size(-1) : b.size(-2);
  const int64_t N = trans_b ? b.size(-2) : b.size(-1);
  LATHE_CHECK(Ka == Kb) << "matmul: inner dims differ (" << Ka << " vs " << Kb << "): " << shapes();
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch;
  try {
    batch = broadcast_shapes(ba, bb, "matmul");
  } catch (const Error&) {
    LATHE_FAIL() << "matmul: batch dims " << shape_str(ba) << " and " << shape_str(bb)
                 << " cannot be broadcast together: " << shapes();
  }
  Shape as = batch, bs = batch, os = batch;
  as.insert(as.end(), a.shape().end() - 2, a.shape().end());
  bs.insert(bs.end(), b.shape().end() - 2, b.shape().end());
  os.push_back(M);
  os.push_back(N);
  Tensor out = Tensor::empty(os, a.dtype(), a.device());
  backend(a.device()).matmul(a.expand(as), b.expand(bs), trans_a, trans_b, out);
  return out;
}

}  // namespace lathe::kernels
