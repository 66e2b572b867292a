// Truncated SVD for adapter initialisation (LoRA-XS from the weight, LoRA-SB from the
// gradient): M [m, n] ~= U diag(S) V^T with U [m, r], V [n, r] orthonormal columns and S
// descending. Randomised subspace iteration (Halko, Martinsson & Tropp, "Finding structure with
// randomness", 2011, Alg. 4.4 - what torch.svd_lowrank does for the LoRA-SB reference) with
// oversampling, then an exact one-sided Jacobi SVD (Hestenes) of the small projected matrix.
// When r + oversampling reaches min(m, n) the subspace is the whole space and the result is the
// exact best rank-r approximation (Eckart-Young), which is what the tests check.
//
// It runs once before training, on the host in f64 (the products through kernels::matmul);
// the signs of singular vector pairs are arbitrary, as in every SVD.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace lathe::peft {

struct TruncatedSvd {
  Tensor U, S, V;  // f64 CPU: [m, r], [r], [n, r]
};

// `niter` power iterations, `oversample` extra columns, test matrix drawn from Generator(seed).
TruncatedSvd truncated_svd(const Tensor& M, int64_t r, int64_t niter = 10, uint64_t seed = 42,
                           int64_t oversample = 8);

}  // namespace lathe::peft
