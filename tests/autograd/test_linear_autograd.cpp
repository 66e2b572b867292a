// autograd::linear with a bias and an activation: one node over kernels::linear, gradchecked
// in f64, and bit-identical (forward and every gradient) on the CPU to the graph it replaced
// in the models: matmul, add, gelu recorded as three nodes.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "autograd/meta.h"
#include "test_util.h"

using namespace lathe;
using lathe::test::randn64;
using Ins = std::vector<Tensor>;
using kernels::Activation;

namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

Tensor unfused(const Tensor& x, const Tensor& w, const Tensor& b, Activation act) {
  Tensor y = x.dim() == 1 ? ag::squeeze(ag::matmul(ag::unsqueeze(x, 0), w, false, true), 0)
                          : ag::matmul(x, w, false, true);
  if (b.defined()) y = ag::add(y, b);
  if (act == Activation::gelu_tanh) y = ag::gelu(y, true);
  return y;
}

}  // namespace

TEST(LinearAutograd, GradcheckWithAndWithoutBiasAndGelu) {
  const Tensor w = randn64({4, 5}, 2), b = randn64({4}, 3);
  for (const Shape& xs : {Shape{3, 5}, Shape{2, 3, 5}, Shape{5}}) {
    const Tensor x = randn64(xs, 1);
    for (Activation act : {Activation::none, Activation::gelu_tanh}) {
      EXPECT_GRADCHECK([act](const Ins& v) { return ag::linear(v[0], v[1], v[2], act); }, {x, w, b});
      EXPECT_GRADCHECK([act](const Ins& v) { return ag::linear(v[0], v[1], Tensor(), act); }, {x, w});
    }
  }
  // A transposed (strided) weight.
  const Tensor wt = randn64({5, 4}, 4).transpose(0, 1);
  EXPECT_GRADCHECK([](const Ins& v) { return ag::linear(v[0], v[1], v[2], Activation::gelu_tanh); },
                   {randn64({2, 3, 5}, 5), wt, b});
}

TEST(LinearAutograd, RecordsOneNode) {
  Tensor x = randn64({3, 5}, 1), w = randn64({4, 5}, 2).set_requires_grad(), b = randn64({4}, 3).set_requires_grad();
  Tensor y = ag::linear(x, w, b, Activation::gelu_tanh);
  auto node = autograd::grad_fn_of(y);
  ASSERT_TRUE(node);
  EXPECT_EQ(node->name(), "linear");
  // The input x needs no gradient: only w's and b's come back.
  ag::sum(y).backward();
  EXPECT_TRUE(w.grad().defined());
  EXPECT_TRUE(b.grad().defined());
}

TEST(LinearAutograd, BitIdenticalToMatmulAddGeluGraph) {
  for (DType dt : {DType::f32, DType::bf16}) {
    for (const Shape& xs : {Shape{2, 7, 13}, Shape{9, 13}, Shape{13}}) {
      for (bool with_bias : {false, true}) {
        for (Activation act : {Activation::none, Activation::gelu_tanh}) {
          const std::string what = std::string(dtype_name(dt)) + " " + shape_str(xs) + (with_bias ? " bias " : " ") +
                                   kernels::activation_name(act);
          Tensor x0 = randn64(xs, 11).to(dt), w0 = randn64({6, 13}, 12).to(dt), b0 = randn64({6}, 13).to(dt);
          Shape ys = xs;
          ys.back() = 6;
          Tensor gy = randn64(ys, 14).to(dt);
          Tensor x1 = x0.clone().set_requires_grad(), w1 = w0.clone().set_requires_grad(),
                 b1 = with_bias ? b0.clone().set_requires_grad() : Tensor();
          Tensor x2 = x0.clone().set_requires_grad(), w2 = w0.clone().set_requires_grad(),
                 b2 = with_bias ? b0.clone().set_requires_grad() : Tensor();
          Tensor y1 = ag::linear(x1, w1, b1, act), y2 = unfused(x2, w2, b2, act);
          EXPECT_TRUE(same_bits(y1, y2)) << what << " forward";
          ag::sum(ag::mul(y1, gy)).backward();
          ag::sum(ag::mul(y2, gy)).backward();
          EXPECT_TRUE(same_bits(x1.grad(), x2.grad())) << what << " dx";
          EXPECT_TRUE(same_bits(w1.grad(), w2.grad())) << what << " dw";
          if (with_bias) {
            EXPECT_TRUE(same_bits(b1.grad(), b2.grad())) << what << " db";
          }
        }
      }
    }
  }
}
