// Natural GaLore (Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training
// and Fine-tuning", arXiv 2410.16029; ../shared/specs/optimizers.md section 6): GaLore whose
// projected gradient g (flattened, k = its element count) is preconditioned by the inverse
// empirical Fisher of the last s projected gradients before the Adam moments see it:
//   H = [g_{t-s+1} .. g_t]  (k x s, the current gradient included; fewer columns at first)
//   g~ = (lambda I + H H^T)^{-1} g = g / lambda - H z / lambda^2,
//        z = S^{-1} H^T g,   S = I + H^T H / lambda   (Woodbury: an s x s solve, not k x k)
// The history is a plain state tensor (s x k, f32, a ring buffer written at row
// (t - 1) mod s, so update t and the stored rows are all it needs to resume exactly). It is
// kept across basis refreshes, like GaLore's moments. The reference solves S z = y by
// Cholesky; lathe takes the eigen-decomposition of the symmetric s x s matrix H^T H / lambda
// through kernels::svd (the backend has no Cholesky): S^{-1} = U diag(1 / (1 + sigma)) U^T,
// the same z up to rounding (S's eigenvalues are >= 1, so it is well conditioned). On CUDA
// that small SVD synchronises with the host once per projected matrix and step.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace lathe::optim {

// Writes r (any shape, k elements) into row (step - 1) % s of history [s, k] (f32 in GaLore;
// f64 works too, for tests), then
// returns g~ (r's shape) from the min(step, s) stored rows. step >= 1.
Tensor natural_gradient(const Tensor& r, const Tensor& history, int64_t step, double lambda);

}  // namespace lathe::optim
