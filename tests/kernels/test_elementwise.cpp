// Elementwise ops against the reference loops of reference.h, on every available device:
// unary maps and their derivatives (checked with central differences in f64), scalar maps,
// broadcast binary ops, where, add_/scale_, on strided and broadcast views, with bf16
// rounding checks. Error messages are checked on the CPU (they come from the front end).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/tensor.h"
#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe;
using namespace lathe::kernels;

using namespace lathe::kernel_test;

namespace {

// A non-contiguous [4, 5, 3] view (transposed + stepped slice) of random values.
Tensor strided_input(DType dt, uint64_t seed, double lo_abs = 0.0) {
  Generator g(seed);
  Tensor base = Tensor::randn({5, 4, 6}, g, DType::f64);
  if (lo_abs > 0) {  // positive domain for log/sqrt/...
    auto v = base.to_vector<double>();
    for (double& x : v) x = std::abs(x) + lo_abs;
    base = Tensor::from_vector(v, {5, 4, 6});
  }
  Tensor t = base.to(dt).transpose(0, 1).slice(2, 0, 6, 2);
  EXPECT_FALSE(t.is_contiguous());
  return t;
}

double tol_for(DType dt) { return dt == DType::f64 ? 1e-12 : 2e-6; }

void expect_close(const Tensor& got, const Shape& shape, const std::function<double(const std::vector<int64_t>&)>& ref,
                  double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), shape) << what;
  ASSERT_TRUE(got.is_contiguous()) << what;
  int bad = 0;
  for_each_index(shape, [&](const std::vector<int64_t>& idx) {
    double r = ref(idx), v = got.at(idx);
    if (std::isnan(r) && std::isnan(v)) return;
    if (!(std::abs(v - r) <= tol * std::max(1.0, std::abs(r))) && bad++ < 3)
      ADD_FAILURE() << what << ": at " << shape_str(idx) << " got " << v << " want " << r;
  });
}

const UnaryOp kAllUnary[] = {UnaryOp::neg,       UnaryOp::exp,      UnaryOp::log,        UnaryOp::sqrt,
                             UnaryOp::rsqrt,     UnaryOp::tanh,     UnaryOp::sigmoid,    UnaryOp::relu,
                             UnaryOp::gelu_tanh, UnaryOp::gelu_erf, UnaryOp::silu,       UnaryOp::abs,
                             UnaryOp::sign,      UnaryOp::square,   UnaryOp::reciprocal, UnaryOp::sin,
                             UnaryOp::cos};

bool positive_domain(UnaryOp op) {
  return op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::reciprocal;
}

}  // namespace

LATHE_DEVICE_TEST_SUITE(Unary);
LATHE_DEVICE_TEST_SUITE(UnaryBackward);
LATHE_DEVICE_TEST_SUITE(ScalarMaps);
LATHE_DEVICE_TEST_SUITE(Binary);
LATHE_DEVICE_TEST_SUITE(Where);
LATHE_DEVICE_TEST_SUITE(InPlace);
LATHE_DEVICE_TEST_SUITE(Swiglu);

namespace {
// bf16 bit patterns equal (the CPU: the kernel rounds the same f32 value) or, on another
// device whose f32 math may differ in the last bit, at most one bf16 step apart.
void expect_bf16_bits(uint16_t got, uint16_t want, bool exact, const std::string& what) {
  if (exact) {
    EXPECT_EQ(got, want) << what;
  } else {
    EXPECT_LE(std::abs(static_cast<int>(got) - static_cast<int>(want)), 1) << what;
  }
}
}  // namespace

TEST_P(Unary, MatchesReferenceOnStridedViews) {
  for (DType dt : {DType::f64, DType::f32}) {
    for (UnaryOp op : kAllUnary) {
      Tensor x = strided_input(dt, 11, positive_domain(op) ? 0.2 : 0.0);
      Tensor y = back(unary(op, on(x)));
      EXPECT_EQ(y.dtype(), dt);
      expect_close(y, x.shape(), [&](const auto& i) { return ref_unary(op, x.at(i)); }, tol(dt, tol_for(dt)),
                   std::string("unary ") + unary_name(op) + " " + dtype_name(dt));
    }
  }
}

TEST_P(Unary, Bf16RoundsTheF32Result) {
  Tensor x = strided_input(DType::bf16, 3);
  for (UnaryOp op : {UnaryOp::exp, UnaryOp::gelu_tanh, UnaryOp::sigmoid}) {
    Tensor y = back(unary(op, on(x)));
    ASSERT_EQ(y.dtype(), DType::bf16);
    const bf16_t* yp = y.data<bf16_t>();
    int64_t k = 0;
    for_each_index(x.shape(), [&](const auto& i) {
      float xv = static_cast<float>(x.at(i));
      float f = op == UnaryOp::exp ? std::exp(xv)
                : op == UnaryOp::sigmoid
                    ? 1.0f / (1.0f + std::exp(-xv))
                    // gelu_tanh in the kernel's sigmoid form: x / (1 + exp(-2u))
                    : xv / (1.0f + std::exp(-2.0f * 0.7978845608028654f * (xv + 0.044715f * xv * xv * xv)));
      expect_bf16_bits(yp[k].bits, float_to_bf16(f).bits, on_cpu(),
                       std::string(unary_name(op)) + " at " + std::to_string(k));
      ++k;
    });
  }
}

TEST_P(UnaryBackward, MatchesCentralDifferencesF64) {
  const double h = 1e-6;
  for (UnaryOp op : kAllUnary) {
    if (op == UnaryOp::sign) continue;  // derivative 0 almost everywhere, checked below
    Tensor x = strided_input(DType::f64, 21, positive_domain(op) ? 0.3 : 0.0);
    Generator g(5);
    Tensor gy = Tensor::randn(x.shape(), g, DType::f64);
    Tensor gx = back(unary_backward(op, on(x), Tensor(), on(gy)));
    expect_close(gx, x.shape(), [&](const auto& i) {
      double xv = x.at(i);
      double d = (ref_unary(op, xv + h) - ref_unary(op, xv - h)) / (2 * h);
      return gy.at(i) * d;
    }, 2e-6, std::string("unary_backward ") + unary_name(op));
    // the output-based rule, where there is one, agrees with the input-based one
    Tensor y = unary(op, on(x));
    bool y_rule = op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::tanh ||
                  op == UnaryOp::sigmoid || op == UnaryOp::reciprocal || op == UnaryOp::relu;
    if (y_rule) {
      Tensor gy_only = back(unary_backward(op, Tensor(), y, on(gy)));
      expect_close(gy_only, x.shape(), [&](const auto& i) { return gx.at(i); }, tol(DType::f64, 1e-12),
                   std::string("unary_backward from y ") + unary_name(op));
    } else if (op != UnaryOp::neg) {
      EXPECT_TRUE(has(error_of([&] { unary_backward(op, Tensor(), y, on(gy)); }), "needs the input x"))
          << unary_name(op);
    }
  }
  Tensor x = strided_input(DType::f64, 2);
  Tensor gs = back(unary_backward(UnaryOp::sign, Tensor(), Tensor(), on(x)));
  for (double v : gs.to_vector<double>()) EXPECT_EQ(v, 0.0);
}

TEST_P(UnaryBackward, F32GeluMatchesClosedForm) {
  Tensor x = strided_input(DType::f32, 8);
  Tensor gy = Tensor::ones(x.shape(), DType::f32);
  Tensor gx = back(unary_backward(UnaryOp::gelu_erf, on(x), Tensor(), on(gy)));
  expect_close(gx, x.shape(), [&](const auto& i) {
    double v = x.at(i);
    return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
  }, tol(DType::f32, 2e-6), "gelu_erf backward f32");
}

TEST_P(ScalarMaps, PowAffineClamp) {
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor xp = strided_input(dt, 4, 0.1);
    for (double p : {2.0, 0.5, -1.5, 3.0, 1.0}) {
      expect_close(back(pow_scalar(on(xp), p)), xp.shape(), [&](const auto& i) { return std::pow(xp.at(i), p); },
                   tol(dt, tol_for(dt) * 4), "pow_scalar");
    }
    Tensor x = strided_input(dt, 5);
    expect_close(back(affine(on(x), -2.5, 0.75)), x.shape(), [&](const auto& i) { return x.at(i) * -2.5 + 0.75; },
                 tol(dt, tol_for(dt)), "affine");
    Tensor c = back(clamp(on(x), -0.5, 0.25));
    expect_close(c, x.shape(), [&](const auto& i) { return std::min(0.25, std::max(-0.5, x.at(i))); }, 0.0, "clamp");
  }
}

TEST(ScalarMapsCpu, Errors) {
  EXPECT_TRUE(has(error_of([] { clamp(Tensor::zeros({2}), 1.0, 0.0); }), "clamp"));
  EXPECT_TRUE(has(error_of([] { unary(UnaryOp::exp, Tensor::zeros({2, 3}, DType::i64)); }), "unary(exp)"));
}

namespace {
const BinaryOp kAllBinary[] = {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div, BinaryOp::maximum,
                               BinaryOp::minimum, BinaryOp::pow, BinaryOp::eq, BinaryOp::ne, BinaryOp::lt,
                               BinaryOp::le, BinaryOp::gt, BinaryOp::ge};
bool is_cmp(BinaryOp op) { return op >= BinaryOp::eq; }
}  // namespace

TEST_P(Binary, BroadcastStridedMatchesReference) {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(7);
    // a: [4, 1, 3] non-contiguous (transposed); b: [5, 1] contiguous; out [4, 5, 3]
    Tensor a = Tensor::rand({3, 1, 4}, g, dt).transpose(0, 2);
    Tensor b = Tensor::rand({5, 1}, g, dt);
    // make some values equal so eq/le/ge see ties
    a.select(0, 1).copy_(b.select(0, 2).unsqueeze(0).expand({1, 3}));
    for (BinaryOp op : kAllBinary) {
      Tensor y = back(binary(op, on(a), on(b)));
      EXPECT_EQ(y.dtype(), is_cmp(op) ? DType::u8 : dt);
      Shape out{4, 5, 3};
      expect_close(y, out, [&](const auto& i) {
        return ref_binary(op, a.at(bcast_idx(i, a.shape())), b.at(bcast_idx(i, b.shape())));
      }, tol(dt, tol_for(dt) * 2), std::string("binary ") + binary_name(op) + " " + dtype_name(dt));
      // scalar on the right takes the row-op-scalar path
      Tensor s = Tensor::scalar(0.375, dt);
      expect_close(back(binary(op, on(a), on(s))), a.shape(),
                   [&](const auto& i) { return ref_binary(op, a.at(i), 0.375); }, tol(dt, tol_for(dt) * 2),
                   std::string("binary scalar ") + binary_name(op));
    }
  }
}

TEST_P(Binary, IntegerOps) {
  Tensor a = Tensor::from_vector<int64_t>({1, -2, 3, 7, 0, 5}, {2, 3});
  Tensor b = Tensor::from_vector<int64_t>({3, -2, 4}, {3});
  for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::maximum, BinaryOp::minimum,
                      BinaryOp::eq, BinaryOp::lt, BinaryOp::ge}) {
    Tensor y = back(binary(op, on(a), on(b)));
    expect_close(y, {2, 3}, [&](const auto& i) { return ref_binary(op, a.at(i), b.at({i[1]})); }, 0.0,
                 binary_name(op));
  }
  EXPECT_EQ(binary(BinaryOp::add, on(a), on(b)).dtype(), DType::i64);
  Tensor m = Tensor::from_vector<uint8_t>({1, 0, 1}, {3});
  EXPECT_EQ(back(binary(BinaryOp::mul, on(m), on(m))).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 1}));
}

TEST_P(Binary, Bf16AddRoundsOnce) {
  Generator g(9);
  Tensor a = Tensor::randn({6, 7}, g, DType::bf16), b = Tensor::randn({7}, g, DType::bf16);
  Tensor y = back(binary(BinaryOp::mul, on(a), on(b)));
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 7; ++j) {
      float r = static_cast<float>(a.at({i, j})) * static_cast<float>(b.at({j}));
      // a product of two bf16 values is exact in f32: one rounding, the same on every device
      EXPECT_EQ(y.data<bf16_t>()[i * 7 + j].bits, float_to_bf16(r).bits);
    }
}

TEST(BinaryCpu, Errors) {
  Tensor a = Tensor::from_vector<int64_t>({1, -2, 3, 7, 0, 5}, {2, 3});
  Tensor b = Tensor::from_vector<int64_t>({3, -2, 4}, {3});
  EXPECT_TRUE(has(error_of([&] { binary(BinaryOp::div, a, b); }), "binary(div)"));
  std::string e = error_of([] { binary(BinaryOp::add, Tensor::zeros({2, 3}), Tensor::zeros({4})); });
  EXPECT_TRUE(has(e, "binary(add)") && has(e, "[2, 3]") && has(e, "[4]")) << e;
  e = error_of([] { binary(BinaryOp::mul, Tensor::zeros({2, 3}), Tensor::zeros({3}, DType::f64)); });
  EXPECT_TRUE(has(e, "binary(mul)") && has(e, "dtype") && has(e, "f32") && has(e, "f64") && has(e, "[2, 3]")) << e;
}

TEST_P(Where, BroadcastsCondAndValues) {
  for (DType dt : {DType::f64, DType::f32, DType::i32}) {
    Generator g(13);
    Tensor a = Tensor::randn({3, 4}, g, DType::f64).to(dt).transpose(0, 1);  // [4, 3] strided
    Tensor b = Tensor::randn({1, 3}, g, DType::f64).to(dt);
    Tensor cu8 = Tensor::from_vector<uint8_t>({1, 0, 0, 1}, {4, 1});
    Tensor cf = Tensor::from_vector<float>({0.f, -0.5f, 2.f}, {3});
    for (const Tensor& c : {cu8, cf}) {
      Tensor y = back(where(on(c), on(a), on(b)));
      EXPECT_EQ(y.dtype(), dt);
      expect_close(y, {4, 3}, [&](const auto& i) {
        return c.at(bcast_idx(i, c.shape())) != 0 ? a.at(i) : b.at({0, i[1]});
      }, 0.0, "where");
    }
  }
}

TEST(WhereCpu, Errors) {
  std::string e = error_of([] { where(Tensor::zeros({2}, DType::u8), Tensor::zeros({3}), Tensor::zeros({3})); });
  EXPECT_TRUE(has(e, "where") && has(e, "[2]") && has(e, "[3]")) << e;
}

TEST_P(InPlace, AddAndScale) {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(17);
    Tensor base_cpu = Tensor::randn({4, 3}, g, dt);
    Tensor base = on(base_cpu);
    Tensor y = base.transpose(0, 1);  // [3, 4] strided, written in place on the device
    Tensor before = back(y.clone());
    Tensor x = Tensor::randn({4}, g, dt);
    add_(y, on(x), 0.5);
    expect_close(back(y.contiguous()), {3, 4}, [&](const auto& i) { return before.at(i) + 0.5 * x.at({i[1]}); },
                 tol(dt, tol_for(dt)), "add_ broadcast");
    // base sees the writes (in place through the view)
    EXPECT_DOUBLE_EQ(back(base).at({2, 1}), back(y).at({1, 2}));
    scale_(y, -3.0);
    expect_close(back(y.contiguous()), {3, 4},
                 [&](const auto& i) { return -3.0 * (before.at(i) + 0.5 * x.at({i[1]})); }, tol(dt, tol_for(dt) * 4),
                 "scale_");
    // x a transposed view of y's own storage: reads the old values
    Tensor sq_cpu = Tensor::randn({3, 3}, g, dt);
    Tensor sq = on(sq_cpu);
    Tensor old = back(sq.clone());
    add_(sq, sq.transpose(0, 1));
    expect_close(back(sq), {3, 3}, [&](const auto& i) { return old.at(i) + old.at({i[1], i[0]}); },
                 tol(dt, tol_for(dt)), "add_ self-transpose");
  }
}

TEST(InPlaceCpu, Errors) {
  std::string e = error_of([] { add_(Tensor::zeros({2, 3}), Tensor::zeros({2, 4})); });
  EXPECT_TRUE(has(e, "add_") && has(e, "[2, 3]") && has(e, "[2, 4]")) << e;
  e = error_of([] { add_(Tensor::zeros({3}).expand({2, 3}), Tensor::zeros({3})); });
  EXPECT_TRUE(has(e, "add_") && has(e, "broadcast")) << e;
}

TEST_P(Unary, LargeContiguousRunsInParallelChunks) {
  // 200k elements: split across threads (blocks on a GPU); every element must still be mapped once
  Tensor x = Tensor::arange(0, 200000, 1, DType::f64);
  Tensor y = back(affine(on(x), 2.0, 1.0));
  auto v = y.to_vector<double>();
  for (int64_t i = 0; i < 200000; i += 997) ASSERT_EQ(v[i], 2.0 * i + 1.0);
  EXPECT_EQ(v.back(), 2.0 * 199999 + 1.0);
}

// ---- swiglu -------------------------------------------------------------------------------

namespace {
double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }
double silu_grad_ref(double x) {
  const double s = 1.0 / (1.0 + std::exp(-x));
  return s * (1.0 + x * (1.0 - s));
}
}  // namespace

TEST_P(Swiglu, MatchesClosedFormsOnStridedViews) {
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor g = strided_input(dt, 41), u = strided_input(dt, 42), gy = strided_input(dt, 43);
    Tensor y = back(swiglu(on(g), on(u)));
    expect_close(y, g.shape(), [&](const auto& i) { return silu_ref(g.at(i)) * u.at(i); }, tol(dt, tol_for(dt) * 2),
                 std::string("swiglu ") + dtype_name(dt));
    SwigluGrads r = swiglu_backward(on(gy), on(g), on(u));
    expect_close(back(r.dgate), g.shape(), [&](const auto& i) { return gy.at(i) * u.at(i) * silu_grad_ref(g.at(i)); },
                 tol(dt, tol_for(dt) * 4), std::string("swiglu dgate ") + dtype_name(dt));
    expect_close(back(r.dup), g.shape(), [&](const auto& i) { return gy.at(i) * silu_ref(g.at(i)); },
                 tol(dt, tol_for(dt) * 2), std::string("swiglu dup ") + dtype_name(dt));
  }
}

// The fused op replaces silu followed by mul in the Llama MLP: on the CPU it gives the same
// bits as that composition (and its backward), in the parallel row path (large, contiguous)
// and the strided loop alike; on another device, the same values to rounding.
TEST_P(Swiglu, SameNumbersAsSiluThenMul) {
  Generator gen(44);
  for (const Shape& shape : {Shape{64, 1000}, Shape{3, 37}}) {
    Tensor g = Tensor::randn(shape, gen, DType::f64), u = Tensor::randn(shape, gen, DType::f64);
    Tensor gy = Tensor::randn(shape, gen, DType::f64);
    scale_(g, 6.0);  // through the flat and the steep parts of silu
    for (DType dt : {DType::f32, DType::f64}) {
      for (bool strided : {false, true}) {
        auto view = [&](const Tensor& t) {
          Tensor d = on(t.to(dt));
          return strided ? d.transpose(0, 1).contiguous().transpose(0, 1) : d;
        };
        Tensor gd = view(g), ud = view(u), gyd = view(gy);
        Tensor s = unary(UnaryOp::silu, gd);
        Tensor want_y = back(binary(BinaryOp::mul, s, ud));
        Tensor want_dup = back(binary(BinaryOp::mul, gyd, s));
        Tensor want_dgate = back(unary_backward(UnaryOp::silu, gd, Tensor(), binary(BinaryOp::mul, gyd, ud)));
        Tensor y = back(swiglu(gd, ud));
        SwigluGrads r = swiglu_backward(gyd, gd, ud);
        const std::string what = std::string(dtype_name(dt)) + " " + shape_str(shape) + (strided ? " strided" : "");
        const double t = on_cpu() ? 0.0 : tol(dt, tol_for(dt) * 4);
        expect_close(y, shape, [&](const auto& i) { return want_y.at(i); }, t, "swiglu vs silu*up " + what);
        expect_close(back(r.dup), shape, [&](const auto& i) { return want_dup.at(i); }, t, "dup " + what);
        expect_close(back(r.dgate), shape, [&](const auto& i) { return want_dgate.at(i); }, t, "dgate " + what);
      }
    }
  }
}

TEST_P(Swiglu, Bf16RoundsTheF32Result) {
  Tensor g = strided_input(DType::bf16, 45), u = strided_input(DType::bf16, 46);
  Tensor y = back(swiglu(on(g), on(u)));
  ASSERT_EQ(y.dtype(), DType::bf16);
  int64_t k = 0;
  for_each_index(g.shape(), [&](const auto& i) {
    const float gv = static_cast<float>(g.at(i)), uv = static_cast<float>(u.at(i));
    const float f = gv / (1.0f + std::exp(-gv)) * uv;  // one rounding, at the end
    expect_bf16_bits(y.data<bf16_t>()[k].bits, float_to_bf16(f).bits, on_cpu(), "swiglu bf16 at " + std::to_string(k));
    ++k;
  });
}

TEST(SwigluCpu, Errors) {
  std::string e = error_of([] { swiglu(Tensor::zeros({2, 3}), Tensor::zeros({2, 4})); });
  EXPECT_TRUE(has(e, "swiglu") && has(e, "[2, 3]") && has(e, "[2, 4]") && has(e, "same width")) << e;
  e = error_of([] { swiglu(Tensor::zeros({2, 3}), Tensor::zeros({2, 3}, DType::f64)); });
  EXPECT_TRUE(has(e, "swiglu") && has(e, "dtype")) << e;
  e = error_of([] { swiglu(Tensor::zeros({2, 3}, DType::i32), Tensor::zeros({2, 3}, DType::i32)); });
  EXPECT_TRUE(has(e, "swiglu") && has(e, "floating")) << e;
  e = error_of([] { swiglu_backward(Tensor::zeros({3, 2}), Tensor::zeros({2, 3}), Tensor::zeros({2, 3})); });
  EXPECT_TRUE(has(e, "swiglu_backward") && has(e, "gy") && has(e, "[3, 2]")) << e;
}
