// Dense factorizations on the CPU through LAPACK (OpenBLAS ships it): the thin SVD and the
// Q factor of a thin QR. Inputs and outputs as in kernels/backend.h (a contiguous, 2-D).
#pragma once

#include "kernels/ops.h"

namespace lathe::kernels::cpu {

void svd(const Tensor& a, const SvdOut& out);
void qr_q(const Tensor& a, const Tensor& q);

}  // namespace lathe::kernels::cpu
