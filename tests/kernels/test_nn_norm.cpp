// layer_norm / rms_norm and their fused backward passes on every available device: forward
// and saved statistics against the plain loop of reference.h (f64/f32, with and without
// affine parameters, strided inputs, bf16), backward (dx, dweight, dbias) against central
// finite differences in f64 (taken on the device), parameter gradients over many rows
// against an explicit sum; error messages on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

LATHE_DEVICE_TEST_SUITE(NormNn);

TEST_P(NormNn, LayerNormForwardMatchesReference) {
  Generator gen(11);
  for (DType dt : {DType::f64, DType::f32}) {
    const double tl = tol(dt, dt == DType::f64 ? 1e-12 : 2e-5);
    Tensor x = Tensor::randn({2, 3, 8}, gen, dt);
    Tensor w = Tensor::randn({8}, gen, dt), b = Tensor::randn({8}, gen, dt);
    NormOut o = layer_norm(on(x), on(w), on(b), 1e-5);
    RefNorm r = ref_norm(true, vec(x), 8, vec(w), vec(b), 1e-5);
    expect_close(vback(o.y), r.y, tl, "layer_norm y");
    expect_close(vback(o.mean), r.mean, tl, "layer_norm mean");
    expect_close(vback(o.rstd), r.rstd, tl, "layer_norm rstd");
    EXPECT_EQ(o.mean.shape(), (Shape{6}));
    EXPECT_EQ(o.rstd.dtype(), dt);  // f64 stats for f64, f32 for f32
    // No affine parameters.
    NormOut p = layer_norm(on(x), Tensor(), Tensor(), 1e-5);
    expect_close(vback(p.y), ref_norm(true, vec(x), 8, {}, {}, 1e-5).y, tl, "layer_norm y without affine");
  }
}

TEST_P(NormNn, RmsNormForwardMatchesReference) {
  Generator gen(12);
  for (DType dt : {DType::f64, DType::f32}) {
    const double tl = tol(dt, dt == DType::f64 ? 1e-12 : 2e-5);
    Tensor x = Tensor::randn({5, 6}, gen, dt);
    Tensor w = Tensor::randn({6}, gen, dt);
    NormOut o = rms_norm(on(x), on(w), 1e-6);
    RefNorm r = ref_norm(false, vec(x), 6, vec(w), {}, 1e-6);
    expect_close(vback(o.y), r.y, tl, "rms_norm y");
    expect_close(vback(o.rstd), r.rstd, tl, "rms_norm rstd");
    EXPECT_FALSE(o.mean.defined());
    expect_close(vback(rms_norm(on(x), Tensor(), 1e-6).y), ref_norm(false, vec(x), 6, {}, {}, 1e-6).y, tl,
                 "rms_norm without weight");
  }
}

TEST_P(NormNn, StridedInputsAndBf16) {
  Generator gen(13);
  Tensor base = Tensor::randn({7, 4}, gen, DType::f64);
  Tensor xt = base.transpose(0, 1);  // [4, 7]: rows of 7 strided by 4
  Tensor w = Tensor::randn({14}, gen, DType::f64).slice(0, 0, 14, 2);  // strided weight
  NormOut o = layer_norm(on(xt), on(w), Tensor(), 1e-5);
  expect_close(vback(o.y), ref_norm(true, vec(xt), 7, vec(w), {}, 1e-5).y, tol(DType::f64, 1e-12),
               "layer_norm strided");
  NormOut r = rms_norm(on(xt), on(w), 1e-5);
  expect_close(vback(r.y), ref_norm(false, vec(xt), 7, vec(w), {}, 1e-5).y, tol(DType::f64, 1e-12),
               "rms_norm strided");

  Tensor xb = Tensor::randn({3, 16}, gen, DType::bf16);
  Tensor wb = Tensor::randn({16}, gen, DType::bf16);
  NormOut ob = layer_norm(on(xb), on(wb), Tensor(), 1e-5);
  EXPECT_EQ(ob.y.dtype(), DType::bf16);
  EXPECT_EQ(ob.rstd.dtype(), DType::f32);
  RefNorm rb = ref_norm(true, vec(xb), 16, vec(wb), {}, 1e-5);
  expect_close(vback(ob.y), rb.y, tol(DType::bf16, 1e-2), "bf16 layer_norm y");
  expect_close(vback(ob.rstd), rb.rstd, tol(DType::f32, 1e-5), "bf16 layer_norm rstd (f32)");
}

TEST_P(NormNn, LayerNormBackwardMatchesFiniteDifferences) {
  Generator gen(14);
  const int64_t C = 5;
  // everything on the device; numeric_grad perturbs x, w, b there
  Tensor x = on(Tensor::randn({3, C}, gen, DType::f64));
  Tensor w = on(Tensor::randn({C}, gen, DType::f64)), b = on(Tensor::randn({C}, gen, DType::f64));
  Tensor u = on(Tensor::randn({3, C}, gen, DType::f64));
  auto f = [&] { return dot(u, layer_norm(x, w, b, 1e-5).y); };
  NormOut o = layer_norm(x, w, b, 1e-5);
  NormGrads g = layer_norm_backward(u, x, w, o.mean, o.rstd, true);
  expect_close(vback(g.dx), numeric_grad(x, f), 1e-7, "layer_norm dx");
  expect_close(vback(g.dweight), numeric_grad(w, f), 1e-7, "layer_norm dweight");
  expect_close(vback(g.dbias), numeric_grad(b, f), 1e-7, "layer_norm dbias");

  // Without affine parameters: only dx.
  auto f0 = [&] { return dot(u, layer_norm(x, Tensor(), Tensor(), 1e-5).y); };
  NormOut o0 = layer_norm(x, Tensor(), Tensor(), 1e-5);
  NormGrads g0 = layer_norm_backward(u, x, Tensor(), o0.mean, o0.rstd, false);
  EXPECT_FALSE(g0.dweight.defined());
  EXPECT_FALSE(g0.dbias.defined());
  expect_close(vback(g0.dx), numeric_grad(x, f0), 1e-7, "layer_norm dx without affine");
}

TEST_P(NormNn, RmsNormBackwardMatchesFiniteDifferences) {
  Generator gen(15);
  Tensor x = on(Tensor::randn({4, 6}, gen, DType::f64));
  Tensor w = on(Tensor::randn({6}, gen, DType::f64));
  Tensor u = on(Tensor::randn({4, 6}, gen, DType::f64));
  auto f = [&] { return dot(u, rms_norm(x, w, 1e-6).y); };
  NormOut o = rms_norm(x, w, 1e-6);
  NormGrads g = rms_norm_backward(u, x, w, o.rstd);
  expect_close(vback(g.dx), numeric_grad(x, f), 1e-7, "rms_norm dx");
  expect_close(vback(g.dweight), numeric_grad(w, f), 1e-7, "rms_norm dweight");
  EXPECT_FALSE(g.dbias.defined());
}

TEST_P(NormNn, ParameterGradientsOverManyRows) {
  // Enough rows for several partial-sum blocks; dweight/dbias against explicit sums.
  Generator gen(16);
  const int64_t rows = 300, C = 64;  // rows * C above the threading threshold
  Tensor x = Tensor::randn({rows, C}, gen, DType::f32);
  Tensor w = Tensor::randn({C}, gen, DType::f32), b = Tensor::randn({C}, gen, DType::f32);
  Tensor gy = Tensor::randn({rows, C}, gen, DType::f32);
  NormOut o = layer_norm(on(x), on(w), on(b), 1e-5);
  NormGrads g = layer_norm_backward(on(gy), on(x), on(w), o.mean, o.rstd, true);
  RefNormGrads r = ref_layer_norm_backward(vec(gy), vec(x), C, vec(w), 1e-5);
  expect_close(vback(g.dweight), r.dw, tol(DType::f32, 1e-4), "layer_norm dweight sum");
  expect_close(vback(g.dx), r.dx, tol(DType::f32, 1e-4), "layer_norm dx (threaded)");
  expect_close(vback(g.dbias), r.db, tol(DType::f32, 1e-4), "layer_norm dbias sum");
  EXPECT_EQ(g.dweight.dtype(), DType::f32);
  // Running again gives bit-identical parameter gradients.
  NormGrads g2 = layer_norm_backward(on(gy), on(x), on(w), o.mean, o.rstd, true);
  EXPECT_EQ(g.dweight.to_vector<float>(), g2.dweight.to_vector<float>());
}

TEST(NormNnCpu, ErrorsNameOpAndShapes) {
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
