// CUDA parity of the factorizations GaLore's refresh uses (kernels::svd on cuSOLVER gesvd,
// kernels::qr_q on geqrf + orgqr) and of GaLore / Fira steps, against the CPU (LAPACK) on the
// same inputs. Singular vectors are compared through sign-invariant quantities (projectors,
// reconstructions). Without a GPU every test skips.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "optim/galore.h"
#include "optim/projector.h"

using namespace lathe;

namespace {

class CudaLinalg : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

const Device kGpu = Device::cuda(0);

double max_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to(Device::cpu()).to(DType::f64).to_vector<double>();
  const auto y = b.to(Device::cpu()).to(DType::f64).to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double d = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

// a a^T of the first k columns (sign-invariant).
Tensor col_projector(const Tensor& u, int64_t k) {
  const Tensor c = u.to(Device::cpu()).narrow(1, 0, k).contiguous();
  return kernels::matmul(c, c, false, true);
}

}  // namespace

TEST_F(CudaLinalg, SvdMatchesTheCpuOnTallAndWideMatrices) {
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{37, 23}, {23, 37}, {16, 16}}) {
    SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n));
    Generator g(5);
    const Tensor a = Tensor::randn({m, n}, g);
    const kernels::SvdOut c = kernels::svd(a), d = kernels::svd(a.to(kGpu));
    EXPECT_LT(max_diff(c.s, d.s), 1e-4);
    // Reconstruction u diag(s) vt = a on the GPU's factors.
    const Tensor us = kernels::binary(kernels::BinaryOp::mul, d.u, d.s.view({1, -1}));
    EXPECT_LT(max_diff(kernels::matmul(us, d.vt), a), 1e-4);
    EXPECT_LT(max_diff(col_projector(c.u, 5), col_projector(d.u, 5)), 1e-4);
    EXPECT_LT(max_diff(col_projector(c.vt.transpose(0, 1).contiguous(), 5),
                       col_projector(d.vt.to(Device::cpu()).transpose(0, 1).contiguous(), 5)),
              1e-4);
  }
}

TEST_F(CudaLinalg, QrMatchesTheCpu) {
  Generator g(6);
  const Tensor a = Tensor::randn({41, 9}, g);
  const Tensor qc = kernels::qr_q(a), qd = kernels::qr_q(a.to(kGpu));
  EXPECT_LT(max_diff(col_projector(qc, 9), col_projector(qd, 9)), 1e-5);
  const Tensor qtq = kernels::matmul(qd, qd, true, false);
  std::vector<float> eye(81, 0.0f);
  for (int i = 0; i < 9; ++i) eye[static_cast<size_t>(i * 10)] = 1.0f;
  EXPECT_LT(max_diff(qtq, Tensor::from_vector<float>(eye, {9, 9})), 1e-5);
}

// Four steps from one basis (refreshed at step 1 only: with a second refresh the moments would
// mix bases whose signs LAPACK and cuSOLVER may choose differently), GaLore (exact and
// randomized) and Fira, on each device from the same start and gradients: the weights agree
// to f32 round-off. Everything else in the step is sign-invariant.
TEST_F(CudaLinalg, GaLoreAndFiraStepsMatchTheCpu) {
  struct V {
    bool fira;
    optim::SvdMethod svd;
  };
  for (V v : {V{false, optim::SvdMethod::exact}, V{false, optim::SvdMethod::randomized}, V{true, optim::SvdMethod::exact}}) {
    auto run = [&](Device dev) {
      Generator g(7);
      Tensor w = Tensor::randn({24, 12}, g).to(dev).set_requires_grad();
      optim::GaLoreOptions o;
      o.lr = 0.01;
      o.rank = 4;
      o.update_proj_gap = 100;
      o.scale = 0.25;
      o.svd = v.svd;
      o.fira = v.fira;
      o.target = "w";
      optim::ParamGroup pg;
      pg.params = {{"w", w}};
      optim::GaLore opt({pg}, o);
      for (int t = 0; t < 4; ++t) {
        Generator gg(100 + t);
        w.set_grad(Tensor::randn({24, 12}, gg).to(dev));
        opt.step();
      }
      return w.to(Device::cpu());
    };
    EXPECT_LT(max_diff(run(Device::cpu()), run(kGpu)), 1e-4) << "fira " << v.fira << " svd " << int(v.svd);
  }
}
