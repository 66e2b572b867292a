// Very deep graphs (a model with thousands of layers) must be released without one
// nested destructor call per node: a chain of 100000 nodes used to overflow the stack.
#include <gtest/gtest.h>

#include "test_util.h"

using namespace lathe;
using lathe::test::vec;

namespace {
constexpr int kDepth = 100000;

// y = x + c + c + ... (kDepth adds): a chain of kDepth nodes.
Tensor chain(const Tensor& x, const Tensor& c) {
  Tensor y = x;
  for (int i = 0; i < kDepth; ++i) y = ag::add(y, c);
  return y;
}
}  // namespace

TEST(DeepGraph, DestroyingAnUnusedChainDoesNotRecurse) {
  Tensor x = Tensor::from_vector(std::vector<double>{1.0}, {1}).set_requires_grad();
  Tensor c = Tensor::from_vector(std::vector<double>{0.5}, {1});
  {
    Tensor y = chain(x, c);
    EXPECT_DOUBLE_EQ(vec(y)[0], 1.0 + 0.5 * kDepth);
  }  // the whole graph is freed here
  EXPECT_FALSE(x.grad().defined());
}

TEST(DeepGraph, BackwardThroughChainThenDestroy) {
  Tensor x = Tensor::from_vector(std::vector<double>{2.0}, {1}).set_requires_grad();
  Tensor c = Tensor::from_vector(std::vector<double>{1.0}, {1}).set_requires_grad();
  {
    Tensor y = ag::sum(chain(x, c));
    ag::backward(y, Tensor(), /*retain_graph=*/true);
  }
  EXPECT_DOUBLE_EQ(vec(x.grad())[0], 1.0);
  EXPECT_DOUBLE_EQ(vec(c.grad())[0], static_cast<double>(kDepth));  // c used kDepth times
}

TEST(DeepGraph, SharedPartOfAGraphSurvivesReleaseOfTheRest) {
  // Two chains on one common prefix z = exp(x): dropping one must leave the other whole.
  Tensor x = Tensor::from_vector(std::vector<double>{0.0}, {1}).set_requires_grad();
  Tensor c = Tensor::from_vector(std::vector<double>{1.0}, {1});
  Tensor z = ag::exp(x);
  Tensor keep = ag::mul(z, 3.0);
  { Tensor drop = chain(z, c); }
  ag::sum(keep).backward();
  EXPECT_DOUBLE_EQ(vec(x.grad())[0], 3.0);  // d(3 e^x)/dx at 0
}
