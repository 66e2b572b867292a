// SGD-SaI (optim/sgd_sai.h) against the spec's formulas (specs/optimizers.md §4) written out in
// double: the g-SNR with the unbiased std, the update over several steps with and without
// momentum, a parameter without a gradient on the first step, one-element tensors, the paper's
// normalisation, and resume (state dict round trip) continuing bit for bit.
#include <gtest/gtest.h>

#include <cmath>

#include "optim/adamw.h"
#include "optim/sgd_sai.h"
#include "tests/common/test_helpers.h"

using namespace lathe;
using namespace lathe::optim;

namespace {

std::vector<double> randn_d(int64_t n, uint64_t seed, double scale, double shift = 0.0) {
  Generator g(seed);
  std::vector<double> v = Tensor::randn({n}, g).to_vector<double>();
  for (auto& x : v) x = static_cast<double>(static_cast<float>(x * scale + shift));  // f32-representable
  return v;
}

Tensor tensor_of(const std::vector<double>& v, const Shape& s) {
  std::vector<float> f(v.begin(), v.end());
  return Tensor::from_vector<float>(f, s);
}

// ||g|| / (std_unbiased(g) + eps), std = 0 for one element.
double ref_gsnr(const std::vector<double>& g, double eps) {
  const double n = static_cast<double>(g.size());
  double sum = 0, sq = 0;
  for (double x : g) {
    sum += x;
    sq += x * x;
  }
  double var = 0;
  if (g.size() > 1) {
    const double mean = sum / n;
    for (double x : g) var += (x - mean) * (x - mean);
    var /= n - 1;
  }
  return std::sqrt(sq) / (std::sqrt(var) + eps);
}

struct RefSai {
  std::vector<double> p, buf;
  double gsnr = 0;
  int t = 0;
  void step(const std::vector<double>& g, double lr, double mu, double wd, double eps, double scale_div = 1.0,
            const double* gsnr_override = nullptr) {
    ++t;
    if (t == 1) gsnr = gsnr_override ? *gsnr_override : ref_gsnr(g, eps);
    if (buf.empty()) buf.assign(g.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      const double d = mu == 0 ? g[i] : (t == 1 ? g[i] : mu * buf[i] + (1 - mu) * g[i]);
      buf[i] = d;
      p[i] = p[i] * (1 - lr * wd) - lr * (gsnr / scale_div) * d;
    }
  }
};

ParamGroup group_of(const NamedParams& ps, double wd) {
  ParamGroup g;
  g.params = ps;
  g.weight_decay = wd;
  return g;
}

void expect_near_vec(const std::vector<double>& got, const std::vector<double>& want, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], rel * std::max(1.0, std::abs(want[i]))) << what << " [" << i << "]";
}

}  // namespace

TEST(SgdSai, GsnrMatchesDirectComputation) {
  // Shifted values, so ||g||^2 = (N-1) std^2 + N mean^2 is not dominated by either term.
  const std::vector<double> g = randn_d(35, 4, 0.3, 0.2);
  const Tensor got = gsnr_of(tensor_of(g, {5, 7}), 1e-8);
  EXPECT_EQ(got.dim(), 0);
  EXPECT_NEAR(got.item(), ref_gsnr(g, 1e-8), 1e-5 * ref_gsnr(g, 1e-8));
  // Unbiased: the population std would give a value sqrt(35/34) ~ 1.5% larger.
  double pop_var = 0, mean = 0;
  for (double x : g) mean += x / 35;
  for (double x : g) pop_var += (x - mean) * (x - mean) / 35;
  double norm = 0;
  for (double x : g) norm += x * x;
  EXPECT_GT(std::abs(got.item() - std::sqrt(norm) / std::sqrt(pop_var)), 1e-3 * got.item());
  // One element: std is taken as 0, so gsnr = |g| / eps.
  EXPECT_NEAR(gsnr_of(Tensor::from_vector<float>({-0.25f}, {1}), 1e-8).item(), 0.25 / 1e-8, 0.25 / 1e-8 * 1e-6);
}

TEST(SgdSai, UpdateRuleOverSeveralSteps) {
  for (double mu : {0.9, 0.0}) {
    const std::vector<double> w0 = randn_d(12, 1, 0.5), b0 = randn_d(4, 2, 0.5);
    Tensor w = tensor_of(w0, {3, 4}).set_requires_grad(), b = tensor_of(b0, {4}).set_requires_grad();
    SGDSaIOptions o;
    o.lr = 0.01;
    o.momentum = mu;
    SGDSaI opt(decay_groups({{"w", w}, {"b", b}}, 0.1), o);
    RefSai rw{w0, {}}, rb{b0, {}};
    for (int s = 0; s < 4; ++s) {
      const std::vector<double> gw = randn_d(12, 10 + s, 0.1, 0.05), gb = randn_d(4, 20 + s, 0.1);
      w.set_grad(tensor_of(gw, {3, 4}));
      b.set_grad(tensor_of(gb, {4}));
      opt.step();
      rw.step(gw, 0.01, mu, 0.1, 1e-8);
      rb.step(gb, 0.01, mu, 0.0, 1e-8);  // 1-D: the no_decay group
      expect_near_vec(w.to_vector<double>(), rw.p, 2e-6, "w step " + std::to_string(s));
      expect_near_vec(b.to_vector<double>(), rb.p, 2e-6, "b step " + std::to_string(s));
    }
    // The g-SNR is the first step's, kept as a 0-d state tensor.
    EXPECT_NEAR(opt.param_state("w").at("gsnr").item(), rw.gsnr, 1e-5 * rw.gsnr);
    EXPECT_EQ(opt.param_state("w").at("gsnr").dim(), 0);
    EXPECT_EQ(opt.param_state("w").count("momentum_buffer"), mu > 0 ? 1u : 0u);
    if (mu > 0) expect_near_vec(opt.param_state("w").at("momentum_buffer").to_vector<double>(), rw.buf, 1e-6, "buf");
    // 4 bytes per parameter with momentum (plus the 0-d g-SNR), only the g-SNR without.
    EXPECT_EQ(opt.state_bytes()[0] + opt.state_bytes()[1], mu > 0 ? (12 + 4) * 4 + 2 * 4 : 2 * 4);
  }
}

TEST(SgdSai, ParameterWithoutGradientOnTheFirstStep) {
  const std::vector<double> a0 = randn_d(6, 1, 0.5), b0 = randn_d(6, 2, 0.5);
  Tensor a = tensor_of(a0, {2, 3}).set_requires_grad(), b = tensor_of(b0, {2, 3}).set_requires_grad();
  SGDSaIOptions o;
  o.lr = 0.02;
  SGDSaI opt({group_of({{"a", a}, {"b", b}}, 0.0)}, o);
  RefSai ra{a0, {}}, rb{b0, {}};
  const std::vector<double> g1 = randn_d(6, 5, 0.1);
  a.set_grad(tensor_of(g1, {2, 3}));
  opt.step();  // b has no gradient: no state, no g-SNR yet
  ra.step(g1, 0.02, 0.9, 0.0, 1e-8);
  EXPECT_TRUE(opt.param_state("b").empty());
  EXPECT_EQ(opt.param_step("b"), 0);
  for (int s = 0; s < 3; ++s) {
    const std::vector<double> ga = randn_d(6, 30 + s, 0.1), gb = randn_d(6, 40 + s, 0.1, 0.03);
    a.set_grad(tensor_of(ga, {2, 3}));
    b.set_grad(tensor_of(gb, {2, 3}));
    opt.step();
    ra.step(ga, 0.02, 0.9, 0.0, 1e-8);
    rb.step(gb, 0.02, 0.9, 0.0, 1e-8);  // b's g-SNR from its own first gradient
  }
  EXPECT_EQ(opt.param_step("b"), 3);
  EXPECT_NEAR(opt.param_state("b").at("gsnr").item(), rb.gsnr, 1e-5 * rb.gsnr);
  expect_near_vec(a.to_vector<double>(), ra.p, 2e-6, "a");
  expect_near_vec(b.to_vector<double>(), rb.p, 2e-6, "b");
}

TEST(SgdSai, SingleElementTensorsScaleByAbsGradOverEps) {
  Tensor s = Tensor::from_vector<float>({1.0f}, {1}).set_requires_grad();
  SGDSaIOptions o;
  o.lr = 1e-9;
  o.momentum = 0.0;
  o.eps = 1e-3;
  SGDSaI opt({group_of({{"s", s}}, 0.0)}, o);
  s.set_grad(Tensor::from_vector<float>({0.5f}, {1}));
  opt.step();
  // gsnr = 0.5 / 1e-3 = 500; p = 1 - 1e-9 * 500 * 0.5
  EXPECT_NEAR(opt.param_state("s").at("gsnr").item(), 500.0, 1e-3);
  EXPECT_NEAR(s.item(), 1.0 - 1e-9 * 500 * 0.5, 1e-7);
}

TEST(SgdSai, PaperNormalisationDividesByTheLargestGsnr) {
  const std::vector<double> a0 = randn_d(20, 1, 0.5), b0 = randn_d(5, 2, 0.5);
  Tensor a = tensor_of(a0, {4, 5}).set_requires_grad(), b = tensor_of(b0, {5}).set_requires_grad();
  SGDSaIOptions o;
  o.lr = 0.05;
  o.normalize = true;
  SGDSaI opt({group_of({{"a", a}, {"b", b}}, 0.01)}, o);
  RefSai ra{a0, {}}, rb{b0, {}};
  double mx = 0;
  for (int s = 0; s < 3; ++s) {
    const std::vector<double> ga = randn_d(20, 50 + s, 0.1, 0.02), gb = randn_d(5, 60 + s, 0.1);
    if (s == 0) mx = std::max(ref_gsnr(ga, 1e-8), ref_gsnr(gb, 1e-8));
    a.set_grad(tensor_of(ga, {4, 5}));
    b.set_grad(tensor_of(gb, {5}));
    opt.step();
    ra.step(ga, 0.05, 0.9, 0.01, 1e-8, mx);
    rb.step(gb, 0.05, 0.9, 0.01, 1e-8, mx);
  }
  expect_near_vec(a.to_vector<double>(), ra.p, 2e-6, "a");
  expect_near_vec(b.to_vector<double>(), rb.p, 2e-6, "b");
  // The stored g-SNRs stay the raw ones (the maximum is recomputed from them on resume).
  EXPECT_NEAR(opt.param_state("a").at("gsnr").item(), ra.gsnr, 1e-5 * ra.gsnr);
}

TEST(SgdSai, ResumeContinuesBitForBit) {
  for (bool normalize : {false, true}) {
    auto make_params = [] {
      return std::make_pair(tensor_of(randn_d(12, 1, 0.5), {3, 4}).set_requires_grad(),
                            tensor_of(randn_d(4, 2, 0.5), {4}).set_requires_grad());
    };
    auto [w1, b1] = make_params();
    auto [w2, b2] = make_params();
    SGDSaIOptions o;
    o.lr = 0.01;
    o.normalize = normalize;
    SGDSaI full(decay_groups({{"w", w1}, {"b", b1}}, 0.1), o);
    SGDSaI first(decay_groups({{"w", w2}, {"b", b2}}, 0.1), o);
    auto feed = [](Tensor& w, Tensor& b, int s) {
      w.set_grad(tensor_of(randn_d(12, 100 + s, 0.1), {3, 4}));
      b.set_grad(tensor_of(randn_d(4, 200 + s, 0.1), {4}));
    };
    for (int s = 0; s < 3; ++s) {
      feed(w1, b1, s);
      full.step();
      feed(w2, b2, s);
      first.step();
    }
    // A checkpoint holds copies of the state; a new optimizer (new process) loads them.
    std::map<std::string, Tensor> saved;
    for (const auto& [k, t] : first.state_dict()) saved[k] = t.clone();
    SGDSaI resumed(decay_groups({{"w", w2}, {"b", b2}}, 0.1), o);
    resumed.load_state_dict(saved);
    for (int s = 3; s < 6; ++s) {
      feed(w1, b1, s);
      full.step();
      feed(w2, b2, s);
      resumed.step();
    }
    EXPECT_EQ(w1.to_vector<float>(), w2.to_vector<float>()) << "normalize " << normalize;
    EXPECT_EQ(b1.to_vector<float>(), b2.to_vector<float>()) << "normalize " << normalize;
  }
}
