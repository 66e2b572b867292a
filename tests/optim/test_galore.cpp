// GaLore and Fira (optim/galore.h, optim/projector.h, optim/fira.h) against the formulas of
// ../shared/specs/optimizers.md sections 2 and 3 written out in f64 loops: projections and
// their sides, the exact and randomized bases, the refresh schedule and its guards, the
// update over several steps across refreshes, Fira's residual and limiter, state round trips
// and config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "../common/test_helpers.h"
#include "configs/config.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "optim/fira.h"
#include "optim/galore.h"
#include "optim/natural_galore.h"
#include "optim/projector.h"
#include "optim/registry.h"

using namespace lathe;
using namespace lathe::optim;

namespace {

// Row-major f64 matrix for the reference computations.
struct Mat {
  int64_t r = 0, c = 0;
  std::vector<double> v;
  Mat() = default;
  Mat(int64_t rows, int64_t cols) : r(rows), c(cols), v(static_cast<size_t>(rows * cols), 0.0) {}
  double& operator()(int64_t i, int64_t j) { return v[static_cast<size_t>(i * c + j)]; }
  double operator()(int64_t i, int64_t j) const { return v[static_cast<size_t>(i * c + j)]; }
};
Mat of(const Tensor& t) {
  Mat m(t.size(0), t.size(1));
  m.v = t.to(DType::f64).to_vector<double>();
  return m;
}
Tensor to_tensor(const Mat& m) {
  std::vector<float> f(m.v.begin(), m.v.end());
  return Tensor::from_vector<float>(f, {m.r, m.c});
}
Mat mul(const Mat& a, const Mat& b) {
  EXPECT_EQ(a.c, b.r);
  Mat o(a.r, b.c);
  for (int64_t i = 0; i < a.r; ++i)
    for (int64_t k = 0; k < a.c; ++k)
      for (int64_t j = 0; j < b.c; ++j) o(i, j) += a(i, k) * b(k, j);
  return o;
}
Mat tr(const Mat& a) {
  Mat o(a.c, a.r);
  for (int64_t i = 0; i < a.r; ++i)
    for (int64_t j = 0; j < a.c; ++j) o(j, i) = a(i, j);
  return o;
}
double max_abs_diff(const Mat& a, const Mat& b) {
  EXPECT_EQ(a.r, b.r);
  EXPECT_EQ(a.c, b.c);
  double d = 0;
  for (size_t i = 0; i < a.v.size(); ++i) d = std::max(d, std::abs(a.v[i] - b.v[i]));
  return d;
}
double fro(const Mat& a) {
  double s = 0;
  for (double x : a.v) s += x * x;
  return std::sqrt(s);
}
Mat randn_mat(int64_t r, int64_t c, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  Mat m = of(Tensor::randn({r, c}, g, DType::f64));
  for (double& x : m.v) x *= scale;
  return m;
}
// An orthonormal m x k matrix (QR of a random one; orthonormality is checked where used).
Mat orthonormal(int64_t m, int64_t k, uint64_t seed) { return of(kernels::qr_q(to_tensor(randn_mat(m, k, seed)))); }
// U diag(s) V^T
Mat compose(const Mat& u, const std::vector<double>& s, const Mat& v) {
  Mat us = u;
  for (int64_t i = 0; i < us.r; ++i)
    for (int64_t j = 0; j < us.c; ++j) us(i, j) *= s[static_cast<size_t>(j)];
  return mul(us, tr(v));
}
Mat eye(int64_t n) {
  Mat e(n, n);
  for (int64_t i = 0; i < n; ++i) e(i, i) = 1;
  return e;
}

Projector make_projector(ProjType t, int64_t m, int64_t n, int64_t rank) {
  const ProjSides s = proj_sides(t, m, n);
  const int64_t r = effective_rank(rank, m, n);
  Projector p;
  if (s.left) p.left = Tensor::zeros({m, r});
  if (s.right) p.right = Tensor::zeros({r, n});
  return p;
}

// The orthogonal projector onto a basis's span: A A^T for a left basis, B^T B for a right one.
Mat span_projector(const Tensor& basis, bool left) {
  const Mat b = of(basis);
  return left ? mul(b, tr(b)) : mul(tr(b), b);
}

}  // namespace

TEST(GaLoreProjector, SidesAndShapesFollowTheSpecTable) {
  // std projects onto the smaller side, reverse_std onto the larger (spec 2.2).
  EXPECT_TRUE(proj_sides(ProjType::std_, 8, 4).right);
  EXPECT_TRUE(proj_sides(ProjType::std_, 4, 8).left);
  EXPECT_TRUE(proj_sides(ProjType::std_, 6, 6).right);
  EXPECT_TRUE(proj_sides(ProjType::reverse_std, 8, 4).left);
  EXPECT_TRUE(proj_sides(ProjType::reverse_std, 4, 8).right);
  const ProjSides f = proj_sides(ProjType::full, 4, 8);
  EXPECT_TRUE(f.left && f.right);
  EXPECT_EQ(projected_shape(proj_sides(ProjType::std_, 1376, 512), 1376, 512, 128), (Shape{1376, 128}));
  EXPECT_EQ(projected_shape(proj_sides(ProjType::std_, 512, 1376), 512, 1376, 128), (Shape{128, 1376}));
  EXPECT_EQ(projected_shape(f, 4, 8, 3), (Shape{3, 3}));
  EXPECT_EQ(effective_rank(128, 64, 32), 32);
  EXPECT_ERROR_HAS(parse_proj_type("diagonal", "galore.proj_type"), "galore.proj_type", "diagonal");
  EXPECT_EQ(parse_proj_type("REVERSE_STD", "x"), ProjType::reverse_std);
}

// back(project(G)) = P Pt G (and G Pt P, A At G Bt B) for every type, tall and wide, with the
// top-r basis of a G whose singular vectors are known: the result is also the best rank-r
// approximation sum_{i<=r} s_i u_i v_i^T (Eckart-Young), which checks the SVD itself.
TEST(GaLoreProjector, BackOfProjectIsTheOrthogonalProjectionAndTheBestRankR) {
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{12, 7}, {7, 12}}) {
    const int64_t k = std::min(m, n), r = 3;
    const Mat u = orthonormal(m, k, 11 + m), v = orthonormal(n, k, 23 + n);
    ASSERT_LT(max_abs_diff(mul(tr(u), u), eye(k)), 1e-5) << "qr_q is not orthonormal";
    std::vector<double> s(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) s[static_cast<size_t>(i)] = 10.0 / (1 + i);
    const Mat gm = compose(u, s, v);
    const Tensor g = to_tensor(gm);
    for (ProjType t : {ProjType::std_, ProjType::reverse_std, ProjType::left, ProjType::right, ProjType::full}) {
      SCOPED_TRACE(std::string(proj_type_name(t)) + " " + std::to_string(m) + "x" + std::to_string(n));
      Projector p = make_projector(t, m, n, r);
      refresh_exact(g, p);
      const Tensor rr = p.project(g);
      EXPECT_EQ(rr.shape(), projected_shape(proj_sides(t, m, n), m, n, r));
      const Mat back = of(p.project_back(rr));
      // P Pt G written out from the stored bases.
      Mat expect = gm;
      if (p.left.defined()) expect = mul(span_projector(p.left, true), expect);
      if (p.right.defined()) expect = mul(expect, span_projector(p.right, false));
      EXPECT_LT(max_abs_diff(back, expect), 1e-4);
      // Eckart-Young: the projection of G onto its own top-r singular space.
      Mat best(m, n);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t q = 0; q < r; ++q) best(i, j) += u(i, q) * s[static_cast<size_t>(q)] * v(j, q);
      EXPECT_LT(max_abs_diff(back, best), 1e-4);
      if (p.left.defined()) {
        const Mat a = of(p.left);
        EXPECT_LT(max_abs_diff(mul(tr(a), a), eye(r)), 1e-5);
      }
    }
  }
}

// GaLore with an SGD inner rule (W -= lr * alpha * back(project(G))) at full rank is alpha
// times SGD (spec 7, oracle 2): the projection is then the identity.
TEST(GaLoreProjector, SgdInnerRuleAtFullRankIsScaledSgd) {
  const double lr = 0.1, alpha = 0.25;
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{9, 5}, {5, 9}}) {
    for (ProjType t : {ProjType::std_, ProjType::reverse_std, ProjType::left, ProjType::right, ProjType::full}) {
      Mat w = randn_mat(m, n, 5), ref = w;
      Projector p = make_projector(t, m, n, std::min(m, n));
      // On the smaller side a full-rank basis spans everything, so the basis of an older
      // gradient does too; a basis of the larger side (reverse_std, full, or left/right on
      // the long side) spans only its own gradient's range, so refresh it every step.
      const bool small_side_only = !(p.left.defined() && m > n) && !(p.right.defined() && n > m);
      for (int step = 0; step < 3; ++step) {
        const Mat gm = randn_mat(m, n, 100 + step);
        const Tensor g = to_tensor(gm);
        if (step % 2 == 0 || !small_side_only) refresh_exact(g, p);
        const Mat upd = of(p.project_back(p.project(g)));
        for (size_t i = 0; i < w.v.size(); ++i) {
          w.v[i] -= lr * alpha * upd.v[i];
          ref.v[i] -= lr * alpha * static_cast<double>(static_cast<float>(gm.v[i]));
        }
      }
      EXPECT_LT(max_abs_diff(w, ref), 1e-5) << proj_type_name(t) << " " << m << "x" << n;
    }
  }
}

// The randomized refresh spans nearly the same subspace as the exact one on a low-rank plus
// noise matrix; compared through the projectors (sign- and rotation-invariant).
TEST(GaLoreProjector, RandomizedRefreshSpansTheExactSubspace) {
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{96, 40}, {40, 96}}) {
    const int64_t k = 6;
    const Mat u = orthonormal(m, k, 3), v = orthonormal(n, k, 4);
    Mat gm = compose(u, {20, 15, 12, 10, 8, 6}, v);
    const Mat noise = randn_mat(m, n, 9, 0.01);
    for (size_t i = 0; i < gm.v.size(); ++i) gm.v[i] += noise.v[i];
    const Tensor g = to_tensor(gm);
    for (ProjType t : {ProjType::std_, ProjType::reverse_std, ProjType::full}) {
      SCOPED_TRACE(std::string(proj_type_name(t)) + " " + std::to_string(m) + "x" + std::to_string(n));
      Projector ex = make_projector(t, m, n, k), rnd = make_projector(t, m, n, k);
      refresh_exact(g, ex);
      RandomizedSvdOptions o;
      o.seed = 77;
      o.power_iters = 1;
      refresh_randomized(g, rnd, o);
      for (bool left : {true, false}) {
        const Tensor& a = left ? ex.left : ex.right;
        if (!a.defined()) continue;
        const Tensor& b = left ? rnd.left : rnd.right;
        const double d = fro([&] {
          Mat x = span_projector(a, left), y = span_projector(b, left);
          for (size_t i = 0; i < x.v.size(); ++i) x.v[i] -= y.v[i];
          return x;
        }());
        EXPECT_LT(d, 1e-2) << (left ? "left" : "right");
        // And it is orthonormal.
        const Mat bb = of(b);
        EXPECT_LT(max_abs_diff(left ? mul(tr(bb), bb) : mul(bb, tr(bb)), eye(k)), 1e-5);
      }
      // Warm-started from the previous basis, on a slightly changed gradient, it finds the
      // new subspace.
      Mat g2 = gm;
      const Mat n2 = randn_mat(m, n, 10, 0.01);
      for (size_t i = 0; i < g2.v.size(); ++i) g2.v[i] += n2.v[i];
      o.warm = true;
      o.power_iters = 1;
      o.refresh_index = 1;
      refresh_randomized(to_tensor(g2), rnd, o);
      Projector ex2 = make_projector(t, m, n, k);
      refresh_exact(to_tensor(g2), ex2);
      const bool left = ex2.left.defined();
      Mat x = span_projector(left ? ex2.left : ex2.right, left), y = span_projector(left ? rnd.left : rnd.right, left);
      for (size_t i = 0; i < x.v.size(); ++i) x.v[i] -= y.v[i];
      EXPECT_LT(fro(x), 1e-2) << "warm start";
    }
  }
}

TEST(GaLoreProjector, RandomizedRefreshIsDeterministicPerSeedAndIndex) {
  const Tensor g = to_tensor(randn_mat(30, 20, 1));
  auto run = [&](uint64_t seed, uint64_t idx) {
    Projector p = make_projector(ProjType::std_, 30, 20, 4);
    RandomizedSvdOptions o;
    o.seed = seed;
    o.refresh_index = idx;
    o.power_iters = 0;
    o.oversample = 0;  // no oversampling: the sketch alone decides, so seeds differ visibly
    refresh_randomized(g, p, o);
    return p.right.to_vector<float>();
  };
  EXPECT_EQ(run(5, 2), run(5, 2));
  EXPECT_NE(run(5, 2), run(5, 3));
  EXPECT_NE(run(5, 2), run(6, 2));
}

namespace {

// GaLore / Fira (code and paper forms) for one matrix and HF AdamW for one vector, written out
// from spec sections 2.3 and 3 in f64. The projection bases are taken from the optimizer's
// state after each refresh (SVD signs are implementation-defined); everything else is
// recomputed here.
// Natural GaLore's preconditioner written out directly (spec section 6): (lambda I + H H^T)^{-1} g
// with H the stored gradients as columns, by Gaussian elimination on the k x k matrix (no
// Woodbury), in f64.
std::vector<double> direct_natural(const std::vector<std::vector<double>>& hist, const std::vector<double>& g,
                                   double lambda) {
  const size_t k = g.size();
  std::vector<std::vector<double>> a(k, std::vector<double>(k + 1, 0.0));
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = 0; j < k; ++j) {
      double s = i == j ? lambda : 0.0;
      for (const auto& h : hist) s += h[i] * h[j];
      a[i][j] = s;
    }
    a[i][k] = g[i];
  }
  for (size_t c = 0; c < k; ++c) {  // partial pivoting
    size_t piv = c;
    for (size_t i = c + 1; i < k; ++i)
      if (std::abs(a[i][c]) > std::abs(a[piv][c])) piv = i;
    std::swap(a[c], a[piv]);
    for (size_t i = 0; i < k; ++i) {
      if (i == c) continue;
      const double f = a[i][c] / a[c][c];
      for (size_t j = c; j <= k; ++j) a[i][j] -= f * a[c][j];
    }
  }
  std::vector<double> x(k);
  for (size_t i = 0; i < k; ++i) x[i] = a[i][k] / a[i][i];
  return x;
}

struct RefGaLore {
  bool fira = false, paper = false;
  bool natural = false;
  int64_t nat_s = 0;
  double nat_lambda = 0;
  std::vector<std::vector<double>> nat_hist;  // the last nat_s projected gradients
  double lr, b1 = 0.9, b2 = 0.999, eps = 1e-6, wd, alpha, gamma = 1.01;
  Mat w, m, v;   // weight, projected moments
  double prev_s = 0;
  std::vector<double> bias, bm, bv;  // the non-projected parameter

  void step(int t, const Mat& g, const Tensor& left, const Tensor& right, const std::vector<double>& gb) {
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    const double step_size = lr * std::sqrt(bc2) / bc1;
    Mat a, bt;  // A [m, r], B [r, n]
    if (left.defined()) a = of(left);
    if (right.defined()) bt = of(right);
    Mat r = g;
    if (left.defined()) r = mul(tr(a), r);
    if (right.defined()) r = mul(r, tr(bt));
    if (m.v.empty()) m = Mat(r.r, r.c), v = Mat(r.r, r.c);
    Mat x = r;  // what the moments see
    if (natural) {
      nat_hist.push_back(r.v);
      if (static_cast<int64_t>(nat_hist.size()) > nat_s) nat_hist.erase(nat_hist.begin());
      x.v = direct_natural(nat_hist, r.v, nat_lambda);
    }
    Mat n(r.r, r.c), nhat(r.r, r.c);
    for (size_t i = 0; i < r.v.size(); ++i) {
      m.v[i] = b1 * m.v[i] + (1 - b1) * x.v[i];
      v.v[i] = b2 * v.v[i] + (1 - b2) * x.v[i] * x.v[i];
      n.v[i] = m.v[i] / (std::sqrt(v.v[i]) + eps);
      nhat.v[i] = (m.v[i] / bc1) / (std::sqrt(v.v[i] / bc2) + eps);
    }
    auto back = [&](Mat x) {
      if (left.defined()) x = mul(a, x);
      if (right.defined()) x = mul(x, bt);
      return x;
    };
    const Mat nb = back(paper ? nhat : n);
    Mat s(g.r, g.c);
    if (fira) {
      const Mat pr = back(r);
      const Mat& nn = paper ? nhat : n;
      const bool per_row = right.defined();
      for (int64_t i = 0; i < g.r; ++i)
        for (int64_t j = 0; j < g.c; ++j) {
          double nn2 = 0, rn2 = 0;
          if (per_row)
            for (int64_t q = 0; q < r.c; ++q) nn2 += nn(i, q) * nn(i, q), rn2 += r(i, q) * r(i, q);
          else
            for (int64_t q = 0; q < r.r; ++q) nn2 += nn(q, j) * nn(q, j), rn2 += r(q, j) * r(q, j);
          const double phi = std::sqrt(nn2) / (std::sqrt(rn2) + (paper ? eps : 1e-8));
          s(i, j) = (g(i, j) - (paper ? 1.0 : alpha) * pr(i, j)) * phi;
        }
      const double ns = fro(s);
      if (t == 1) {
        prev_s = ns;
      } else {
        const double lim = std::max(ns / (prev_s + 1e-8), gamma) / gamma;
        for (double& x : s.v) x /= lim;
        prev_s = ns / lim;
      }
    }
    for (size_t i = 0; i < w.v.size(); ++i) {
      if (paper)
        w.v[i] -= lr * alpha * (nb.v[i] + s.v[i]);
      else
        w.v[i] -= step_size * (alpha * nb.v[i] + s.v[i]);
      w.v[i] -= lr * wd * w.v[i];
    }
    if (bm.empty()) bm.assign(bias.size(), 0), bv.assign(bias.size(), 0);
    for (size_t i = 0; i < bias.size(); ++i) {
      bm[i] = b1 * bm[i] + (1 - b1) * gb[i];
      bv[i] = b2 * bv[i] + (1 - b2) * gb[i] * gb[i];
      bias[i] -= step_size * bm[i] / (std::sqrt(bv[i]) + eps);  // the 1-D group has no decay
    }
  }
};

struct Case {
  const char* what;
  int64_t m, n, rank;
  const char* proj;
  bool fira, paper;
  bool natural = false;
};

}  // namespace

// Several steps across two refreshes (T = 2, updates 1, 3, 5), with decay and alpha != 1, for
// GaLore on every projection type and Fira in both forms, tall and wide.
TEST(GaLore, MatchesTheSpecFormulaOverSeveralStepsAcrossRefreshes) {
  const std::vector<Case> cases = {
      {"galore std tall", 10, 6, 3, "std", false, false},   {"galore std wide", 6, 10, 3, "std", false, false},
      {"galore reverse_std", 10, 6, 3, "reverse_std", false, false},
      {"galore left", 10, 6, 2, "left", false, false},     {"galore right", 6, 10, 2, "right", false, false},
      {"galore full", 10, 6, 3, "full", false, false},     {"fira code tall", 10, 6, 3, "std", true, false},
      {"fira code wide", 6, 10, 3, "std", true, false},    {"fira paper tall", 10, 6, 3, "std", true, true},
      {"fira paper wide", 6, 10, 3, "std", true, true},
      // Natural GaLore: history 3 over 5 updates, so the ring buffer wraps.
      {"natural std tall", 10, 6, 3, "std", false, false, true},
      {"natural std wide", 6, 10, 3, "std", false, false, true},
      {"natural full", 10, 6, 3, "full", false, false, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const Mat w0 = randn_mat(c.m, c.n, 1);
    Tensor w = to_tensor(w0).set_requires_grad();
    Tensor b = Tensor::from_vector<float>({0.5f, -0.5f, 0.25f}, {3}).set_requires_grad();
    GaLoreOptions o;
    o.lr = 0.01;
    o.weight_decay = 0.1;
    o.rank = c.rank;
    o.update_proj_gap = 2;
    o.scale = 0.25;
    o.proj_type = parse_proj_type(c.proj, "test");
    o.fira = c.fira;
    o.fira_form = c.paper ? FiraForm::paper : FiraForm::code;
    o.target = "layers\\.0\\.attn\\.w";
    o.natural = c.natural;
    o.natural_history = 3;
    o.natural_lambda = 0.5;
    ParamGroup gw, gb;
    gw.params = {{"layers.0.attn.w", w}};
    gw.weight_decay = 0.1;
    gb.params = {{"b", b}};
    GaLore opt({gw, gb}, o);
    EXPECT_TRUE(opt.projected("layers.0.attn.w"));
    EXPECT_FALSE(opt.projected("b"));
    RefGaLore ref;
    ref.fira = c.fira;
    ref.paper = c.paper;
    ref.natural = c.natural;
    ref.nat_s = 3;
    ref.nat_lambda = 0.5;
    ref.lr = 0.01;
    ref.wd = 0.1;
    ref.alpha = 0.25;
    ref.w = of(w);
    ref.bias = {0.5f, -0.5f, 0.25f};
    for (int t = 1; t <= 5; ++t) {
      // A spike at step 4 so Fira's limiter binds at least once.
      const Mat gm = randn_mat(c.m, c.n, 40 + t, t == 4 ? 30.0 : 1.0);
      const std::vector<float> gbf = {0.1f * t, -0.2f, 0.05f};
      w.set_grad(to_tensor(gm));
      b.set_grad(Tensor::from_vector<float>(gbf, {3}));
      opt.step();
      const StateMap& st = opt.param_state("layers.0.attn.w");
      Tensor left, right;
      if (st.count("ortho_left")) left = st.at("ortho_left");
      if (st.count("ortho_right")) right = st.at("ortho_right");
      ref.step(t, of(to_tensor(gm)), left, right, std::vector<double>(gbf.begin(), gbf.end()));
      EXPECT_LT(max_abs_diff(of(w), ref.w), 2e-5) << "step " << t;
      const auto bv = b.to_vector<float>();
      for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(bv[i], ref.bias[i], 2e-6) << "bias step " << t;
      if (c.fira) EXPECT_NEAR(st.at("scaling_grad").item(), ref.prev_s, 1e-4 * (1 + ref.prev_s)) << "step " << t;
    }
  }
}

// Natural GaLore's Woodbury form against (lambda I + H H^T)^{-1} g solved directly, in f64, at
// the reference's lambda = 1e-3, for the first updates (fewer stored gradients than s) and
// after the ring buffer wraps; gradients of mixed scales so H H^T / lambda is far from I.
TEST(NaturalGaLore, WoodburyEqualsTheDirectInverseFisher) {
  const int64_t s = 3, rows = 4, cols = 3, k = rows * cols;
  const double lambda = 1e-3;
  const Tensor hist = Tensor::zeros({s, k}, DType::f64);
  std::vector<std::vector<double>> ref_hist;
  for (int64_t t = 1; t <= 7; ++t) {
    Mat r = randn_mat(rows, cols, 900 + t, t == 5 ? 10.0 : 0.1);
    Tensor rt = Tensor::from_vector<double>(r.v, {rows, cols});
    const Tensor out = natural_gradient(rt, hist, t, lambda);
    ASSERT_EQ(out.shape(), rt.shape());
    ref_hist.push_back(r.v);
    if (static_cast<int64_t>(ref_hist.size()) > s) ref_hist.erase(ref_hist.begin());
    const std::vector<double> want = direct_natural(ref_hist, r.v, lambda);
    const std::vector<double> got = out.to_vector<double>();
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::abs(w));
    for (int64_t i = 0; i < k; ++i) EXPECT_NEAR(got[i], want[i], 1e-9 * scale) << "update " << t << " element " << i;
    // And it is not the identity up to scale: the Fisher shrinks the directions of H.
    if (t == 1) {
      double nr = 0, nw = 0;
      for (int64_t i = 0; i < k; ++i) nr += r.v[i] * r.v[i], nw += want[i] * want[i];
      EXPECT_LT(std::sqrt(nw) * lambda, 0.5 * std::sqrt(nr));
    }
  }
  // One stored gradient: g~ = g / (lambda + |g|^2) exactly (H = [g]).
  const Tensor h1 = Tensor::zeros({1, 2}, DType::f64);
  const Tensor one = natural_gradient(Tensor::from_vector<double>({3.0, 4.0}, {2}), h1, 1, 1.0);
  EXPECT_NEAR(one.to_vector<double>()[0], 3.0 / 26.0, 1e-14);
  EXPECT_NEAR(one.to_vector<double>()[1], 4.0 / 26.0, 1e-14);
}

// The basis changes at updates 1, T+1, 2T+1 and at no other.
TEST(GaLore, BasisRefreshesExactlyEveryTUpdates) {
  Tensor w = Tensor::zeros({8, 5}).set_requires_grad();
  GaLoreOptions o;
  o.rank = 2;
  o.update_proj_gap = 3;
  o.target = "w";
  ParamGroup g;
  g.params = {{"w", w}};
  GaLore opt({g}, o);
  std::vector<float> prev;
  std::vector<int> changed;
  for (int t = 1; t <= 10; ++t) {
    w.set_grad(to_tensor(randn_mat(8, 5, 300 + t)));
    opt.step();
    const auto cur = opt.param_state("w").at("ortho_right").to_vector<float>();
    if (cur != prev) changed.push_back(t);
    prev = cur;
  }
  EXPECT_EQ(changed, (std::vector<int>{1, 4, 7, 10}));
}

// A zero (or non-finite) gradient at a refresh keeps the old basis; a zero first gradient gets
// an orthonormal basis rather than a zero one.
TEST(GaLore, DegenerateGradientKeepsTheOldBasis) {
  Tensor w = Tensor::zeros({6, 4}).set_requires_grad();
  GaLoreOptions o;
  o.rank = 2;
  o.update_proj_gap = 2;
  o.target = "w";
  ParamGroup g;
  g.params = {{"w", w}};
  GaLore opt({g}, o);
  w.set_grad(to_tensor(randn_mat(6, 4, 1)));
  opt.step();
  const auto basis1 = opt.param_state("w").at("ortho_right").to_vector<float>();
  w.set_grad(to_tensor(randn_mat(6, 4, 2)));
  opt.step();
  w.set_grad(Tensor::zeros({6, 4}));  // update 3: a refresh
  opt.step();
  EXPECT_EQ(opt.param_state("w").at("ortho_right").to_vector<float>(), basis1);
  EXPECT_EQ(opt.skipped_refreshes(), 1);
  w.set_grad(Tensor::full({6, 4}, std::nan("")));
  opt.step();
  w.set_grad(Tensor::full({6, 4}, INFINITY));  // update 5: a refresh
  opt.step();
  EXPECT_EQ(opt.param_state("w").at("ortho_right").to_vector<float>(), basis1);
  EXPECT_EQ(opt.skipped_refreshes(), 2);

  Tensor z = Tensor::zeros({6, 4}).set_requires_grad();
  ParamGroup gz;
  gz.params = {{"w", z}};
  GaLore opt2({gz}, o);
  z.set_grad(Tensor::zeros({6, 4}));
  opt2.step();
  const Mat bz = of(opt2.param_state("w").at("ortho_right"));
  EXPECT_LT(max_abs_diff(mul(bz, tr(bz)), eye(2)), 1e-6);
  const auto zw = z.to_vector<float>();
  for (float x : zw) EXPECT_EQ(x, 0.0f);
}

// Fira's limiter on a synthetic spike: ||S_t|| <= gamma ||S_{t-1}||, with equality when it
// binds, and no limiting below the bound.
TEST(Fira, LimiterCapsNormGrowthOnASpike) {
  const int64_t m = 6, n = 4, r = 2;
  Projector p = make_projector(ProjType::std_, m, n, r);  // right
  refresh_exact(to_tensor(randn_mat(m, n, 1)), p);
  Tensor sg = Tensor::zeros({});
  FiraTerm t;
  t.scale = 0.25;
  auto term = [&](double amp, bool first) {
    const Tensor g = to_tensor(randn_mat(m, n, 2, amp));
    const Tensor rr = p.project(g);
    const Tensor nn = kernels::affine(rr, 0.5, 0.0);  // any N; phi = 0.5 per row
    return of(fira_residual(g, rr, nn, p, sg, first, t));
  };
  const double s1 = fro(term(1.0, true));
  EXPECT_NEAR(sg.item(), s1, 1e-5);
  // A 100x spike is cut to gamma times the previous norm.
  const double s2 = fro(term(100.0, false));
  EXPECT_NEAR(s2, 1.01 * s1, 1e-4 * s1);
  EXPECT_NEAR(sg.item(), s2, 1e-4 * s2);
  // A step that shrinks is left alone: S = Res * phi exactly.
  const Tensor g = to_tensor(randn_mat(m, n, 2, 0.5));
  const Tensor rr = p.project(g);
  const Mat s3 = of(fira_residual(g, rr, kernels::affine(rr, 0.5, 0.0), p, sg, false, t));
  Mat expect = of(g);
  const Mat pr = of(p.project_back(rr));
  for (size_t i = 0; i < expect.v.size(); ++i) expect.v[i] = (expect.v[i] - 0.25 * pr.v[i]) * 0.5;
  EXPECT_LT(max_abs_diff(s3, expect), 1e-5);
}

// At full rank the code form's residual is (1 - alpha) P R = (1 - alpha) G, scaled by phi;
// the paper form's orthogonal residual is zero.
TEST(Fira, FullRankResidualIsOneMinusAlphaTimesG) {
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{7, 4}, {4, 7}}) {
    Projector p = make_projector(ProjType::std_, m, n, std::min(m, n));
    const Mat gm = randn_mat(m, n, 8);
    const Tensor g = to_tensor(gm);
    refresh_exact(g, p);
    const Tensor rr = p.project(g);
    const Mat r = of(rr);
    // N with a different scale per projected row/column, so phi varies along G's long side.
    Mat nm = r;
    const bool per_row = p.right.defined();
    for (int64_t i = 0; i < nm.r; ++i)
      for (int64_t j = 0; j < nm.c; ++j) nm(i, j) *= 1.0 + 0.5 * (per_row ? i : j);
    FiraTerm t;
    t.scale = 0.25;
    Tensor sg = Tensor::zeros({});
    const Mat s = of(fira_residual(g, rr, to_tensor(nm), p, sg, true, t));
    Mat expect = gm;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) expect(i, j) *= 0.75 * (1.0 + 0.5 * (per_row ? i : j));
    EXPECT_LT(max_abs_diff(s, expect), 1e-4) << m << "x" << n;
    t.paper = true;
    const Mat sp = of(fira_residual(g, rr, to_tensor(nm), p, sg, true, t));
    EXPECT_LT(fro(sp), 1e-4 * fro(gm));
  }
}

// state_dict -> a fresh optimizer -> load -> continue gives the same weights bit for bit as an
// uninterrupted run, across refreshes, for exact and randomized GaLore and both Fira forms.
TEST(GaLore, StateRoundTripResumesBitExactly) {
  struct V {
    bool fira, paper;
    SvdMethod svd;
    bool natural = false;
  };
  for (V var : {V{false, false, SvdMethod::exact}, V{false, false, SvdMethod::randomized},
                V{true, false, SvdMethod::randomized}, V{true, true, SvdMethod::exact},
                V{false, false, SvdMethod::randomized, true}}) {
    GaLoreOptions o;
    o.lr = 0.01;
    o.weight_decay = 0.05;
    o.rank = 3;
    o.update_proj_gap = 2;
    o.svd = var.svd;
    o.fira = var.fira;
    o.fira_form = var.paper ? FiraForm::paper : FiraForm::code;
    o.natural = var.natural;
    o.natural_history = 3;  // wraps before the save at 4 and again after it
    o.target = ".*attn.*";
    auto make = [&](Tensor& w, Tensor& b) {
      w = to_tensor(randn_mat(12, 8, 1)).set_requires_grad();
      b = Tensor::from_vector<float>({1, 2}, {2}).set_requires_grad();
      ParamGroup g;
      g.params = {{"attn.w", w}, {"b", b}};
      return std::make_unique<GaLore>(std::vector<ParamGroup>{g}, o);
    };
    auto feed = [](Tensor& w, Tensor& b, int t) {
      w.set_grad(to_tensor(randn_mat(12, 8, 500 + t)));
      b.set_grad(Tensor::from_vector<float>({0.1f * t, -0.3f}, {2}));
    };
    Tensor w1, b1, w2, b2;
    auto a = make(w1, b1);
    for (int t = 1; t <= 7; ++t) feed(w1, b1, t), a->step();
    auto c = make(w2, b2);
    for (int t = 1; t <= 4; ++t) feed(w2, b2, t), c->step();
    const auto sd = c->state_dict();
    const std::vector<float> w_at4 = w2.to_vector<float>(), b_at4 = b2.to_vector<float>();
    Tensor w3, b3;
    auto d = make(w3, b3);
    w3.copy_(Tensor::from_vector<float>(w_at4, {12, 8}));
    b3.copy_(Tensor::from_vector<float>(b_at4, {2}));
    d->load_state_dict(sd);
    EXPECT_EQ(d->param_step("attn.w"), 4);
    for (int t = 5; t <= 7; ++t) feed(w3, b3, t), d->step();
    EXPECT_EQ(w3.to_vector<float>(), w1.to_vector<float>()) << "fira " << var.fira << " svd " << int(var.svd);
    EXPECT_EQ(b3.to_vector<float>(), b1.to_vector<float>());
    if (var.fira)
      EXPECT_EQ(d->param_state("attn.w").at("scaling_grad").item(), a->param_state("attn.w").at("scaling_grad").item());
    if (var.natural)
      EXPECT_EQ(d->param_state("attn.w").at("natural_history").to_vector<float>(),
                a->param_state("attn.w").at("natural_history").to_vector<float>());
  }
}

TEST(GaLore, GroupOptionsOverrideRankGapScaleAndProjType) {
  Tensor q = Tensor::zeros({16, 8}).set_requires_grad(), d = Tensor::zeros({8, 16}).set_requires_grad();
  GaLoreOptions o;
  o.rank = 4;
  o.target = ".*";
  ParamGroup gq, gd;
  gq.params = {{"q", q}};
  gq.options = {{"rank", int64_t{2}}, {"proj_type", std::string("left")}, {"update_proj_gap", int64_t{1}}};
  gd.params = {{"d", d}};
  GaLore opt({gq, gd}, o);
  q.set_grad(to_tensor(randn_mat(16, 8, 1)));
  d.set_grad(to_tensor(randn_mat(8, 16, 2)));
  opt.step();
  EXPECT_EQ(opt.param_state("q").at("exp_avg").shape(), (Shape{2, 8}));
  EXPECT_EQ(opt.param_state("q").at("ortho_left").shape(), (Shape{16, 2}));
  EXPECT_EQ(opt.param_state("d").at("exp_avg").shape(), (Shape{4, 16}));  // std on a wide matrix: left
  EXPECT_EQ(opt.param_state("d").at("ortho_left").shape(), (Shape{8, 4}));
  // State bytes: moments 2*2*8 + basis 16*2 for q, 2*4*16 + 8*4 for d, in f32.
  int64_t total = 0;
  for (int64_t b : opt.state_bytes()) total += b;
  EXPECT_EQ(total, 4 * (2 * 2 * 8 + 16 * 2 + 2 * 4 * 16 + 8 * 4));
}

TEST(GaLore, DefaultTargetIsTheAttentionAndMlpWeights) {
  NamedParams named = {{"embed.weight", Tensor::zeros({10, 4}).set_requires_grad()},
                       {"layers.0.attn_norm.weight", Tensor::zeros({4}).set_requires_grad()},
                       {"layers.0.attn.q_proj.weight", Tensor::zeros({4, 4}).set_requires_grad()},
                       {"layers.0.attn.q_proj.bias", Tensor::zeros({4}).set_requires_grad()},
                       {"layers.0.mlp.down_proj.weight", Tensor::zeros({4, 8}).set_requires_grad()},
                       {"lm_head.weight", Tensor::zeros({10, 4}).set_requires_grad()}};
  lathe::OptimizerConfig cfg;
  cfg.set_type(lathe::OptimizerConfig::GALORE);
  auto opt = make_optimizer(cfg, named);
  auto* gal = dynamic_cast<GaLore*>(opt.get());
  ASSERT_NE(gal, nullptr);
  EXPECT_EQ(gal->projected_names(),
            (std::set<std::string>{"layers.0.attn.q_proj.weight", "layers.0.mlp.down_proj.weight"}));
  EXPECT_DOUBLE_EQ(gal->options().eps, 1e-6);  // the reference's default, optimizer.eps unset
  cfg.set_eps(1e-8);
  cfg.set_type(lathe::OptimizerConfig::FIRA);
  opt = make_optimizer(cfg, named);
  EXPECT_STREQ(opt->name(), "Fira");
  EXPECT_DOUBLE_EQ(dynamic_cast<GaLore*>(opt.get())->options().eps, 1e-8);
}

TEST(GaLore, ConfigErrorsNameTheField) {
  NamedParams named = {{"layers.0.attn.q_proj.weight", Tensor::zeros({4, 4}).set_requires_grad()},
                       {"b", Tensor::zeros({4}).set_requires_grad()}};
  auto first_error = [&](const lathe::OptimizerConfig& c) -> std::string {
    try {
      make_optimizer(c, named);
    } catch (const configs::ConfigError& e) {
      return e.errors().empty() ? "(empty)" : e.errors()[0];
    }
    return "(no ConfigError)";
  };
  lathe::OptimizerConfig base;
  base.set_type(lathe::OptimizerConfig::GALORE);
  auto check = [&](std::function<void(lathe::OptimizerConfig&)> edit, const std::string& prefix) {
    lathe::OptimizerConfig c = base;
    edit(c);
    const std::string e = first_error(c);
    EXPECT_EQ(e.rfind(prefix, 0), 0u) << e;
  };
  check([](auto& c) { c.mutable_galore()->set_rank(0); }, "optimizer.galore.rank:");
  check([](auto& c) { c.mutable_galore()->set_update_proj_gap(-1); }, "optimizer.galore.update_proj_gap:");
  check([](auto& c) { c.mutable_galore()->set_scale(0); }, "optimizer.galore.scale:");
  check([](auto& c) { c.mutable_galore()->set_target("(attn"); }, "optimizer.galore.target:");
  check([](auto& c) { c.mutable_galore()->set_target("nothing_like_this"); }, "optimizer.galore.target: \"nothing_like_this\" matches no");
  check([](auto& c) { c.set_state_bits(16); }, "optimizer.state_bits:");
  check([](auto& c) { c.mutable_galore()->set_natural_history(0); }, "optimizer.galore.natural_history:");
  check([](auto& c) { c.mutable_galore()->set_natural_lambda(0); }, "optimizer.galore.natural_lambda:");
  check(
      [](auto& c) {
        c.set_type(lathe::OptimizerConfig::FIRA);
        c.mutable_galore()->set_natural(true);
      },
      "optimizer.galore.natural:");
  check([](auto& c) { c.set_adamw_variant(lathe::OptimizerConfig::TORCH); }, "optimizer.adamw_variant:");
  check(
      [](auto& c) {
        c.set_type(lathe::OptimizerConfig::FIRA);
        c.mutable_galore()->set_proj_type(lathe::GaLoreConfig::FULL);
      },
      "optimizer.galore.proj_type:");
  check(
      [](auto& c) {
        c.set_type(lathe::OptimizerConfig::FIRA);
        c.mutable_fira()->set_gamma(0.5);
      },
      "optimizer.fira.gamma:");
  check(
      [](auto& c) {
        auto* g = c.add_groups();
        g->set_name("attn");
        g->set_pattern(".*attn.*");
        (*g->mutable_options())["rank"] = "-2";
      },
      "optimizer.groups: group 'attn': option rank:");
  check(
      [](auto& c) {
        auto* g = c.add_groups();
        g->set_name("attn");
        g->set_pattern(".*attn.*");
        (*g->mutable_options())["proj_type"] = "sideways";
      },
      "optimizer.groups: group 'attn': option proj_type:");
}

// A resolved config (every field written out) keeps the reference defaults for GaLore/Fira:
// eps 1e-6 and the HF AdamW form, unless the file says otherwise.
TEST(GaLore, ResolvedConfigKeepsTheReferenceDefaults) {
  lathe::RunConfig cfg;
  cfg.mutable_optimizer()->set_type(lathe::OptimizerConfig::FIRA);
  configs::resolve(cfg);
  EXPECT_DOUBLE_EQ(cfg.optimizer().eps(), 1e-6);
  EXPECT_EQ(cfg.optimizer().adamw_variant(), lathe::OptimizerConfig::HF);
  lathe::RunConfig adam;
  configs::resolve(adam);
  EXPECT_DOUBLE_EQ(adam.optimizer().eps(), 1e-8);
  EXPECT_EQ(adam.optimizer().adamw_variant(), lathe::OptimizerConfig::TORCH);
  lathe::RunConfig set;
  set.mutable_optimizer()->set_type(lathe::OptimizerConfig::GALORE);
  set.mutable_optimizer()->set_eps(1e-8);
  configs::resolve(set);
  EXPECT_DOUBLE_EQ(set.optimizer().eps(), 1e-8);
  NamedParams named = {{"layers.0.attn.q_proj.weight", Tensor::zeros({4, 4}).set_requires_grad()}};
  auto opt = make_optimizer(cfg.optimizer(), named);  // a resolved config builds (target "" = default)
  EXPECT_STREQ(opt->name(), "Fira");
}

// 8-bit projected moments (GaLoreAdamW8bit): the projected moment of a matrix whose projected
// size reaches min_8bit_size is stored as blockwise 8-bit codes; smaller ones and names matched
// by f32_params keep f32. Over several steps across a refresh the weights track the f32 run
// closely (the 8-bit error is per step, not growing), the state holds the expected bytes, and a
// state round trip resumes bit for bit.
TEST(GaLore, EightBitProjectedMomentsTrackTheF32Run) {
  auto make = [](int bits, Tensor& big, Tensor& small, Tensor& emb) {
    big = to_tensor(randn_mat(96, 64, 1, 0.1)).set_requires_grad();    // std: right, R 96 x 48
    small = to_tensor(randn_mat(24, 16, 2, 0.1)).set_requires_grad();  // R 24 x 8: 192 < 4096
    emb = to_tensor(randn_mat(80, 64, 3, 0.1)).set_requires_grad();    // not projected, f32 by name
    GaLoreOptions o;
    o.lr = 0.01;
    o.rank = 48;
    o.update_proj_gap = 3;
    o.scale = 0.25;
    o.state_bits = bits;
    o.min_8bit_size = 4096;
    o.f32_params = "embed\\.weight";
    o.target = ".*attn.*";
    ParamGroup g;
    g.params = {{"attn.big", big}, {"attn.small", small}, {"embed.weight", emb}};
    return std::make_unique<GaLore>(std::vector<ParamGroup>{g}, o);
  };
  Tensor b8, s8, e8, b32, s32, e32;
  auto o8 = make(8, b8, s8, e8);
  auto o32 = make(32, b32, s32, e32);
  auto feed = [](Tensor& b, Tensor& s, Tensor& e, int t) {
    b.set_grad(to_tensor(randn_mat(96, 64, 700 + t, 0.01)));
    s.set_grad(to_tensor(randn_mat(24, 16, 800 + t, 0.01)));
    e.set_grad(to_tensor(randn_mat(80, 64, 900 + t, 0.01)));
  };
  for (int t = 1; t <= 6; ++t) {
    feed(b8, s8, e8, t), o8->step();
    feed(b32, s32, e32, t), o32->step();
  }
  const StateMap& st = o8->param_state("attn.big");
  ASSERT_TRUE(st.count("exp_avg_q8"));
  EXPECT_EQ(st.at("exp_avg_q8").shape(), (Shape{96, 48}));
  EXPECT_EQ(st.at("exp_avg_q8").dtype(), DType::u8);
  EXPECT_TRUE(o8->param_state("attn.small").count("exp_avg"));  // under min_8bit_size
  EXPECT_TRUE(o8->param_state("embed.weight").count("exp_avg"));  // f32_params
  // Bytes: 2 numel + 8 blocks for the 8-bit pair, plus the f32 basis.
  const int64_t nr = 96 * 48, blocks = (nr + 255) / 256;
  int64_t big_bytes = 0;
  for (const auto& [k, t] : st) big_bytes += static_cast<int64_t>(t.nbytes());
  EXPECT_EQ(big_bytes, 2 * nr + 8 * blocks + 4 * 48 * 64);
  // Mean relative change of the weights vs the f32 run (both moved from the same start).
  const Mat w0 = randn_mat(96, 64, 1, 0.1), w8 = of(b8), w32 = of(b32);
  double diff = 0, moved = 0;
  for (size_t i = 0; i < w0.v.size(); ++i) {
    diff += std::abs(w8.v[i] - w32.v[i]);
    moved += std::abs(w32.v[i] - static_cast<double>(static_cast<float>(w0.v[i])));
  }
  EXPECT_GT(moved, 0);
  EXPECT_GT(diff, 0) << "the 8-bit run equals the f32 one: the codes are not used";
  EXPECT_LT(diff / moved, 0.05) << "8-bit moments drifted from the f32 run";
  // The f32-state parameters are bit-identical between the two runs.
  EXPECT_EQ(s8.to_vector<float>(), s32.to_vector<float>());
  EXPECT_EQ(e8.to_vector<float>(), e32.to_vector<float>());

  // Round trip: a fresh optimizer loaded from the state continues bit for bit.
  Tensor b9, s9, e9;
  auto o9 = make(8, b9, s9, e9);
  b9.copy_(b8), s9.copy_(s8), e9.copy_(e8);
  o9->load_state_dict(o8->state_dict());
  for (int t = 7; t <= 9; ++t) {
    feed(b8, s8, e8, t), o8->step();
    feed(b9, s9, e9, t), o9->step();
  }
  EXPECT_EQ(b9.to_vector<float>(), b8.to_vector<float>());
  EXPECT_EQ(o9->param_state("attn.big").at("exp_avg_sq_q8").to_vector<uint8_t>(),
            o8->param_state("attn.big").at("exp_avg_sq_q8").to_vector<uint8_t>());
}
