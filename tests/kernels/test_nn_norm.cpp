// layer_norm / rms_norm and their fused backward passes: forward and saved statistics
// against a plain loop (f64/f32, with and without affine parameters, strided inputs,
// bf16), backward (dx, dweight, dbias) against central finite differences in f64,
// parameter gradients over many rows against an explicit sum, and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

struct RefNorm {
  std::vector<double> y, mean, rstd;
};

// Row-wise norm over the last dim C of row-major x; w/b empty = no affine.
RefNorm ref_norm(bool layer, const std::vector<double>& x, int64_t C, const std::vector<double>& w,
                 const std::vector<double>& b, double eps) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  RefNorm r;
  r.y.resize(x.size());
  for (int64_t i = 0; i < rows; ++i) {
    double mu = 0, ms = 0;
    for (int64_t j = 0; j < C; ++j) mu += x[i * C + j] / C;
    if (!layer) mu = 0;
    for (int64_t j = 0; j < C; ++j) ms += (x[i * C + j] - mu) * (x[i * C + j] - mu) / C;
    const double rs = 1 / std::sqrt(ms + eps);
    r.mean.push_back(mu);
    r.rstd.push_back(rs);
    for (int64_t j = 0; j < C; ++j) {
      double v = (x[i * C + j] - mu) * rs;
      if (!w.empty()) v *= w[j];
      if (!b.empty()) v += b[j];
      r.y[i * C + j] = v;
    }
  }
  return r;
}

TEST(NormNn, LayerNormForwardMatchesReference) {
  Generator gen(11);
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
    Tensor x = Tensor::randn({2, 3, 8}, gen, dt);
    Tensor w = Tensor::randn({8}, gen, dt), b = Tensor::randn({8}, gen, dt);
    NormOut o = layer_norm(x, w, b, 1e-5);
    RefNorm r = ref_norm(true, vec(x), 8, vec(w), vec(b), 1e-5);
    expect_close(vec(o.y), r.y, tol, "layer_norm y");
    expect_close(vec(o.mean), r.mean, tol, "layer_norm mean");
    expect_close(vec(o.rstd), r.rstd, tol, "layer_norm rstd");
    EXPECT_EQ(o.mean.shape(), (Shape{6}));
    EXPECT_EQ(o.rstd.dtype(), dt);  // f64 stats for f64, f32 for f32
    // No affine parameters.
    NormOut p = layer_norm(x, Tensor(), Tensor(), 1e-5);
    expect_close(vec(p.y), ref_norm(true, vec(x), 8, {}, {}, 1e-5).y, tol, "layer_norm y without affine");
  }
}

TEST(NormNn, RmsNormForwardMatchesReference) {
  Generator gen(12);
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-12 : 2e-5;
    Tensor x = Tensor::randn({5, 6}, gen, dt);
    Tensor w = Tensor::randn({6}, gen, dt);
    NormOut o = rms_norm(x, w, 1e-6);
    RefNorm r = ref_norm(false, vec(x), 6, vec(w), {}, 1e-6);
    expect_close(vec(o.y), r.y, tol, "rms_norm y");
    expect_close(vec(o.rstd), r.rstd, tol, "rms_norm rstd");
    EXPECT_FALSE(o.mean.defined());
    expect_close(vec(rms_norm(x, Tensor(), 1e-6).y), ref_norm(false, vec(x), 6, {}, {}, 1e-6).y, tol,
                 "rms_norm without weight");
  }
}

TEST(NormNn, StridedInputsAndBf16) {
  Generator gen(13);
  Tensor base = Tensor::randn({7, 4}, gen, DType::f64);
  Tensor xt = base.transpose(0, 1);  // [4, 7]: rows of 7 strided by 4
  Tensor w = Tensor::randn({14}, gen, DType::f64).slice(0, 0, 14, 2);  // strided weight
  NormOut o = layer_norm(xt, w, Tensor(), 1e-5);
  expect_close(vec(o.y), ref_norm(true, vec(xt), 7, vec(w), {}, 1e-5).y, 1e-12, "layer_norm strided");
  NormOut r = rms_norm(xt, w, 1e-5);
  expect_close(vec(r.y), ref_norm(false, vec(xt), 7, vec(w), {}, 1e-5).y, 1e-12, "rms_norm strided");

  Tensor xb = Tensor::randn({3, 16}, gen, DType::bf16);
  Tensor wb = Tensor::randn({16}, gen, DType::bf16);
  NormOut ob = layer_norm(xb, wb, Tensor(), 1e-5);
  EXPECT_EQ(ob.y.dtype(), DType::bf16);
  EXPECT_EQ(ob.rstd.dtype(), DType::f32);
  RefNorm rb = ref_norm(true, vec(xb), 16, vec(wb), {}, 1e-5);
  expect_close(vec(ob.y), rb.y, 1e-2, "bf16 layer_norm y");
  expect_close(vec(ob.rstd), rb.rstd, 1e-5, "bf16 layer_norm rstd (f32)");
}

TEST(NormNn, LayerNormBackwardMatchesFiniteDifferences) {
  Generator gen(14);
  const int64_t C = 5;
  Tensor x = Tensor::randn({3, C}, gen, DType::f64);
  Tensor w = Tensor::randn({C}, gen, DType::f64), b = Tensor::randn({C}, gen, DType::f64);
  Tensor u = Tensor::randn({3, C}, gen, DType::f64);
  auto f = [&] { return dot(u, layer_norm(x, w, b, 1e-5).y); };
  NormOut o = layer_norm(x, w, b, 1e-5);
  NormGrads g = layer_norm_backward(u, x, w, o.mean, o.rstd, true);
  expect_close(vec(g.dx), numeric_grad(x, f), 1e-7, "layer_norm dx");
  expect_close(vec(g.dweight), numeric_grad(w, f), 1e-7, "layer_norm dweight");
  expect_close(vec(g.dbias), numeric_grad(b, f), 1e-7, "layer_norm dbias");

  // Without affine parameters: only dx.
  auto f0 = [&] { return dot(u, layer_norm(x, Tensor(), Tensor(), 1e-5).y); };
  NormOut o0 = layer_norm(x, Tensor(), Tensor(), 1e-5);
  NormGrads g0 = layer_norm_backward(u, x, Tensor(), o0.mean, o0.rstd, false);
  EXPECT_FALSE(g0.dweight.defined());
  EXPECT_FALSE(g0.dbias.defined());
  expect_close(vec(g0.dx), numeric_grad(x, f0), 1e-7, "layer_norm dx without affine");
}

TEST(NormNn, RmsNormBackwardMatchesFiniteDifferences) {
  Generator gen(15);
  Tensor x = Tensor::randn({4, 6}, gen, DType::f64);
  Tensor w = Tensor::randn({6}, gen, DType::f64);
  Tensor u = Tensor::randn({4, 6}, gen, DType::f64);
  auto f = [&] { return dot(u, rms_norm(x, w, 1e-6).y); };
  NormOut o = rms_norm(x, w, 1e-6);
  NormGrads g = rms_norm_backward(u, x, w, o.rstd);
  expect_close(vec(g.dx), numeric_grad(x, f), 1e-7, "rms_norm dx");
  expect_close(vec(g.dweight), numeric_grad(w, f), 1e-7, "rms_norm dweight");
  EXPECT_FALSE(g.dbias.defined());
}

TEST(NormNn, ParameterGradientsOverManyRows) {
  // Enough rows for several partial-sum blocks; dweight/dbias against explicit sums.
  Generator gen(16);
  const int64_t rows = 300, C = 64;  // rows * C above the threading threshold
  Tensor x = Tensor::randn({rows, C}, gen, DType::f32);
  Tensor w = Tensor::randn({C}, gen, DType::f32), b = Tensor::randn({C}, gen, DType::f32);
  Tensor gy = Tensor::randn({rows, C}, gen, DType::f32);
  NormOut o = layer_norm(x, w, b, 1e-5);
  NormGrads g = layer_norm_backward(gy, x, w, o.mean, o.rstd, true);
  auto vx = vec(x), vg = vec(gy);
  RefNorm r = ref_norm(true, vx, C, {}, {}, 1e-5);  // y without affine = xhat
  std::vector<double> dw(C, 0.0), db(C, 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < C; ++j) {
      dw[j] += vg[i * C + j] * r.y[i * C + j];
      db[j] += vg[i * C + j];
    }
  expect_close(vec(g.dweight), dw, 1e-4, "layer_norm dweight sum");
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = gy * w.
  auto vw = vec(w);
  std::vector<double> dx(rows * C);
  for (int64_t i = 0; i < rows; ++i) {
    double a = 0, bb = 0;
    for (int64_t j = 0; j < C; ++j) {
      a += vg[i * C + j] * vw[j] / C;
      bb += vg[i * C + j] * vw[j] * r.y[i * C + j] / C;
    }
    for (int64_t j = 0; j < C; ++j) dx[i * C + j] = r.rstd[i] * (vg[i * C + j] * vw[j] - a - r.y[i * C + j] * bb);
  }
  expect_close(vec(g.dx), dx, 1e-4, "layer_norm dx (threaded)");
  expect_close(vec(g.dbias), db, 1e-4, "layer_norm dbias sum");
  EXPECT_EQ(g.dweight.dtype(), DType::f32);
  // Running again gives bit-identical parameter gradients.
  NormGrads g2 = layer_norm_backward(gy, x, w, o.mean, o.rstd, true);
  EXPECT_EQ(g.dweight.to_vector<float>(), g2.dweight.to_vector<float>());
}

TEST(NormNn, ErrorsNameOpAndShapes) {
  Tensor x = Tensor::zeros({2, 4});
  try {
    layer_norm(x, Tensor::ones({3}), Tensor(), 1e-5);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("layer_norm"), std::string::npos) << m;
    EXPECT_NE(m.find("[2, 4]"), std::string::npos) << m;
    EXPECT_NE(m.find("[3]"), std::string::npos) << m;
  }
  EXPECT_THROW(rms_norm(Tensor::zeros({2, 4}, DType::i32), Tensor(), 1e-5), Error);
  NormOut o = rms_norm(x, Tensor(), 1e-5);
  try {
    rms_norm_backward(x, x, Tensor(), o.rstd.to(DType::f64));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rms_norm_backward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rstd"), std::string::npos) << e.what();
  }
}

}  // namespace
