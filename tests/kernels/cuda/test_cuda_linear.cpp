// CUDA parity of the fused ops: kernels::linear (cuBLASLt with bias / GELU epilogues, the
// pre-activation as the epilogue's aux output) forward and backward, autograd::linear on
// both devices, and adamw_step_multi (the multi-tensor AdamW kernel) against per-tensor
// adamw_step. Same inputs on both devices (drawn on the CPU, copied over), sizes that are no
// multiple of any tile (37 x 67 x 129), batch dims, strided inputs, with and without bias and
// activation. Linked into test_cuda_parity, whose main poisons every CUDA allocation with
// NaNs (so unwritten outputs fail) and prints one line when there is no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#ifndef LATHE_PARITY_SELFTEST_ON_CPU
#include "kernels/cuda/cuda_ops.h"  // linear_declined_count
#endif

using namespace lathe;
using namespace lathe::kernels;

namespace {

#ifdef LATHE_PARITY_SELFTEST_ON_CPU
const Device kDev = Device::cpu();
#else
const Device kDev = Device::cuda(0);
#endif

class CudaLinear : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef LATHE_PARITY_SELFTEST_ON_CPU
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    // The opt-in paths (cuda_ops.h) are what these tests verify.
    cuda::set_linear_lt_enabled(true);
    cuda::set_multi_tensor_adamw_enabled(true);
#endif
  }
};

struct Tol {
  double rtol, atol, norm;
};
Tol tol_for(DType dt) {
  switch (dt) {
    case DType::f64: return {1e-12, 1e-12, 1e-12};
    case DType::f32: return {1e-5, 1e-5, 1e-5};
    case DType::bf16: return {1e-2, 1e-2, 1e-2};
    default: return {2e-3, 2e-3, 2e-3};  // f16
  }
}

// |got - want| <= rtol |want| + atol rms(want) elementwise and a norm-relative bound, as in
// test_cuda_parity.cpp; NaN anywhere (a poisoned, unwritten output) fails.
::testing::AssertionResult close(const Tensor& got, const Tensor& want, Tol tol, const std::string& what) {
  if (!got.defined() || !want.defined())
    return ::testing::AssertionFailure() << what << ": undefined (got " << got.defined() << ", want "
                                         << want.defined() << ")";
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << what << ": " << got.shape_str() << " " << dtype_name(got.dtype())
                                         << " vs CPU " << want.shape_str() << " " << dtype_name(want.dtype());
  if (got.device() != kDev)
    return ::testing::AssertionFailure() << what << ": result is on " << got.device().str();
  const std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  double sq = 0, sqd = 0, max_err = 0;
  for (double v : w) sq += v * v;
  const double rms = w.empty() ? 0.0 : std::sqrt(sq / static_cast<double>(w.size()));
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = std::abs(g[i] - w[i]);
    const bool ok = d <= tol.rtol * std::abs(w[i]) + tol.atol * rms;  // false for NaN
    sqd += std::isfinite(d) ? d * d : INFINITY;
    if (std::isfinite(d)) max_err = std::max(max_err, d);
    if (!ok && bad++ < 6) first << "\n    [" << i << "] cuda " << g[i] << " cpu " << w[i];
  }
  const double nrel = sq > 0 ? std::sqrt(sqd / sq) : std::sqrt(sqd);
  if (bad == 0 && (nrel <= tol.norm || (sq == 0 && sqd == 0))) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << " " << want.shape_str() << " " << dtype_name(want.dtype()) << ": "
                                       << bad << " of " << w.size() << " off, max abs err " << max_err
                                       << ", norm-relative " << nrel << first.str();
}

::testing::AssertionResult bits_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << what << ": " << got.shape_str() << " vs " << want.shape_str();
  Tensor g = got.to(Device::cpu()).contiguous(), w = want.to(Device::cpu()).contiguous();
  const size_t es = w.element_size();
  const auto* gp = static_cast<const unsigned char*>(g.raw_data());
  const auto* wp = static_cast<const unsigned char*>(w.raw_data());
  for (size_t i = 0; i < w.nbytes(); i += es)
    if (std::memcmp(gp + i, wp + i, es) != 0)
      return ::testing::AssertionFailure() << what << ": element " << i / es << " differs: "
                                           << g.to_vector<double>()[i / es] << " vs " << w.to_vector<double>()[i / es];
  return ::testing::AssertionSuccess();
}

struct Pair {
  Tensor cpu, gpu;
};
Pair randn(const Shape& s, DType dt, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  Tensor x = affine(Tensor::randn(s, g, DType::f64), scale, 0.0).to(dt);
  return {x, x.to(kDev)};
}
Pair transposed(const Pair& p) { return {p.cpu.transpose(0, 1), p.gpu.transpose(0, 1)}; }

std::string tag(DType dt, const Shape& xs, bool strided, bool bias, Activation act) {
  return std::string(dtype_name(dt)) + " x " + shape_str(xs) + (strided ? " (transposed)" : "") +
         (bias ? " +bias " : " ") + activation_name(act);
}

struct LinCase {
  Shape x;
  int64_t N;
  bool strided;  // x is a transposed view (2-D)
};
// N = 129 and 67: the aux leading dim is padded to a multiple of 8; N = 64: written in place.
const LinCase kLinCases[] = {
    {{37, 67}, 129, false}, {{2, 3, 67}, 129, false}, {{67}, 129, false},
    {{37, 67}, 64, true},   {{4, 5, 67}, 64, false},  {{1, 67}, 67, false},
};
constexpr int64_t kK = 67;

Pair make_x(const LinCase& c, DType dt, uint64_t seed) {
  // Scaled so the pre-activations are O(1): the GELU's curved part is exercised.
  const double s = 1.0 / std::sqrt(static_cast<double>(kK));
  return c.strided ? transposed(randn({c.x[1], c.x[0]}, dt, seed, s)) : randn(c.x, dt, seed, s);
}

}  // namespace

TEST_F(CudaLinear, ForwardWithAndWithoutBiasAndGelu) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    for (const LinCase& c : kLinCases) {
      Pair x = make_x(c, dt, 1), w = randn({c.N, kK}, dt, 2), b = randn({c.N}, dt, 3, 0.5);
      for (bool with_bias : {false, true}) {
        for (Activation act : {Activation::none, Activation::gelu_tanh}) {
          const std::string n = tag(dt, c.x, c.strided, with_bias, act);
          Tensor pre_c, pre_g;
          Tensor yc = linear(x.cpu, w.cpu, with_bias ? b.cpu : Tensor(), act, &pre_c);
          Tensor yg = linear(x.gpu, w.gpu, with_bias ? b.gpu : Tensor(), act, &pre_g);
          EXPECT_TRUE(close(yg, yc, tol_for(dt), n + " y"));
          if (act != Activation::none) {
            EXPECT_TRUE(close(pre_g, pre_c, tol_for(dt), n + " pre-activation"));
          }
          // Without the aux output (the GELU_BIAS epilogue): the same y.
          Tensor yg2 = linear(x.gpu, w.gpu, with_bias ? b.gpu : Tensor(), act);
          EXPECT_TRUE(close(yg2, yc, tol_for(dt), n + " y (no pre)"));
          // The cached heuristic choice gives the same bits again.
          EXPECT_TRUE(bits_equal(linear(x.gpu, w.gpu, with_bias ? b.gpu : Tensor(), act), yg2, n + " repeat"));
        }
      }
    }
  }
}

TEST_F(CudaLinear, StridedWeightAndLargeShape) {
  for (DType dt : {DType::f32, DType::bf16}) {
    // A transposed weight view (copied to rows by the kernel) and a GPT-2-like fc shape.
    Pair x = randn({3, 50, 256}, dt, 11, 1.0 / 16), wt = transposed(randn({256, 1027}, dt, 12)),
         b = randn({1027}, dt, 13, 0.5);
    Tensor pre_c, pre_g;
    Tensor yc = linear(x.cpu, wt.cpu, b.cpu, Activation::gelu_tanh, &pre_c);
    Tensor yg = linear(x.gpu, wt.gpu, b.gpu, Activation::gelu_tanh, &pre_g);
    // K = 256: the looser tolerance of long GEMMs for f32.
    const Tol t = dt == DType::f32 ? Tol{1e-4, 1e-4, 1e-4} : Tol{2e-2, 2e-2, 2e-2};
    EXPECT_TRUE(close(yg, yc, t, std::string(dtype_name(dt)) + " strided w y"));
    EXPECT_TRUE(close(pre_g, pre_c, t, std::string(dtype_name(dt)) + " strided w pre"));
  }
}

#ifndef LATHE_PARITY_SELFTEST_ON_CPU
// GPT-2-like, aligned shapes must run in cuBLASLt with their epilogue, not fall back.
TEST_F(CudaLinear, AlignedShapesTakeTheFusedPath) {
  for (DType dt : {DType::bf16, DType::f32}) {
    Pair x = randn({2, 64, 256}, dt, 41, 1.0 / 16), w = randn({1024, 256}, dt, 42), b = randn({1024}, dt, 43);
    const int64_t before = cuda::linear_declined_count();
    Tensor pre;
    linear(x.gpu, w.gpu, b.gpu, Activation::gelu_tanh, &pre);
    linear(x.gpu, w.gpu, b.gpu, Activation::gelu_tanh);
    linear(x.gpu, w.gpu, b.gpu, Activation::none);
    linear(x.gpu, w.gpu, Tensor(), Activation::none);
    EXPECT_EQ(cuda::linear_declined_count(), before) << dtype_name(dt) << ": cuBLASLt declined an aligned shape";
  }
}
#endif

TEST_F(CudaLinear, Backward) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    for (const LinCase& c : kLinCases) {
      Pair x = make_x(c, dt, 21), w = randn({c.N, kK}, dt, 22), b = randn({c.N}, dt, 23, 0.5);
      Shape ys = c.x;
      ys.back() = c.N;
      Pair dy = randn(ys, dt, 24);
      for (Activation act : {Activation::none, Activation::gelu_tanh}) {
        const std::string n = tag(dt, c.x, c.strided, true, act) + " backward";
        Tensor pre_c, pre_g;
        linear(x.cpu, w.cpu, b.cpu, act, &pre_c);
        linear(x.gpu, w.gpu, b.gpu, act, &pre_g);
        LinearGrads gc = linear_backward(dy.cpu, x.cpu, w.cpu, pre_c, act, true, true, true);
        LinearGrads gg = linear_backward(dy.gpu, x.gpu, w.gpu, pre_g, act, true, true, true);
        EXPECT_TRUE(close(gg.dx, gc.dx, tol_for(dt), n + " dx"));
        EXPECT_TRUE(close(gg.dw, gc.dw, tol_for(dt), n + " dw"));
        EXPECT_TRUE(close(gg.db, gc.db, tol_for(dt), n + " db"));
      }
    }
  }
}

TEST_F(CudaLinear, AutogradLinearGeluBothDevices) {
  namespace ag = lathe::autograd;
  for (DType dt : {DType::f32, DType::bf16}) {
    Pair x = randn({2, 37, kK}, dt, 31, 1.0 / 8), w = randn({129, kK}, dt, 32), b = randn({129}, dt, 33, 0.5);
    Pair gy = randn({2, 37, 129}, dt, 34);
    Tensor grads[2][3];
    Tensor ys[2];
    for (int d = 0; d < 2; ++d) {
      Tensor xi = (d ? x.gpu : x.cpu).clone().set_requires_grad();
      Tensor wi = (d ? w.gpu : w.cpu).clone().set_requires_grad();
      Tensor bi = (d ? b.gpu : b.cpu).clone().set_requires_grad();
      ys[d] = ag::linear(xi, wi, bi, Activation::gelu_tanh);
      ag::sum(ag::mul(ys[d], d ? gy.gpu : gy.cpu)).backward();
      grads[d][0] = xi.grad();
      grads[d][1] = wi.grad();
      grads[d][2] = bi.grad();
    }
    const std::string n = std::string("autograd linear gelu ") + dtype_name(dt);
    EXPECT_TRUE(close(ys[1], ys[0], tol_for(dt), n + " y"));
    EXPECT_TRUE(close(grads[1][0], grads[0][0], tol_for(dt), n + " dx"));
    EXPECT_TRUE(close(grads[1][1], grads[0][1], tol_for(dt), n + " dw"));
    EXPECT_TRUE(close(grads[1][2], grads[0][2], tol_for(dt), n + " db"));
  }
}

TEST_F(CudaLinear, AdamWStepMultiMatchesPerTensorSteps) {
  // 53 tensors: more than one launch's table (48), an empty one, a large one, bf16 and
  // strided gradients.
  std::vector<Shape> shapes;
  for (int i = 0; i < 53; ++i) shapes.push_back(Shape{1 + (i * 37) % 101, 1 + i % 7});
  shapes[5] = Shape{0};
  shapes[17] = Shape{100003};
  const size_t T = shapes.size();
  std::vector<Tensor> p_single, p_multi, m_single, m_multi, v_single, v_multi, p_cpu, m_cpu, v_cpu;
  for (size_t i = 0; i < T; ++i) {
    Pair p = randn(shapes[i], DType::f32, 100 + i), m = randn(shapes[i], DType::f32, 200 + i, 0.01);
    Pair v = randn(shapes[i], DType::f32, 300 + i, 1e-3);
    v = {unary(UnaryOp::abs, v.cpu), unary(UnaryOp::abs, v.cpu).to(kDev)};
    p_single.push_back(p.gpu.clone());
    p_multi.push_back(p.gpu.clone());
    p_cpu.push_back(p.cpu.clone());
    m_single.push_back(m.gpu.clone());
    m_multi.push_back(m.gpu.clone());
    m_cpu.push_back(m.cpu.clone());
    v_single.push_back(v.gpu.clone());
    v_multi.push_back(v.gpu.clone());
    v_cpu.push_back(v.cpu.clone());
  }
  for (int64_t step = 1; step <= 3; ++step) {
    std::vector<Tensor> g_gpu, g_cpu;
    for (size_t i = 0; i < T; ++i) {
      Pair g = randn(shapes[i], DType::f32, 1000 * step + i, 0.1);
      if (i % 5 == 1) g = {g.cpu.to(DType::bf16), g.cpu.to(DType::bf16).to(kDev)};
      if (i == 9 && shapes[i].size() == 2) {
        Pair gt = randn({shapes[i][1], shapes[i][0]}, DType::f32, 77 + step, 0.1);
        g = transposed(gt);
      }
      g_gpu.push_back(g.gpu);
      g_cpu.push_back(g.cpu);
    }
    for (size_t i = 0; i < T; ++i)
      adamw_step(p_single[i], g_gpu[i].to(DType::f32), m_single[i], v_single[i], 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
    adamw_step_multi(p_multi, g_gpu, m_multi, v_multi, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
    adamw_step_multi(p_cpu, g_cpu, m_cpu, v_cpu, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
  }
  for (size_t i = 0; i < T; ++i) {
    const std::string n = "adamw_step_multi tensor " + std::to_string(i) + " " + shape_str(shapes[i]);
    EXPECT_TRUE(bits_equal(p_multi[i], p_single[i], n + " param vs per-tensor"));
    EXPECT_TRUE(bits_equal(m_multi[i], m_single[i], n + " m vs per-tensor"));
    EXPECT_TRUE(bits_equal(v_multi[i], v_single[i], n + " v vs per-tensor"));
    EXPECT_TRUE(close(p_multi[i], p_cpu[i], tol_for(DType::f32), n + " param vs CPU"));
  }
}
