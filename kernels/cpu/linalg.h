// Dense linear algebra on the CPU: the thin SVD and the Q factor of a thin QR through LAPACK
// (OpenBLAS ships it), and the accumulating matmul. Inputs and outputs as in kernels/backend.h.
#pragma once

#include "kernels/ops.h"

namespace lathe::kernels::cpu {

void svd(const Tensor& a, const SvdOut& out);
void qr_q(const Tensor& a, const Tensor& q);

// out += alpha * op(a) @ op(b) (kernels/cpu/matmul.cpp: the same paths as matmul, with BLAS
// beta = 1, so OpenBLAS neither clears nor scales C first).
void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha, const Tensor& out);

}  // namespace lathe::kernels::cpu
