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
