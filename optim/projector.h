// GaLore's low-rank gradient projector (Zhao et al., "GaLore: Memory-Efficient LLM Training
// by Gradient Low-Rank Projection", 2024), for one 2-D matrix G [m, n] stored out x in.
//
// A projector holds a left basis A [m, r] (R = A^T G, r x n), a right basis B [r, n]
// (R = G B^T, m x r), or both ("full": R = A^T G B^T, r x r). The bases are plain tensors in
// the optimizer state, so they checkpoint and resume; the side is read from which bases
// exist, never guessed from the projected shape (the reference's reverse_std picks the wrong
// side when R is square).
//
// Refreshing a basis: the exact form takes the top-r singular vectors of G in f32 (LAPACK or
// cuSOLVER), as the reference code does. The randomized form is a range finder with subspace
// iteration (Halko, Martinsson & Tropp, "Finding structure with randomness", 2011, Alg. 4.4
// and 5.1, one QR per iteration), warm-started from the previous basis (kept as is, with the
// oversampling columns orthonormalised against it; Rayleigh-Ritz through the small Gram when
// only one side is stored, bench/README.md section 9(a)): its sketch is drawn from lathe's
// counter-based RNG at a position fixed by (seed, refresh index), so it is deterministic and
// resumes exactly without extra state.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace lathe::optim {

enum class ProjType { std_, reverse_std, left, right, full };
// "std", "reverse_std", "left", "right", "full" (case-insensitive); an error naming `where`.
ProjType parse_proj_type(const std::string& s, const std::string& where);
// The same without throwing: false for an unknown name.
bool try_parse_proj_type(const std::string& s, ProjType& out);
const char* proj_type_name(ProjType t);

// Which bases a [m, n] matrix uses. std projects onto the smaller side (right when m >= n,
// so the moments are max(m,n) x r); reverse_std onto the larger.
struct ProjSides {
  bool left = false, right = false;
};
ProjSides proj_sides(ProjType t, int64_t m, int64_t n);
// The rank actually used: min(rank, m, n) (a larger rank would give no more vectors).
int64_t effective_rank(int64_t rank, int64_t m, int64_t n);
// Shape of the projected gradient R.
Shape projected_shape(const ProjSides& s, int64_t m, int64_t n, int64_t r);

struct Projector {
  Tensor left;   // A [m, r] or undefined
  Tensor right;  // B [r, n] or undefined

  // R = A^T G, G B^T or A^T G B^T.
  Tensor project(const Tensor& g) const;
  // The inverse map without GaLore's scale: A R, R B or A R B (so project_back(project(G))
  // = A A^T G, G B^T B or A A^T G B^T B).
  Tensor project_back(const Tensor& r) const;
};

// Top-r singular vectors of g (f32) into the projector's existing basis tensors (copied in
// place, so tensors held by the optimizer state see the new basis). Throws lathe::Error when
// the SVD fails.
void refresh_exact(const Tensor& g, const Projector& p);

struct RandomizedSvdOptions {
  int64_t oversample = 8;   // extra sketch columns beyond r
  int64_t power_iters = 1;  // subspace iterations (each one multiply by G and by G^T)
  uint64_t seed = 0;        // RNG stream of this matrix
  uint64_t refresh_index = 0;  // which refresh this is: the sketch's position in the stream
  bool warm = false;        // start from the projector's current basis (it must be orthonormal)
};
void refresh_randomized(const Tensor& g, const Projector& p, const RandomizedSvdOptions& o);

// A fixed orthonormal basis (the first r coordinate vectors), for a matrix whose very first
// gradient is zero or not finite, so there is a valid basis until the next refresh.
void fill_canonical_basis(const Projector& p);

}  // namespace lathe::optim
