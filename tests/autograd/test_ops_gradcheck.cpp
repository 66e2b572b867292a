// Every differentiable op of autograd/ops.h, gradchecked in f64 for every differentiable
// input, with broadcasting, non-contiguous inputs and multi-axis reductions, on every
// available device (the CPU always, cuda:0 when present): inputs are drawn on the CPU and
// moved to the device with their layout kept; gradcheck perturbs them there.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "tests/kernels/kernel_test_util.h"

using namespace lathe;
using lathe::test::away_from_zero64;
using lathe::test::expect_near_vec;
using lathe::test::randn64;
using lathe::test::uniform64;
using lathe::test::vec;
using Ins = std::vector<Tensor>;

namespace {
ag::GradcheckOptions full() {
  ag::GradcheckOptions o;
  o.full_jacobian = true;
  return o;
}
// A [r, c] tensor laid out transposed (strides [1, r]).
Tensor strided64(int64_t r, int64_t c, uint64_t seed) { return randn64({c, r}, seed).transpose(0, 1); }

// gradcheck with every input moved to `dev` first (layout kept; the CPU: the inputs as given).
ag::GradcheckResult gradcheck_on(Device dev, std::function<Tensor(const Ins&)> f, Ins inputs,
                                 ag::GradcheckOptions opts = {}) {
  for (Tensor& t : inputs) t = kernel_test::to_device_keep_layout(t, dev);
  return ag::gradcheck(std::move(f), std::move(inputs), std::move(opts));
}
}  // namespace

LATHE_DEVICE_TEST_SUITE(OpsGrad);

// EXPECT_GRADCHECK on the device under test (inside a TEST_P of a device suite).
#define EXPECT_GRADCHECK_DEV(...)                                              \
  do {                                                                         \
    ::lathe::autograd::GradcheckResult r_ = gradcheck_on(dev(), __VA_ARGS__); \
    EXPECT_TRUE(r_.ok) << r_.message;                                          \
  } while (0)

// ---- elementwise ------------------------------------------------------------------------

TEST_P(OpsGrad, BinaryBroadcast) {
  Tensor a = randn64({3, 1, 4}, 1), b = randn64({2, 4}, 2);
  Tensor bpos = uniform64({2, 4}, 0.5, 2.0, 3);
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::add(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::sub(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::mul(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::div(x[0], x[1]); }, {a, bpos});
  // tiny shapes: full Jacobian, and a 0-d operand
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::mul(x[0], x[1]); }, {randn64({2, 3}, 4), randn64({}, 5)}, full());
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::div(x[0], x[1]); }, {randn64({3}, 6), uniform64({2, 1}, 1, 2, 7)},
                   full());
}

TEST_P(OpsGrad, BinaryNonContiguous) {
  Tensor a = strided64(3, 4, 8), b = strided64(3, 4, 9);
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::mul(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::div(x[0], ag::add(ag::square(x[1]), 1.0)); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::swiglu(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::swiglu(x[0], x[1]); }, {randn64({2, 3}, 11), randn64({2, 3}, 12)},
                       full());
}

TEST_P(OpsGrad, Scalars) {
  Tensor x = strided64(3, 5, 10);
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::add(v[0], 2.5); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::mul(v[0], -1.5); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::affine(v[0], 0.5, 3.0); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::neg(v[0]); }, {x});
}

TEST_P(OpsGrad, Unary) {
  Tensor x = strided64(4, 5, 11);              // any sign
  Tensor pos = uniform64({4, 5}, 0.3, 2.0, 12);  // for log, sqrt, rsqrt, reciprocal, pow
  Tensor nz = away_from_zero64({4, 5}, 13);     // away from relu/abs kinks
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::exp(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::log(v[0]); }, {pos});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::sqrt(v[0]); }, {pos});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::rsqrt(v[0]); }, {pos});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::reciprocal(v[0]); }, {pos});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::tanh(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::sigmoid(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::relu(v[0]); }, {nz});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::gelu(v[0], true); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::gelu(v[0], false); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::silu(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::abs(v[0]); }, {nz});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::square(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::pow(v[0], 2.5); }, {pos});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::pow(v[0], 3.0); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::pow(v[0], -0.5); }, {pos});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::unary(kernels::UnaryOp::sin, v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::unary(kernels::UnaryOp::cos, v[0]); }, {x});
}

TEST_P(OpsGrad, MaximumMinimumWhereClamp) {
  Tensor a = randn64({3, 4}, 14), b = randn64({4}, 15);
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::maximum(x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::minimum(x[0], x[1]); }, {a, b});
  Tensor cond = on(kernels::binary(kernels::BinaryOp::gt, randn64({3, 1}, 16), Tensor::scalar(0.0, DType::f64)));
  EXPECT_GRADCHECK_DEV([cond](const Ins& x) { return ag::where(cond, x[0], x[1]); }, {a, b});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::clamp(x[0], -0.5, 0.4); }, {strided64(4, 5, 17)});
}

TEST(OpsGradCpu, MaximumTieSplitsGradient) {
  Tensor a = Tensor::from_vector<double>({1.0, 2.0, 3.0}, {3}).set_requires_grad();
  Tensor b = Tensor::from_vector<double>({1.0, 5.0, 0.0}, {3}).set_requires_grad();
  ag::sum(ag::maximum(a, b)).backward();
  expect_near_vec(vec(a.grad()), {0.5, 0.0, 1.0}, 0);
  expect_near_vec(vec(b.grad()), {0.5, 1.0, 0.0}, 0);
}

// ---- reductions ---------------------------------------------------------------------------

TEST_P(OpsGrad, Reductions) {
  Tensor x = randn64({3, 4, 5}, 18);
  Tensor xt = randn64({5, 4, 3}, 19).permute({2, 1, 0});  // non-contiguous [3, 4, 5]
  for (const Tensor& in : {x, xt}) {
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::sum(v[0]); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::sum(v[0], {0, 2}); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::sum(v[0], {-1}, true); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::mean(v[0]); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::mean(v[0], {0, 1}, true); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::max(v[0], 1); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::max(v[0], -1, true); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::var(v[0], {1, 2}); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::var(v[0], {0}, 0, true); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::var(v[0]); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::norm(v[0]); }, {in});
  }
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::sum_to_shape(v[0], {4, 1}); }, {randn64({2, 4, 3}, 20)});
}

// ---- linear algebra -------------------------------------------------------------------------

TEST_P(OpsGrad, MatmulTransposeFlags) {
  // a is [M, K] = [3, 4] logically; b is [K, N] = [4, 2]
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Tensor a = ta ? randn64({4, 3}, 21) : randn64({3, 4}, 21);
      Tensor b = tb ? randn64({2, 4}, 22) : randn64({4, 2}, 22);
      EXPECT_GRADCHECK_DEV([ta, tb](const Ins& x) { return ag::matmul(x[0], x[1], ta, tb); }, {a, b});
    }
  }
  // strided operands
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1]); }, {strided64(3, 4, 23), strided64(4, 5, 24)});
}

TEST_P(OpsGrad, MatmulBatchBroadcast) {
  // batched a with a shared 2-D b (the linear-layer case), with and without trans flags
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1]); },
                   {randn64({2, 3, 4, 5}, 25), randn64({5, 6}, 26)});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1], false, true); },
                   {randn64({2, 3, 5}, 27), randn64({6, 5}, 28)});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1], true, true); },
                   {randn64({2, 5, 3}, 29), randn64({6, 5}, 30)});
  // batch dims broadcast against each other
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1]); },
                   {randn64({2, 1, 4, 5}, 31), randn64({3, 5, 2}, 32)});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1], true, false); },
                   {randn64({1, 5, 4}, 33), randn64({3, 5, 2}, 34)});
  // 2-D a with batched b
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::matmul(x[0], x[1]); }, {randn64({4, 5}, 35), randn64({3, 5, 2}, 36)});
}

TEST_P(OpsGrad, Linear) {
  Tensor x = randn64({2, 3, 5}, 37), w = randn64({4, 5}, 38), b = randn64({4}, 39);
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::linear(v[0], v[1], v[2]); }, {x, w, b});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::linear(v[0], v[1]); }, {x, w});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::linear(v[0], v[1], v[2]); }, {randn64({5}, 40), w, b});
  // weight given transposed in memory
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::linear(v[0], v[1], v[2]); }, {x, strided64(4, 5, 41), b});
}

// ---- nn ops -----------------------------------------------------------------------------

TEST_P(OpsGrad, SoftmaxFamily) {
  Tensor x = randn64({3, 5}, 42);
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::softmax(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::softmax(v[0], 0); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::log_softmax(v[0]); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::log_softmax(v[0], 0); }, {strided64(3, 5, 43)});
}

TEST_P(OpsGrad, Norms) {
  Tensor x = randn64({2, 3, 6}, 44), w = randn64({6}, 45), b = randn64({6}, 46);
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::layer_norm(v[0], v[1], v[2], 1e-5); }, {x, w, b});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::layer_norm(v[0], v[1], Tensor(), 1e-5); }, {x, w});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::layer_norm(v[0], Tensor(), Tensor(), 1e-5); }, {x});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::rms_norm(v[0], v[1], 1e-6); }, {x, w});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::rms_norm(v[0], Tensor(), 1e-6); }, {x});
  // a transposed input (rows not contiguous)
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::rms_norm(v[0], v[1], 1e-6); }, {strided64(4, 6, 47), w});
}

TEST_P(OpsGrad, EmbeddingWeightGrad) {
  Tensor w = randn64({7, 4}, 48);
  Tensor ids = Tensor::from_vector<int64_t>({1, 6, 1, 0, 3, 1}, {2, 3});  // repeats accumulate
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::embedding(v[0], v[1]); }, {w, ids});
  Tensor ids32 = Tensor::from_vector<int32_t>({2, 2, 5}, {3});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::embedding(v[0], v[1]); }, {w, ids32});
}

TEST_P(OpsGrad, CrossEntropy) {
  Tensor logits = randn64({5, 7}, 49);
  Tensor t = on(Tensor::from_vector<int64_t>({3, 0, 6, 3, 1}, {5}));
  Tensor t_ign = on(Tensor::from_vector<int64_t>({3, -100, 6, -100, 1}, {5}));
  EXPECT_GRADCHECK_DEV([t](const Ins& v) { return ag::cross_entropy(v[0], t); }, {logits});
  EXPECT_GRADCHECK_DEV([t_ign](const Ins& v) { return ag::cross_entropy(v[0], t_ign); }, {logits});
  EXPECT_GRADCHECK_DEV([t_ign](const Ins& v) { return ag::cross_entropy(v[0], t_ign, -100, 0.1); }, {logits});
  Tensor t_custom = on(Tensor::from_vector<int64_t>({3, 2, 6, 2, 1}, {5}));
  EXPECT_GRADCHECK_DEV([t_custom](const Ins& v) { return ag::cross_entropy(v[0], t_custom, 2, 0.2); },
                   {strided64(5, 7, 50)});
  // The loss composes: 2 * CE + sum(logits) checks that the upstream gradient is applied.
  EXPECT_GRADCHECK_DEV([t](const Ins& v) { return ag::add(ag::mul(ag::cross_entropy(v[0], t), 2.0), ag::mean(v[0])); },
                   {logits});
}

TEST_P(OpsGrad, Rope) {
  Tensor cos, sin;
  kernels::rope_tables(3, 4, 10000.0, 0, DType::f64, cos, sin);
  cos = on(cos);
  sin = on(sin);
  Tensor x = randn64({2, 2, 3, 4}, 51);
  EXPECT_GRADCHECK_DEV([cos, sin](const Ins& v) { return ag::rope(v[0], cos, sin); }, {x});
  // after a transpose, as attention code produces it: [B, T, H, D] -> [B, H, T, D]
  Tensor xt = randn64({2, 3, 2, 4}, 52).transpose(1, 2);
  EXPECT_GRADCHECK_DEV([cos, sin](const Ins& v) { return ag::rope(v[0], cos, sin); }, {xt});
}

TEST_P(OpsGrad, Attention) {
  Tensor q = randn64({1, 2, 3, 4}, 53), k = randn64({1, 2, 3, 4}, 54), v = randn64({1, 2, 3, 4}, 55);
  for (bool causal : {false, true})
    EXPECT_GRADCHECK_DEV([causal](const Ins& x) { return ag::attention(x[0], x[1], x[2], causal, 0.5); }, {q, k, v});
  // grouped-query: 4 query heads read 2 kv heads
  Tensor q4 = randn64({2, 4, 3, 4}, 56), k2 = randn64({2, 2, 3, 4}, 57), v2 = randn64({2, 2, 3, 4}, 58);
  for (bool causal : {false, true})
    EXPECT_GRADCHECK_DEV([causal](const Ins& x) { return ag::attention(x[0], x[1], x[2], causal, 0.5); }, {q4, k2, v2});
  // more keys than queries (a cached prefix), causal with the S - T offset
  Tensor ks = randn64({1, 2, 5, 4}, 59), vs = randn64({1, 2, 5, 4}, 60);
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::attention(x[0], x[1], x[2], true, 0.5); }, {q, ks, vs});
  // q laid out [B, T, H, D] in memory
  Tensor qt = randn64({1, 3, 2, 4}, 61).transpose(1, 2);
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::attention(x[0], x[1], x[2], true, 0.5); }, {qt, k, v});
  // sliding window (2) smaller than T (5), GQA, self-attention and over a cached prefix
  Tensor qw = randn64({1, 4, 5, 4}, 62), kw = randn64({1, 2, 5, 4}, 63), vw = randn64({1, 2, 5, 4}, 64);
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::attention(x[0], x[1], x[2], true, 0.5, 2); }, {qw, kw, vw});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::attention(x[0], x[1], x[2], true, 0.5, 3); }, {q4, k2, v2});
  EXPECT_GRADCHECK_DEV([](const Ins& x) { return ag::attention(x[0], x[1], x[2], true, 0.5, 2); }, {q, ks, vs});
}

TEST_P(OpsGrad, Dropout) {
  Tensor x = randn64({4, 6}, 62);
  EXPECT_GRADCHECK_DEV(
      [](const Ins& v) {
        Generator g(99);  // same mask on every evaluation
        return ag::dropout(v[0], 0.3, g, true);
      },
      {x});
  // exact: gradient = mask / (1 - p), and the forward is x * mask / (1 - p)
  Tensor xl = on(x).clone().set_requires_grad();
  Generator g(99);
  Tensor y = ag::dropout(xl, 0.3, g, true);
  ag::sum(y).backward();
  std::vector<double> yv = vec(y), xv = vec(x), gv = vec(xl.grad());
  int kept = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    bool keep = gv[i] != 0.0;
    kept += keep;
    EXPECT_NEAR(gv[i], keep ? 1.0 / 0.7 : 0.0, 1e-12);
    EXPECT_NEAR(yv[i], keep ? xv[i] / 0.7 : 0.0, 1e-12);
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, 24);
  // eval mode is the identity
  Tensor ye = ag::dropout(xl, 0.3, g, false);
  expect_near_vec(vec(ye), xv, 0);
}

// ---- views and copies ------------------------------------------------------------------------

TEST_P(OpsGrad, Views) {
  Tensor x = randn64({2, 3, 4}, 63);
  Tensor xt = randn64({4, 3, 2}, 64).permute({2, 1, 0});
  for (const Tensor& in : {x, xt}) {
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::mul(ag::reshape(v[0], {6, 4}), 1.0); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::transpose(v[0], 0, 2); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::permute(v[0], {1, 2, 0}); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::narrow(v[0], 2, 1, 2); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::slice(v[0], 2, 0, 4, 2); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::select(v[0], 1, -1); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::flatten(v[0], 1); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::contiguous(v[0]); }, {in});
    EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::unsqueeze(v[0], 1); }, {in});
  }
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::view(v[0], {3, 4}); }, {randn64({12}, 65)});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::expand(v[0], {2, 3, 4}); }, {randn64({3, 1}, 66)});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::squeeze(v[0], 1); }, {randn64({3, 1, 2}, 67)});
  // a chain of views ending in a reduction with weights (so every element's gradient differs)
  Tensor wts = on(randn64({4, 3}, 68));
  EXPECT_GRADCHECK_DEV(
      [wts](const Ins& v) { return ag::sum(ag::mul(ag::transpose(ag::select(v[0], 0, 1), 0, 1), wts)); }, {x});
}

TEST(OpsGradCpu, Cast) {
  Generator g(1);
  Tensor x32 = Tensor::randn({3}, g, DType::f32).set_requires_grad();
  Tensor y = ag::cast(x32, DType::f64);
  EXPECT_EQ(y.dtype(), DType::f64);
  Tensor seed = Tensor::from_vector<double>({1.0, -2.0, 0.5}, {3});
  y.backward(seed);
  EXPECT_EQ(x32.grad().dtype(), DType::f32);
  expect_near_vec(vec(x32.grad()), {1.0, -2.0, 0.5}, 0);
  EXPECT_GRADCHECK([](const Ins& v) { return ag::cast(ag::mul(v[0], 3.0), DType::f64); }, {randn64({4}, 69)});
  EXPECT_FALSE(ag::cast(x32, DType::i64).requires_grad());
}

TEST_P(OpsGrad, ConcatStackSplit) {
  Tensor a = randn64({2, 3}, 70), b = randn64({2, 1}, 71), c = strided64(2, 2, 72);
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::concat({v[0], v[1], v[2]}, 1); }, {a, b, c});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::concat({v[0], v[1]}, 0); }, {a, randn64({1, 3}, 73)});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::stack({v[0], v[1]}, 1); }, {a, randn64({2, 3}, 74)});
  EXPECT_GRADCHECK_DEV([](const Ins& v) { return ag::stack({v[0], v[1]}, -1); }, {a, strided64(2, 3, 75)});
  Tensor wts = randn64({2, 3}, 76);
  EXPECT_GRADCHECK_DEV(
      [wts](const Ins& v) {
        std::vector<Tensor> p = ag::split(v[0], {1, 3, 2}, 1);
        return ag::add(ag::mul(p[1], ag::exp(p[0])), ag::sum(p[2], {1}, true));
      },
      {randn64({2, 6}, 77)});
  EXPECT_GRADCHECK_DEV([wts](const Ins& v) { return ag::split(v[0], {2, 4}, 1)[1]; }, {randn64({2, 6}, 78)});
}

TEST_P(OpsGrad, GatherIndexSelect) {
  Tensor x = randn64({3, 4}, 79);
  Tensor idx0 = on(Tensor::from_vector<int64_t>({2, 0, 1, 2, 0, 0, 2, 1}, {2, 4}));  // axis 0, repeats
  Tensor idx1 = on(Tensor::from_vector<int64_t>({3, 3, 0, 1, 2, 1}, {3, 2}));        // axis 1
  EXPECT_GRADCHECK_DEV([idx0](const Ins& v) { return ag::gather(v[0], 0, idx0); }, {x});
  EXPECT_GRADCHECK_DEV([idx1](const Ins& v) { return ag::gather(v[0], 1, idx1); }, {x});
  EXPECT_GRADCHECK_DEV([idx1](const Ins& v) { return ag::gather(v[0], -1, idx1); }, {strided64(3, 4, 80)});
  Tensor sel = on(Tensor::from_vector<int64_t>({2, 0, 2}, {3}));
  EXPECT_GRADCHECK_DEV([sel](const Ins& v) { return ag::index_select(v[0], 0, sel); }, {x});
  EXPECT_GRADCHECK_DEV([sel](const Ins& v) { return ag::index_select(v[0], 1, sel); }, {strided64(3, 4, 81)});
}

TEST_P(OpsGrad, SmallTransformerBlockComposes) {
  // rms_norm -> q/k/v projections -> rope -> causal GQA attention -> output projection ->
  // residual -> cross-entropy over a vocabulary projection: the whole chain gradchecks.
  const int64_t B = 1, T = 3, C = 8, H = 2, Hkv = 1, D = 4, V = 5;
  Tensor cos, sin;
  kernels::rope_tables(T, D, 10000.0, 0, DType::f64, cos, sin);
  cos = on(cos);
  sin = on(sin);
  Tensor targets = on(Tensor::from_vector<int64_t>({1, 4, 0}, {3}));
  auto f = [=](const Ins& p) {
    Tensor x = p[0];
    Tensor h = ag::rms_norm(x, p[1], 1e-6);
    auto heads = [&](const Tensor& w, int64_t nh) {
      return ag::transpose(ag::reshape(ag::linear(h, w), {B, T, nh, D}), 1, 2);
    };
    Tensor q = ag::rope(heads(p[2], H), cos, sin);
    Tensor k = ag::rope(heads(p[3], Hkv), cos, sin);
    Tensor v = heads(p[4], Hkv);
    Tensor a = ag::attention(q, k, v, true, 1.0 / std::sqrt(double(D)));
    Tensor o = ag::linear(ag::reshape(ag::transpose(a, 1, 2), {B, T, H * D}), p[5]);
    Tensor r = ag::add(x, o);
    Tensor logits = ag::linear(ag::reshape(r, {B * T, C}), p[6]);
    return ag::cross_entropy(logits, targets);
  };
  EXPECT_GRADCHECK_DEV(f, {randn64({B, T, C}, 82), randn64({C}, 83), randn64({H * D, C}, 84), randn64({Hkv * D, C}, 85),
                       randn64({Hkv * D, C}, 86), randn64({C, H * D}, 87), randn64({V, C}, 88)});
}
