#include "optim/projector.h"

#include <algorithm>
#include <cctype>
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
  // qc), so the QR factorizations run on the short side.
  const bool tall = m > n;
  const Tensor x = tall ? g.transpose(0, 1) : g;
  const int64_t pr = x.size(0), qc = x.size(1);
  const int64_t k = std::min(r + std::max<int64_t>(o.oversample, 0), pr);

  // Warm start: the previous basis of X's column space. That is G's left basis (X = G) or
  // right basis transposed (X = G^T); with only the other side stored, one multiply maps it
  // there (X times the other side's vectors).
  Tensor warm;
  if (o.warm) {
    const Tensor& same = tall ? p.right : p.left;
    if (same.defined())
      warm = tall ? same.transpose(0, 1) : same;
    else
      warm = tall ? matmul(x, p.left) : matmul(x, p.right, false, true);
  }
  const int64_t rw = warm.defined() ? std::min(warm.size(1), k) : 0;
  Tensor y;
  if (k - rw > 0) {
    Generator gen(o.seed);
    gen.set_state(o.seed, o.refresh_index * 2 * static_cast<uint64_t>(qc) * static_cast<uint64_t>(k));
    const Tensor omega = Tensor::randn({qc, k - rw}, gen, DType::f32, g.device());
    y = matmul(x, omega);
    if (rw > 0) y = kernels::concat({warm.narrow(1, 0, rw), y}, 1);
  } else {
    y = warm.narrow(1, 0, rw);
  }
  Tensor q = kernels::qr_q(y);
  for (int64_t i = 0; i < o.power_iters; ++i) {
    const Tensor z = kernels::qr_q(matmul(x, q, /*trans_a=*/true));  // qc x k
    q = kernels::qr_q(matmul(x, z));                                   // pr x k
  }
  // Rayleigh-Ritz: the SVD of the small k x qc matrix Q^T X gives X's top singular pairs.
  const kernels::SvdOut f = kernels::svd(matmul(q, x, /*trans_a=*/true));
  const Tensor ux = matmul(q, f.u.narrow(1, 0, r));  // pr x r
  const Tensor vxt = f.vt.narrow(0, 0, r);           // r x qc
  // X = G: G's left basis is ux and right is vxt; X = G^T swaps them (transposed).
  if (p.left.defined()) p.left.copy_(tall ? vxt.transpose(0, 1) : ux);
  if (p.right.defined()) p.right.copy_(tall ? ux.transpose(0, 1) : vxt);
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
