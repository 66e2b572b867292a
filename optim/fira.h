// Fira's full-rank residual (Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs
// Under Low-rank Constraint?", 2024; ../shared/specs/optimizers.md section 3), the part
// GaLore's projection drops, put back with an adaptive per-row/column scale and a
// norm-growth limiter. Used by GaLore (optim/galore.h) when Fira is on.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "optim/projector.h"

namespace lathe::optim {

struct FiraTerm {
  // Released code (default): Res = G - scale * P Pt G (so with scale != 1 it keeps
  // (1 - scale) P Pt G, not the orthogonal complement), phi = ||N_i|| / (||R_i|| + 1e-8) from
  // the raw N = M / (sqrt(V) + eps).
  // Paper (Alg. 1): Res = (I - P Pt) G, phi from the bias-corrected N with eps in the
  // denominator; the caller scales the whole update (low-rank and residual) by alpha.
  bool paper = false;
  double scale = 1.0;
  double eps = 1e-6;    // the paper form's phi denominator
  double gamma = 1.01;  // norm-growth limit per step
};

// The scaled, limited residual S [m, n] of gradient g. r: the projected gradient, n: the Adam
// direction in the projected space (the caller's N; bias-corrected for the paper form).
// phi is taken per row of G for a right projection and per column for a left one (from the
// stored basis, not from N's shape, which is ambiguous when N is square). scaling_grad (0-d
// f32 state): ||S|| of the previous step, updated here; first = true on the matrix's first
// update, which is not limited. Everything stays on the device (no host sync).
Tensor fira_residual(const Tensor& g, const Tensor& r, const Tensor& n, const Projector& p, const Tensor& scaling_grad,
                     bool first, const FiraTerm& t);

}  // namespace lathe::optim
