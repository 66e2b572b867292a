// gradcheck itself: it passes on correct backwards, fails (naming the input) on broken
// ones, keeps non-contiguous layouts, and refuses non-f64 inputs.
#include <gtest/gtest.h>

#include "test_util.h"

using namespace lathe;
using lathe::test::randn64;

namespace {

// y = a * b elementwise, with a backward that may be broken on purpose.
enum class Break { none, scale_a, drop_b };

Tensor custom_mul(const Tensor& a, const Tensor& b, Break brk) {
  Tensor y = kernels::binary(kernels::BinaryOp::mul, a, b);
  Tensor as = ag::saved(a), bs = ag::saved(b);
  return ag::record("custom_mul", y, {a, b}, [as, bs, brk](const std::vector<Tensor>& g, const std::vector<bool>&) {
    Tensor ga = kernels::binary(kernels::BinaryOp::mul, g[0], bs);
    Tensor gb = kernels::binary(kernels::BinaryOp::mul, g[0], as);
    if (brk == Break::scale_a) ga = kernels::affine(ga, 1.01, 0.0);  // 1% off
    if (brk == Break::drop_b) gb = Tensor();                         // forgets b's gradient
    return std::vector<Tensor>{ga, gb};
  });
}

}  // namespace

TEST(Gradcheck, PassesOnCorrectBackward) {
  for (bool full : {false, true}) {
    ag::GradcheckOptions o;
    o.full_jacobian = full;
    auto r = ag::gradcheck([](const std::vector<Tensor>& x) { return custom_mul(x[0], x[1], Break::none); },
                           {randn64({3, 4}, 1), randn64({3, 4}, 2)}, o);
    EXPECT_TRUE(r.ok) << r.message;
    EXPECT_LT(r.max_abs_err, 1e-7);
  }
}

TEST(Gradcheck, FailsOnWrongBackwardAndNamesTheInput) {
  for (bool full : {false, true}) {
    ag::GradcheckOptions o;
    o.full_jacobian = full;
    auto r = ag::gradcheck([](const std::vector<Tensor>& x) { return custom_mul(x[0], x[1], Break::scale_a); },
                           {randn64({3, 4}, 3), randn64({3, 4}, 4)}, o);
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.message.find("input 0"), std::string::npos) << r.message;
    EXPECT_GT(r.max_abs_err, 1e-4);
    if (full) {
      EXPECT_NE(r.message.find("element ["), std::string::npos) << r.message;
    }

    auto r2 = ag::gradcheck([](const std::vector<Tensor>& x) { return custom_mul(x[0], x[1], Break::drop_b); },
                            {randn64({3, 4}, 5), randn64({3, 4}, 6)}, o);
    EXPECT_FALSE(r2.ok);
    EXPECT_NE(r2.message.find("input 1"), std::string::npos) << r2.message;
  }
}

TEST(Gradcheck, AutomaticFullJacobianForTinyShapes) {
  auto r = ag::gradcheck([](const std::vector<Tensor>& x) { return ag::mul(x[0], x[0]); }, {randn64({3}, 7)});
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_NE(r.message.find("full Jacobian"), std::string::npos) << r.message;
  auto r2 = ag::gradcheck([](const std::vector<Tensor>& x) { return ag::mul(x[0], x[0]); }, {randn64({10, 10}, 8)});
  EXPECT_TRUE(r2.ok) << r2.message;
  EXPECT_NE(r2.message.find("random projection"), std::string::npos) << r2.message;
}

TEST(Gradcheck, KeepsNonContiguousLayout) {
  Tensor xt = randn64({4, 3}, 9).transpose(0, 1);  // [3, 4], not contiguous
  ASSERT_FALSE(xt.is_contiguous());
  bool all_strided = true;
  auto r = ag::gradcheck(
      [&](const std::vector<Tensor>& x) {
        all_strided = all_strided && !x[0].is_contiguous() && x[0].strides() == Shape({1, 3});
        return ag::exp(x[0]);
      },
      {xt});
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_TRUE(all_strided);
}

// The full Jacobian moves one element at a time through a view of the strided input: a
// product with distinct constant weights fails if the moved element is not the one named.
TEST(Gradcheck, FullJacobianMovesTheRightElementOfAStridedInput) {
  Tensor xt = randn64({4, 3}, 12).transpose(0, 1);  // [3, 4], strides (1, 3)
  Tensor c = randn64({3, 4}, 13);
  ag::GradcheckOptions o;
  o.full_jacobian = true;
  auto r = ag::gradcheck([&](const std::vector<Tensor>& x) { return custom_mul(x[0], c, Break::none); }, {xt}, o);
  EXPECT_TRUE(r.ok) << r.message;
  // the transposed weights (what a row-major walk of the storage would pair) must fail
  Tensor ct = c.transpose(0, 1).contiguous().view({3, 4});
  auto bad = ag::gradcheck(
      [&](const std::vector<Tensor>& x) {
        Tensor y = kernels::binary(kernels::BinaryOp::mul, x[0], c);
        Tensor cs = ag::saved(ct);
        return ag::record("mul_wrong_order", y, {x[0]}, [cs](const std::vector<Tensor>& g, const std::vector<bool>&) {
          return std::vector<Tensor>{kernels::binary(kernels::BinaryOp::mul, g[0], cs)};
        });
      },
      {xt}, o);
  EXPECT_FALSE(bad.ok);
}

TEST(Gradcheck, RejectsNonF64AndExpandedInputs) {
  Generator g(1);
  Tensor f32 = Tensor::randn({3}, g, DType::f32);
  EXPECT_THROW(ag::gradcheck([](const std::vector<Tensor>& x) { return ag::exp(x[0]); }, {f32}), Error);
  Tensor expanded = randn64({1, 3}, 10).expand({4, 3});
  EXPECT_THROW(ag::gradcheck([](const std::vector<Tensor>& x) { return ag::exp(x[0]); }, {expanded}), Error);
}

TEST(Gradcheck, IntegerInputsPassThrough) {
  Tensor w = randn64({5, 3}, 11);
  Tensor ids = Tensor::from_vector<int64_t>({4, 0, 4, 2}, {4});
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return ag::embedding(x[0], x[1]); }, {w, ids});
}

// The same checks on the inputs' device: a correct backward passes and a broken one is
// caught, with f64 inputs living on CUDA (perturbed there, never copied through the host).
// Skips without a GPU; the CPU checks above are unchanged.
TEST(Gradcheck, RunsOnCudaF64Inputs) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Device cuda = Device::cuda(0);
  Tensor a = randn64({3, 4}, 21).to(cuda);
  Tensor bt = randn64({4, 3}, 22).to(cuda).transpose(0, 1);  // strided on the device
  for (bool full : {false, true}) {
    ag::GradcheckOptions o;
    o.full_jacobian = full;
    bool on_cuda = true;
    auto r = ag::gradcheck(
        [&](const std::vector<Tensor>& x) {
          on_cuda = on_cuda && x[0].device() == cuda && x[1].device() == cuda && x[1].strides() == Shape({1, 3});
          return custom_mul(x[0], x[1], Break::none);
        },
        {a, bt}, o);
    EXPECT_TRUE(r.ok) << r.message;
    EXPECT_TRUE(on_cuda) << "f saw an input off cuda:0 or with a changed layout";
    auto bad = ag::gradcheck([](const std::vector<Tensor>& x) { return custom_mul(x[0], x[1], Break::scale_a); },
                             {a, bt}, o);
    EXPECT_FALSE(bad.ok);
    EXPECT_NE(bad.message.find("input 0"), std::string::npos) << bad.message;
  }
  // a composite of differentiable ops (matmul, tanh, softmax) on the device
  Tensor w = randn64({4, 5}, 23).to(cuda);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return ag::softmax(ag::tanh(ag::matmul(x[0], x[1])), -1); },
                   {a, w});
}
