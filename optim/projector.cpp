#include "optim/projector.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/ops.h"

namespace lathe::optim {

using kernels::matmul;

bool try_parse_proj_type(const std::string& s, ProjType& out) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  if (l == "std") out = ProjType::std_;
  else if (l == "reverse_std") out = ProjType::reverse_std;
  else if (l == "left") out = ProjType::left;
  else if (l == "right") out = ProjType::right;
  else if (l == "full") out = ProjType::full;
  else return false;
  return true;
}

ProjType parse_proj_type(const std::string& s, const std::string& where) {
  ProjType t = ProjType::std_;
  if (!try_parse_proj_type(s, t))
    throw Error(where, "unknown projection type \"" + s + "\" (expected std, reverse_std, left, right or full)");
  return t;
}

const char* proj_type_name(ProjType t) {
  switch (t) {
    case ProjType::std_: return "std";
    case ProjType::reverse_std: return "reverse_std";
    case ProjType::left: return "left";
    case ProjType::right: return "right";
    case ProjType::full: return "full";
  }
  return "?";
}

ProjSides proj_sides(ProjType t, int64_t m, int64_t n) {
  ProjSides s;
  switch (t) {
    case ProjType::std_: (m >= n ? s.right : s.left) = true; break;
    case ProjType::reverse_std: (m >= n ? s.left : s.right) = true; break;
    case ProjType::left: s.left = true; break;
    case ProjType::right: s.right = true; break;
    case ProjType::full: s.left = s.right = true; break;
  }
  return s;
}

int64_t effective_rank(int64_t rank, int64_t m, int64_t n) { return std::min(rank, std::min(m, n)); }

Shape projected_shape(const ProjSides& s, int64_t m, int64_t n, int64_t r) {
  return {s.left ? r : m, s.right ? r : n};
}

Tensor Projector::project(const Tensor& g) const {
  Tensor r = g;
  if (left.defined()) r = matmul(left, r, /*trans_a=*/true);
  if (right.defined()) r = matmul(r, right, false, /*trans_b=*/true);
  return r;
}

Tensor Projector::project_back(const Tensor& r) const {
  Tensor g = r;
  if (left.defined()) g = matmul(left, g);
  if (right.defined()) g = matmul(g, right);
  return g;
}

void refresh_exact(const Tensor& g, const Projector& p) {
  const kernels::SvdOut f = kernels::svd(g.to(DType::f32));
  if (p.left.defined()) p.left.copy_(f.u.narrow(1, 0, p.left.size(1)));
  if (p.right.defined()) p.right.copy_(f.vt.narrow(0, 0, p.right.size(0)));
}

void refresh_randomized(const Tensor& g32, const Projector& p, const RandomizedSvdOptions& o) {
  const Tensor g = g32.to(DType::f32);
  const int64_t m = g.size(0), n = g.size(1);
  const int64_t r = p.left.defined() ? p.left.size(1) : p.right.size(0);
  // Sketch the column space of X, the orientation of G with fewer rows (X is pr x qc, pr <=
  // qc), so the QR factorizations run on the short side; a square G with only a right basis
  // (std) is sketched transposed, so the one basis needed is X's column space.
  const bool tall = m > n || (m == n && !p.left.defined());
  const Tensor x = tall ? g.transpose(0, 1) : g;
  const int64_t pr = x.size(0), qc = x.size(1);
  const int64_t k = std::min(r + std::max<int64_t>(o.oversample, 0), pr);

  // Warm start: the previous basis of X's column space. That is G's left basis (X = G) or
  // right basis transposed (X = G^T); with only the other side stored, one multiply maps it
  // there (X times the other side's vectors).
  Tensor warm;
  bool warm_orthonormal = false;  // the previous basis itself (orthonormal), not a product
  if (o.warm) {
    const Tensor& same = tall ? p.right : p.left;
    if (same.defined()) {
      warm = (tall ? same.transpose(0, 1) : same).contiguous();
      warm_orthonormal = warm.dtype() == DType::f32;
    } else {
      warm = tall ? matmul(x, p.left) : matmul(x, p.right, false, true);
    }
  }
  const int64_t rw = warm.defined() ? std::min(warm.size(1), k) : 0;
  if (rw > 0) warm = warm.narrow(1, 0, rw).contiguous();
  // A previous basis from an old checkpoint or a degenerate gradient may not be orthonormal to
  // f32 precision; then it only seeds the sketch (the full QR below). Costs pr r^2, a fraction
  // of the QR it saves.
  if (warm_orthonormal && rw > 0) {
    const std::vector<float> wtw = matmul(warm, warm, /*trans_a=*/true).to_vector<float>();
    float dev = 0.0f;
    for (int64_t i = 0; i < rw; ++i)
      for (int64_t j = 0; j < rw; ++j)
        dev = std::max(dev, std::abs(wtw[static_cast<size_t>(i * rw + j)] - (i == j ? 1.0f : 0.0f)));
    warm_orthonormal = dev < 1e-4f;
  }
  Tensor fresh;  // pr x (k - rw): X times Gaussian columns
  if (k - rw > 0) {
    Generator gen(o.seed);
    gen.set_state(o.seed, o.refresh_index * 2 * static_cast<uint64_t>(qc) * static_cast<uint64_t>(k));
    const Tensor omega = Tensor::randn({qc, k - rw}, gen, DType::f32, g.device());
    fresh = matmul(x, omega);
  }
  Tensor q;
  if (warm_orthonormal && rw > 0) {
    // The warm basis is already orthonormal: only the k - rw fresh columns need
    // orthonormalising against it (block Gram-Schmidt, two passes for f32), instead of a QR of
    // all k columns, which is most of a q = 0 refresh's time on the 512-wide shapes.
    if (fresh.defined()) {
      for (int pass = 0; pass < 2; ++pass)
        kernels::add_(fresh, matmul(warm, matmul(warm, fresh, /*trans_a=*/true)), -1.0);
      q = kernels::concat({warm, kernels::qr_q(fresh)}, 1);
    } else {
      q = warm;
    }
  } else {
    q = kernels::qr_q(rw > 0 ? (fresh.defined() ? kernels::concat({warm, fresh}, 1) : warm) : fresh);
  }
  // Subspace iteration, one QR per iteration (Q <- qr(X X^T Q)): the second QR of Halko et
  // al.'s Alg. 4.4 (after X^T Q) only guards against the squared spectrum losing small
  // directions in f32, which matters for many iterations, not for the 0-2 used here;
  // RandomizedRefreshSpansTheExactSubspace checks the result.
  for (int64_t i = 0; i < o.power_iters; ++i) q = kernels::qr_q(matmul(x, matmul(x, q, /*trans_a=*/true)));
  // Rayleigh-Ritz on the small k x qc matrix B = Q^T X: its left singular vectors rotate Q
  // onto X's top singular directions. X = G: G's left basis is Q U and right is Vt; X = G^T
  // swaps them (transposed).
  const Tensor b = matmul(q, x, /*trans_a=*/true);
  const bool need_short = tall ? p.right.defined() : p.left.defined();
  const bool need_long = tall ? p.left.defined() : p.right.defined();
  Tensor u, vxt;
  if (need_long) {
    const kernels::SvdOut f = kernels::svd(b);
    u = f.u;
    vxt = f.vt.narrow(0, 0, r);  // r x qc
  } else {
    // Only the short side (GaLore's std projection): B's left singular vectors are the
    // eigenvectors of the k x k Gram matrix B B^T, whose SVD costs a fraction of B's (on
    // 512 x 512 at r = 128: 0.3 ms for the Gram and 2 ms for its SVD against 4-6 ms).
    // Squaring B's singular values only blurs directions below about 3e-4 of the largest
    // (f32), which no refresh can order meaningfully anyway.
    u = kernels::svd(matmul(b, b, false, /*trans_b=*/true)).u;
  }
  if (need_short) {
    const Tensor ux = matmul(q, u.narrow(1, 0, r));  // pr x r
    (tall ? p.right : p.left).copy_(tall ? ux.transpose(0, 1) : ux);
  }
  if (need_long) (tall ? p.left : p.right).copy_(tall ? vxt.transpose(0, 1) : vxt);
}

void fill_canonical_basis(const Projector& p) {
  auto eye = [](int64_t rows, int64_t cols, Device dev) {
    std::vector<float> v(static_cast<size_t>(rows * cols), 0.0f);
    for (int64_t i = 0; i < std::min(rows, cols); ++i) v[static_cast<size_t>(i * cols + i)] = 1.0f;
    return Tensor::from_vector<float>(v, {rows, cols}).to(dev);
  };
  if (p.left.defined()) p.left.copy_(eye(p.left.size(0), p.left.size(1), p.left.device()));
  if (p.right.defined()) p.right.copy_(eye(p.right.size(0), p.right.size(1), p.right.device()));
}

}  // namespace lathe::optim
