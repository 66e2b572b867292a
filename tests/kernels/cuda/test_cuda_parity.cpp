// CUDA parity: every op of kernels/ops.h run on CUDA against the same op on the CPU, on the
// same seeded inputs (drawn on the CPU and copied over), forward and backward, for f32,
// bf16 and f64 (f16 where the op supports it), with sizes that are not multiples of any
// tile, broadcast and strided (transposed) inputs. Every CUDA allocation is poisoned with
// NaN bytes (kernels::cuda_poison_allocations), so an output element a kernel forgot to
// write fails the comparison. Also: the caching allocator, pinned buffers, copies between
// every pair of dtypes, and a tiny GPT trained on both devices.
//
// Without a GPU every test skips and the program prints one line saying so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "models/model.h"
#include "tests/kernels/kernel_test_util.h"
#if __has_include("models/autocast.h")
#include "models/autocast.h"
#define LATHE_TEST_HAS_AUTOCAST 1
#endif

using namespace lathe;
using namespace lathe::kernels;
using lathe::kernel_test::vec;

namespace {

bool g_has_cuda = false;
// LATHE_PARITY_SELFTEST_ON_CPU (a developer's check of this file without a GPU): "cuda" is
// the CPU, so every reference path and comparison runs; the allocator tests skip.
#ifdef LATHE_PARITY_SELFTEST_ON_CPU
const Device kGpu = Device::cpu();
#define SKIP_UNLESS_REAL_CUDA() GTEST_SKIP() << "needs a real CUDA device"
#else
const Device kGpu = Device::cuda(0);
#define SKIP_UNLESS_REAL_CUDA() (void)0
#endif

// Every test derives from this: skips without a GPU.
class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g_has_cuda) GTEST_SKIP() << "no CUDA device";
  }
};

// ---- comparison ------------------------------------------------------------------------------

// Elementwise |got - want| <= rtol |want| + atol * rms(want), and ||got - want|| <= norm ||want||
// over the finite reference values. atol is relative to the reference's RMS so that
// results near zero after cancellation (sums, GEMMs) are judged on the scale of the data.
// A NaN or infinity in the reference must be matched exactly; a NaN anywhere else (a
// poisoned, unwritten output) fails.
struct Tol {
  double rtol, atol, norm;
};
constexpr Tol kExact{0, 0, 0};

Tol tol_for(DType dt) {
  switch (dt) {
    case DType::f64: return {1e-12, 1e-12, 1e-12};
    case DType::f32: return {1e-5, 1e-5, 1e-5};
    case DType::bf16: return {1e-2, 1e-2, 1e-2};
    case DType::f16: return {2e-3, 2e-3, 2e-3};
    default: return kExact;
  }
}
// Looser f32 tolerance for long reductions, attention and GEMMs with a long K.
Tol long_tol(DType dt) {
  Tol t = tol_for(dt);
  if (dt == DType::f32) return {1e-4, 1e-4, 1e-4};
  if (dt == DType::f64) return {1e-10, 1e-10, 1e-10};
  if (dt == DType::bf16) return {2e-2, 2e-2, 2e-2};
  return t;
}

::testing::AssertionResult close(const Tensor& got, const Tensor& want, Tol tol, const std::string& what) {
  if (!got.defined() || !want.defined())
    return ::testing::AssertionFailure() << what << ": undefined tensor (got " << got.defined() << ", want "
                                         << want.defined() << ")";
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << got.shape_str() << " vs CPU " << want.shape_str();
  if (got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << what << ": dtype " << dtype_name(got.dtype()) << " vs CPU "
                                         << dtype_name(want.dtype());
  if (got.device() != kGpu)
    return ::testing::AssertionFailure() << what << ": result is on " << got.device().str() << ", not cuda:0";
  const std::vector<double> g = vec(got), w = vec(want);
  double sq = 0, sqd = 0;
  int64_t nfin = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (!std::isfinite(w[i])) continue;
    sq += w[i] * w[i];
    ++nfin;
  }
  const double rms = nfin ? std::sqrt(sq / nfin) : 0.0;
  int64_t bad = 0;
  double max_err = 0;
  std::ostringstream first;
  for (size_t i = 0; i < w.size(); ++i) {
    bool ok;
    if (std::isnan(w[i])) {
      ok = std::isnan(g[i]);
    } else if (std::isinf(w[i])) {
      ok = g[i] == w[i];
    } else {
      const double d = std::abs(g[i] - w[i]);
      ok = d <= tol.rtol * std::abs(w[i]) + tol.atol * rms;  // false for a NaN g
      if (std::isfinite(g[i])) {
        sqd += d * d;
        max_err = std::max(max_err, d);
      } else {
        sqd = INFINITY;
      }
    }
    if (!ok) {
      if (bad < 6) first << "\n    [" << i << "] cuda " << g[i] << " cpu " << w[i];
      ++bad;
    }
  }
  const double nrel = sq > 0 ? std::sqrt(sqd / sq) : std::sqrt(sqd);
  const bool norm_ok = nrel <= tol.norm || (sq == 0 && sqd == 0);
  if (bad == 0 && norm_ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << " " << want.shape_str() << " " << dtype_name(want.dtype()) << ": "
                                       << bad << " of " << w.size() << " elements off (rtol " << tol.rtol
                                       << ", atol " << tol.atol << " x rms " << rms << "), max abs err " << max_err
                                       << ", norm-relative err " << nrel << " (limit " << tol.norm << ")"
                                       << first.str();
}

// Byte-for-byte equality of the logical values (after making both contiguous on the CPU).
::testing::AssertionResult bits_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << what << ": " << got.shape_str() << " " << dtype_name(got.dtype())
                                         << " vs CPU " << want.shape_str() << " " << dtype_name(want.dtype());
  Tensor g = got.to(Device::cpu()).contiguous(), w = want.contiguous();
  const size_t n = w.nbytes(), es = w.element_size();
  const auto* gp = static_cast<const unsigned char*>(g.raw_data());
  const auto* wp = static_cast<const unsigned char*>(w.raw_data());
  for (size_t i = 0; i < n; i += es) {
    if (std::memcmp(gp + i, wp + i, es) != 0) {
      return ::testing::AssertionFailure() << what << ": element " << i / es << " differs: cuda "
                                           << vec(got)[i / es] << " cpu " << vec(want)[i / es];
    }
  }
  return ::testing::AssertionSuccess();
}

// Variadic so that brace-initialised tolerances may be passed; do/while for if-without-braces.
#define EXPECT_CLOSE(...) \
  do {                    \
    EXPECT_TRUE(close(__VA_ARGS__)); \
  } while (0)

// ---- inputs ------------------------------------------------------------------------------------

// The same values on both devices. `cpu` may be a view; `gpu` is the same view of a copy.
struct Pair {
  Tensor cpu, gpu;
  Pair view(const std::function<Tensor(const Tensor&)>& f) const { return {f(cpu), f(gpu)}; }
};

Pair to_both(const Tensor& cpu) { return {cpu, cpu.to(kGpu)}; }

// N(shift, scale^2) values of dtype dt.
Pair randn(const Shape& s, DType dt, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Generator gen(seed);
  Tensor x = Tensor::randn(s, gen, DType::f64);
  if (scale != 1.0 || shift != 0.0) x = affine(x, scale, shift);
  return to_both(x.to(dt));
}
// Values in [lo, lo + width).
Pair uniform(const Shape& s, DType dt, uint64_t seed, double lo, double width) {
  Generator gen(seed);
  return to_both(affine(Tensor::rand(s, gen, DType::f64), width, lo).to(dt));
}
// Integer ids in [0, n) (dtype i64 or i32); every `ignore_every`-th one replaced by `ignore`.
Pair ids(const Shape& s, int64_t n, DType dt, uint64_t seed, int64_t ignore_every = 0, int64_t ignore = -100) {
  Generator gen(seed);
  std::vector<int64_t> v(static_cast<size_t>(shape_numel(s)));
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<int64_t>(gen.next_u32() % static_cast<uint32_t>(n));
    if (ignore_every > 0 && i % ignore_every == 1) v[i] = ignore;
  }
  return to_both(Tensor::from_vector<int64_t>(v, s).to(dt));
}

const DType kFloatTypes[] = {DType::f32, DType::bf16, DType::f64};
const DType kAllTypes[] = {DType::f64, DType::f32, DType::bf16, DType::f16,
                           DType::i64, DType::i32, DType::u8,   DType::i8};

std::string tag(const std::string& op, DType dt) { return op + " " + dtype_name(dt); }

// ---- elementwise ---------------------------------------------------------------------------------

const UnaryOp kUnary[] = {UnaryOp::neg,       UnaryOp::exp,      UnaryOp::log,     UnaryOp::sqrt,
                          UnaryOp::rsqrt,     UnaryOp::tanh,     UnaryOp::sigmoid, UnaryOp::relu,
                          UnaryOp::gelu_tanh, UnaryOp::gelu_erf, UnaryOp::silu,    UnaryOp::abs,
                          UnaryOp::sign,      UnaryOp::square,   UnaryOp::reciprocal, UnaryOp::sin,
                          UnaryOp::cos};

bool needs_positive(UnaryOp op) {
  return op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::reciprocal;
}

TEST_F(Cuda, UnaryEveryOpContiguousStridedLarge) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    for (UnaryOp op : kUnary) {
      const std::string name = tag(std::string("unary ") + unary_name(op), dt);
      // A large odd-sized contiguous input, and a transposed view.
      for (int variant = 0; variant < 2; ++variant) {
        Pair x = variant == 0 ? randn({100003}, dt, 11) : randn({67, 37}, dt, 12);
        if (needs_positive(op)) x = to_both(affine(unary(UnaryOp::abs, x.cpu), 1.0, 0.5));
        if (variant == 1) x = x.view([](const Tensor& t) { return t.transpose(0, 1); });
        EXPECT_CLOSE(unary(op, x.gpu), unary(op, x.cpu), tol_for(dt), name + (variant ? " strided" : ""));
      }
    }
  }
}

TEST_F(Cuda, UnaryBackwardEveryOpWithAndWithoutOutput) {
  for (DType dt : kFloatTypes) {
    for (UnaryOp op : kUnary) {
      const std::string name = tag(std::string("unary_backward ") + unary_name(op), dt);
      Pair x = randn({37, 67}, dt, 21);
      if (needs_positive(op)) x = to_both(affine(unary(UnaryOp::abs, x.cpu), 1.0, 0.5));
      Pair gy = randn({37, 67}, dt, 22).view([](const Tensor& t) { return t; });
      Pair gyt = randn({67, 37}, dt, 23).view([](const Tensor& t) { return t.transpose(0, 1); });
      Tensor y_cpu = unary(op, x.cpu);
      Tensor y_gpu = y_cpu.to(kGpu);
      EXPECT_CLOSE(unary_backward(op, x.gpu, y_gpu, gy.gpu), unary_backward(op, x.cpu, y_cpu, gy.cpu), tol_for(dt),
                   name + " (x, y)");
      EXPECT_CLOSE(unary_backward(op, x.gpu, Tensor(), gyt.gpu), unary_backward(op, x.cpu, Tensor(), gyt.cpu),
                   tol_for(dt), name + " (x only, strided gy)");
    }
  }
}

TEST_F(Cuda, PowAffineClamp) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    Pair x = randn({37, 129}, dt, 31);
    Pair xp = uniform({37, 129}, dt, 32, 0.25, 2.0);
    Pair xt = x.view([](const Tensor& t) { return t.transpose(0, 1); });
    for (double p : {2.0, 1.0, 0.5, 3.0, -1.5, 0.0}) {
      EXPECT_CLOSE(pow_scalar(xp.gpu, p), pow_scalar(xp.cpu, p), tol_for(dt), tag("pow_scalar " + std::to_string(p), dt));
    }
    EXPECT_CLOSE(pow_scalar(xt.gpu, 2.0), pow_scalar(xt.cpu, 2.0), tol_for(dt), tag("pow_scalar strided", dt));
    EXPECT_CLOSE(affine(x.gpu, -1.75, 0.3), affine(x.cpu, -1.75, 0.3), tol_for(dt), tag("affine", dt));
    EXPECT_CLOSE(affine(xt.gpu, 2.0, -1.0), affine(xt.cpu, 2.0, -1.0), tol_for(dt), tag("affine strided", dt));
    EXPECT_CLOSE(clamp(x.gpu, -0.5, 0.7), clamp(x.cpu, -0.5, 0.7), kExact, tag("clamp", dt));
    EXPECT_CLOSE(clamp(xt.gpu, -1e30, 0.0), clamp(xt.cpu, -1e30, 0.0), kExact, tag("clamp strided", dt));
  }
}

const BinaryOp kBinary[] = {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div, BinaryOp::maximum,
                            BinaryOp::minimum, BinaryOp::pow, BinaryOp::eq, BinaryOp::ne, BinaryOp::lt,
                            BinaryOp::le, BinaryOp::gt, BinaryOp::ge};

TEST_F(Cuda, BinaryEveryOpBroadcastAndStrided) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    for (BinaryOp op : kBinary) {
      const std::string name = tag(std::string("binary ") + binary_name(op), dt);
      const bool positive = op == BinaryOp::pow || op == BinaryOp::div;
      auto make = [&](const Shape& s, uint64_t seed) {
        return positive ? uniform(s, dt, seed, 0.5, 1.5) : randn(s, dt, seed);
      };
      const Tol t = tol_for(dt);
      // Same shape, large.
      Pair a = make({100003}, 41), b = make({100003}, 42);
      EXPECT_CLOSE(binary(op, a.gpu, b.gpu), binary(op, a.cpu, b.cpu), t, name + " contiguous");
      // Broadcast both ways: [37, 1, 67] with [5, 1].
      Pair a3 = make({37, 1, 67}, 43), b2 = make({5, 1}, 44);
      EXPECT_CLOSE(binary(op, a3.gpu, b2.gpu), binary(op, a3.cpu, b2.cpu), t, name + " broadcast");
      // Scalar (0-d) operand.
      Pair s0 = make({}, 45);
      EXPECT_CLOSE(binary(op, s0.gpu, a3.gpu), binary(op, s0.cpu, a3.cpu), t, name + " 0-d a");
      // Transposed views of both operands, and one transposed against one contiguous.
      Pair at = make({67, 37}, 46).view([](const Tensor& x) { return x.transpose(0, 1); });
      Pair bt = make({67, 37}, 47).view([](const Tensor& x) { return x.transpose(0, 1); });
      Pair bc = make({37, 67}, 48);
      EXPECT_CLOSE(binary(op, at.gpu, bt.gpu), binary(op, at.cpu, bt.cpu), t, name + " both transposed");
      EXPECT_CLOSE(binary(op, at.gpu, bc.gpu), binary(op, at.cpu, bc.cpu), t, name + " transposed x contiguous");
      // Equal values, so that eq/le/ge see ties.
      EXPECT_CLOSE(binary(op, bc.gpu, bc.gpu), binary(op, bc.cpu, bc.cpu), t, name + " a == b");
    }
  }
}

TEST_F(Cuda, BinaryIntegerDtypes) {
  for (DType dt : {DType::i64, DType::i32, DType::u8}) {
    Pair a = ids({37, 67}, 50, dt, 51), b = ids({67}, 50, dt, 52);
    for (BinaryOp op : {BinaryOp::add, BinaryOp::mul, BinaryOp::maximum, BinaryOp::minimum, BinaryOp::eq,
                        BinaryOp::ne, BinaryOp::lt, BinaryOp::ge}) {
      EXPECT_CLOSE(binary(op, a.gpu, b.gpu), binary(op, a.cpu, b.cpu), kExact,
                   tag(std::string("binary ") + binary_name(op), dt));
    }
  }
}

TEST_F(Cuda, WhereBroadcastCondDtypes) {
  for (DType dt : kFloatTypes) {
    Pair x = randn({37, 67}, dt, 61), y = randn({67}, dt, 62);
    Pair c_u8 = to_both(binary(BinaryOp::gt, randn({37, 1}, DType::f32, 63).cpu, Tensor::scalar(0.0)));
    Pair c_f = randn({37, 67}, dt, 64).view([](const Tensor& t) { return t; });
    Pair c_fz = to_both(unary(UnaryOp::relu, c_f.cpu));  // zeros where negative: false
    EXPECT_CLOSE(where(c_u8.gpu, x.gpu, y.gpu), where(c_u8.cpu, x.cpu, y.cpu), kExact, tag("where u8 cond", dt));
    EXPECT_CLOSE(where(c_fz.gpu, y.gpu, x.gpu), where(c_fz.cpu, y.cpu, x.cpu), kExact, tag("where float cond", dt));
    Pair xt = randn({67, 37}, dt, 65).view([](const Tensor& t) { return t.transpose(0, 1); });
    EXPECT_CLOSE(where(c_u8.gpu, xt.gpu, x.gpu), where(c_u8.cpu, xt.cpu, x.cpu), kExact, tag("where strided", dt));
  }
}

TEST_F(Cuda, AddInPlaceAndScaleInPlace) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    // Contiguous y += alpha * broadcast x.
    Pair y = randn({37, 67}, dt, 71), x = randn({67}, dt, 72);
    Pair y2 = to_both(y.cpu.clone());
    add_(y.gpu, x.gpu, 0.5);
    add_(y.cpu, x.cpu, 0.5);
    EXPECT_CLOSE(y.gpu, y.cpu, tol_for(dt), tag("add_ broadcast alpha 0.5", dt));
    add_(y2.gpu, y.gpu);
    add_(y2.cpu, y.cpu);
    EXPECT_CLOSE(y2.gpu, y2.cpu, tol_for(dt), tag("add_ alpha 1", dt));
    // In place through a transposed view: only that view's elements change.
    Pair base = randn({67, 37}, dt, 73);
    Pair yt = base.view([](const Tensor& t) { return t.transpose(0, 1); });
    Pair xs = randn({37, 67}, dt, 74);
    add_(yt.gpu, xs.gpu, -2.0);
    add_(yt.cpu, xs.cpu, -2.0);
    EXPECT_CLOSE(base.gpu, base.cpu, tol_for(dt), tag("add_ into a transposed view", dt));
    scale_(yt.gpu, 1.7);
    scale_(yt.cpu, 1.7);
    EXPECT_CLOSE(base.gpu, base.cpu, tol_for(dt), tag("scale_ a transposed view", dt));
    Pair big = randn({100003}, dt, 75);
    scale_(big.gpu, -0.3);
    scale_(big.cpu, -0.3);
    EXPECT_CLOSE(big.gpu, big.cpu, tol_for(dt), tag("scale_ large", dt));
  }
  for (DType dt : {DType::i64, DType::i32}) {
    Pair y = ids({37, 67}, 100, dt, 76), x = ids({37, 67}, 100, dt, 77);
    add_(y.gpu, x.gpu, 3.0);
    add_(y.cpu, x.cpu, 3.0);
    EXPECT_CLOSE(y.gpu, y.cpu, kExact, tag("add_ integer", dt));
  }
}

// ---- reductions ----------------------------------------------------------------------------------

TEST_F(Cuda, ReduceEveryOpSeveralAxisSets) {
  const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::var, ReduceOp::norm};
  const char* names[] = {"sum", "mean", "max", "min", "var", "norm"};
  const std::vector<std::vector<int64_t>> axis_sets = {{}, {0}, {1}, {2}, {-1}, {0, 2}, {1, 2}, {0, 1}};
  for (DType dt : kFloatTypes) {
    Pair x = randn({5, 37, 67}, dt, 81, 1.0, 0.3);
    Pair xt = randn({67, 5, 37}, dt, 82).view([](const Tensor& t) { return t.permute({1, 2, 0}); });
    for (size_t o = 0; o < 6; ++o) {
      const Tol t = (ops[o] == ReduceOp::max || ops[o] == ReduceOp::min) ? kExact : long_tol(dt);
      for (const auto& axes : axis_sets) {
        std::string name = tag(std::string("reduce ") + names[o], dt) + " axes {";
        for (int64_t a : axes) name += std::to_string(a) + ",";
        name += "}";
        for (bool keep : {false, true}) {
          EXPECT_CLOSE(reduce(ops[o], x.gpu, axes, keep), reduce(ops[o], x.cpu, axes, keep), t,
                       name + (keep ? " keepdim" : ""));
        }
        EXPECT_CLOSE(reduce(ops[o], xt.gpu, axes), reduce(ops[o], xt.cpu, axes), t, name + " strided");
        if (ops[o] == ReduceOp::var)
          EXPECT_CLOSE(reduce(ops[o], x.gpu, axes, false, 0), reduce(ops[o], x.cpu, axes, false, 0), t,
                       name + " correction 0");
      }
    }
    for (int64_t ax : {0, 1, 2, -1}) {
      EXPECT_CLOSE(reduce(ReduceOp::argmax, x.gpu, {ax}), reduce(ReduceOp::argmax, x.cpu, {ax}), kExact,
                   tag("reduce argmax axis " + std::to_string(ax), dt));
      EXPECT_CLOSE(reduce(ReduceOp::argmax, xt.gpu, {ax}, true), reduce(ReduceOp::argmax, xt.cpu, {ax}, true),
                   kExact, tag("reduce argmax strided keepdim axis " + std::to_string(ax), dt));
    }
    // Long rows: one and many blocks per output.
    Pair lr = randn({3, 50257}, dt, 83, 1.0, 0.1);
    for (size_t o = 0; o < 6; ++o) {
      const Tol t = (ops[o] == ReduceOp::max || ops[o] == ReduceOp::min) ? kExact : long_tol(dt);
      EXPECT_CLOSE(reduce(ops[o], lr.gpu, {1}), reduce(ops[o], lr.cpu, {1}), t, tag(std::string("long row ") + names[o], dt));
      EXPECT_CLOSE(reduce(ops[o], lr.gpu, {}), reduce(ops[o], lr.cpu, {}), t, tag(std::string("all ") + names[o], dt));
      EXPECT_CLOSE(reduce(ops[o], lr.gpu, {0}), reduce(ops[o], lr.cpu, {0}), t, tag(std::string("columns ") + names[o], dt));
    }
    EXPECT_CLOSE(reduce(ReduceOp::argmax, lr.gpu, {1}), reduce(ReduceOp::argmax, lr.cpu, {1}), kExact,
                 tag("argmax long row", dt));
  }
  // Integer sums become i64.
  for (DType dt : {DType::i64, DType::i32, DType::u8}) {
    Pair x = ids({5, 37, 67}, 7, dt, 84);
    for (const auto& axes : axis_sets)
      EXPECT_CLOSE(reduce(ReduceOp::sum, x.gpu, axes), reduce(ReduceOp::sum, x.cpu, axes), kExact,
                   tag("reduce sum integer", dt));
    EXPECT_CLOSE(reduce(ReduceOp::max, x.gpu, {1}), reduce(ReduceOp::max, x.cpu, {1}), kExact, tag("reduce max integer", dt));
  }
}

TEST_F(Cuda, SumToShape) {
  for (DType dt : kFloatTypes) {
    Pair x = randn({4, 5, 6}, dt, 91);
    for (const Shape& s : std::vector<Shape>{{5, 1}, {1, 6}, {6}, {4, 1, 1}, {1}, {}, {5, 6}, {4, 5, 6}}) {
      EXPECT_CLOSE(sum_to_shape(x.gpu, s), sum_to_shape(x.cpu, s), tol_for(dt), tag("sum_to_shape " + shape_str(s), dt));
    }
    Pair big = randn({4096, 67}, dt, 92);
    EXPECT_CLOSE(sum_to_shape(big.gpu, {67}), sum_to_shape(big.cpu, {67}), long_tol(dt), tag("sum_to_shape long", dt));
  }
}

// ---- matmul ----------------------------------------------------------------------------------------

// a [.., M, K] (or its transpose stored), b [.., K, N] (or transposed) per the flags.
void check_matmul(DType dt, const Shape& batch_a, const Shape& batch_b, int64_t M, int64_t K, int64_t N, bool ta,
                  bool tb, uint64_t seed) {
  Shape sa = batch_a, sb = batch_b;
  sa.push_back(ta ? K : M);
  sa.push_back(ta ? M : K);
  sb.push_back(tb ? N : K);
  sb.push_back(tb ? K : N);
  Pair a = randn(sa, dt, seed), b = randn(sb, dt, seed + 1);
  std::ostringstream name;
  name << "matmul " << dtype_name(dt) << " a " << shape_str(sa) << (ta ? "^T" : "") << " b " << shape_str(sb)
       << (tb ? "^T" : "");
  const Tol t = K > 1000 ? long_tol(dt) : (dt == DType::f32 ? Tol{2e-5, 2e-5, 1e-5} : tol_for(dt));
  EXPECT_CLOSE(matmul(a.gpu, b.gpu, ta, tb), matmul(a.cpu, b.cpu, ta, tb), t, name.str());
}

TEST_F(Cuda, Matmul2dAllTransposesOddSizes) {
  const int64_t dims[][3] = {{1, 1, 1}, {33, 67, 129}, {257, 129, 67}, {67, 1, 33}, {129, 257, 1}, {1, 257, 33}, {1, 1100, 33}};
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    uint64_t seed = 100;
    for (const auto& d : dims)
      for (bool ta : {false, true})
        for (bool tb : {false, true}) check_matmul(dt, {}, {}, d[0], d[1], d[2], ta, tb, seed += 2);
  }
}

TEST_F(Cuda, MatmulBatchedBroadcastAndViews) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        check_matmul(dt, {3}, {3}, 33, 67, 129, ta, tb, 200);           // batched
        check_matmul(dt, {2, 1}, {3}, 37, 65, 31, ta, tb, 210);         // broadcast batch
        check_matmul(dt, {4}, {}, 33, 67, 129, ta, tb, 220);            // 2-D b shared by every batch
        check_matmul(dt, {}, {2}, 33, 67, 17, ta, tb, 230);             // 2-D a shared
        check_matmul(dt, {2, 3}, {2, 3}, 1, 257, 67, ta, tb, 240);      // M = 1, two batch dims
      }
    const Tol t = dt == DType::f32 ? Tol{2e-5, 2e-5, 1e-5} : tol_for(dt);
    // A transposed view as a plain (trans_a = false) input, and a permuted batch.
    Pair at = randn({67, 33}, dt, 250).view([](const Tensor& x) { return x.transpose(0, 1); });
    Pair b = randn({67, 129}, dt, 251);
    EXPECT_CLOSE(matmul(at.gpu, b.gpu), matmul(at.cpu, b.cpu), t, tag("matmul transposed-view a", dt));
    Pair bt = randn({129, 67}, dt, 252).view([](const Tensor& x) { return x.transpose(0, 1); });
    EXPECT_CLOSE(matmul(at.gpu, bt.gpu), matmul(at.cpu, bt.cpu), t, tag("matmul transposed-view a and b", dt));
    EXPECT_CLOSE(matmul(at.gpu, bt.gpu, false, false), matmul(at.cpu, bt.cpu), t, tag("matmul views again", dt));
    Pair ap = randn({33, 3, 67}, dt, 253).view([](const Tensor& x) { return x.permute({1, 0, 2}); });
    Pair bb = randn({3, 67, 37}, dt, 254);
    EXPECT_CLOSE(matmul(ap.gpu, bb.gpu), matmul(ap.cpu, bb.cpu), t, tag("matmul permuted batch a", dt));
    // A sliced (offset, row-strided) a.
    Pair as = randn({40, 80}, dt, 255).view([](const Tensor& x) { return x.slice(0, 3, 36).slice(1, 5, 72); });
    Pair bs = randn({67, 29}, dt, 256);
    EXPECT_CLOSE(matmul(as.gpu, bs.gpu), matmul(as.cpu, bs.cpu), t, tag("matmul sliced a", dt));
  }
}

// ---- softmax family ---------------------------------------------------------------------------

TEST_F(Cuda, SoftmaxAndLogSoftmaxForwardBackward) {
  for (DType dt : kFloatTypes) {
    struct Case { Shape s; int64_t axis; };
    for (const Case& c : {Case{{37, 67}, -1}, Case{{4, 37, 5}, 1}, Case{{3, 50257}, 1}, Case{{5, 1}, -1},
                          Case{{2, 3, 1025}, 2}, Case{{129, 3}, 0}}) {
      const std::string where_ = " " + shape_str(c.s) + " axis " + std::to_string(c.axis);
      Pair x = randn(c.s, dt, 301, 2.0);
      Pair gy = randn(c.s, dt, 302);
      const Tol t = long_tol(dt);
      for (bool log : {false, true}) {
        const std::string op = log ? "log_softmax" : "softmax";
        Tensor yc = log ? log_softmax(x.cpu, c.axis) : softmax(x.cpu, c.axis);
        Tensor yg = log ? log_softmax(x.gpu, c.axis) : softmax(x.gpu, c.axis);
        EXPECT_CLOSE(yg, yc, t, tag(op, dt) + where_);
        Tensor y2 = yc.to(kGpu);
        Tensor gc = log ? log_softmax_backward(yc, gy.cpu, c.axis) : softmax_backward(yc, gy.cpu, c.axis);
        Tensor gg = log ? log_softmax_backward(y2, gy.gpu, c.axis) : softmax_backward(y2, gy.gpu, c.axis);
        EXPECT_CLOSE(gg, gc, t, tag(op + "_backward", dt) + where_);
      }
    }
    // A strided x (the op layer makes it contiguous) with rows containing -inf.
    Pair xt = randn({67, 37}, dt, 303).view([](const Tensor& t) { return t.transpose(0, 1); });
    EXPECT_CLOSE(softmax(xt.gpu), softmax(xt.cpu), tol_for(dt), tag("softmax strided", dt));
    Tensor m = randn({6, 40}, dt, 304).cpu.clone();
    m.narrow(1, 0, 20).fill_(-INFINITY);
    Pair mi = to_both(m);
    EXPECT_CLOSE(softmax(mi.gpu), softmax(mi.cpu), tol_for(dt), tag("softmax with -inf", dt));
    EXPECT_CLOSE(log_softmax(mi.gpu), log_softmax(mi.cpu), tol_for(dt), tag("log_softmax with -inf", dt));
  }
}

// ---- norms -------------------------------------------------------------------------------------------

TEST_F(Cuda, LayerNormAndRmsNormForwardBackward) {
  for (DType dt : kFloatTypes) {
    for (const Shape& s : std::vector<Shape>{{37, 768}, {5, 7, 33}, {4, 1}, {3, 4099}, {1, 64}}) {
      const int64_t C = s.back();
      Pair x = randn(s, dt, 401, 1.5, 0.7);
      Pair gy = randn(s, dt, 402);
      Pair w = randn({C}, dt, 403, 0.5, 1.0), b = randn({C}, dt, 404, 0.2);
      const Tol t = long_tol(dt);
      const std::string sh = " " + shape_str(s);
      struct Aff { bool w, b; const char* name; };
      for (const Aff& a : {Aff{true, true, " w+b"}, Aff{true, false, " w"}, Aff{false, false, " plain"},
                           Aff{false, true, " b only"}}) {
        const Tensor wc = a.w ? w.cpu : Tensor(), wg = a.w ? w.gpu : Tensor();
        const Tensor bc = a.b ? b.cpu : Tensor(), bg = a.b ? b.gpu : Tensor();
        NormOut oc = layer_norm(x.cpu, wc, bc, 1e-5), og = layer_norm(x.gpu, wg, bg, 1e-5);
        const std::string n = tag("layer_norm", dt) + sh + a.name;
        EXPECT_CLOSE(og.y, oc.y, t, n + " y");
        EXPECT_CLOSE(og.mean, oc.mean, t, n + " mean");
        EXPECT_CLOSE(og.rstd, oc.rstd, t, n + " rstd");
        // Backward from the CPU's statistics, so it is checked on its own.
        NormGrads gc = layer_norm_backward(gy.cpu, x.cpu, wc, oc.mean, oc.rstd, a.b);
        NormGrads gg = layer_norm_backward(gy.gpu, x.gpu, wg, oc.mean.to(kGpu), oc.rstd.to(kGpu), a.b);
        EXPECT_CLOSE(gg.dx, gc.dx, t, n + " dx");
        if (a.w) EXPECT_CLOSE(gg.dweight, gc.dweight, t, n + " dweight");
        if (a.b) EXPECT_CLOSE(gg.dbias, gc.dbias, t, n + " dbias");
        EXPECT_EQ(gg.dweight.defined(), a.w) << n;
        EXPECT_EQ(gg.dbias.defined(), a.b) << n;
        if (a.b) continue;
        const std::string r = tag("rms_norm", dt) + sh + a.name;
        NormOut rc = rms_norm(x.cpu, wc, 1e-6), rg = rms_norm(x.gpu, wg, 1e-6);
        EXPECT_CLOSE(rg.y, rc.y, t, r + " y");
        EXPECT_CLOSE(rg.rstd, rc.rstd, t, r + " rstd");
        NormGrads hc = rms_norm_backward(gy.cpu, x.cpu, wc, rc.rstd);
        NormGrads hg = rms_norm_backward(gy.gpu, x.gpu, wg, rc.rstd.to(kGpu));
        EXPECT_CLOSE(hg.dx, hc.dx, t, r + " dx");
        if (a.w) EXPECT_CLOSE(hg.dweight, hc.dweight, t, r + " dweight");
      }
    }
    // Strided x and gy.
    Pair xt = randn({96, 37}, dt, 405).view([](const Tensor& t) { return t.transpose(0, 1); });
    Pair w = randn({96}, dt, 406);
    EXPECT_CLOSE(layer_norm(xt.gpu, w.gpu, Tensor(), 1e-5).y, layer_norm(xt.cpu, w.cpu, Tensor(), 1e-5).y,
                 long_tol(dt), tag("layer_norm strided", dt));
    EXPECT_CLOSE(rms_norm(xt.gpu, w.gpu, 1e-5).y, rms_norm(xt.cpu, w.cpu, 1e-5).y, long_tol(dt),
                 tag("rms_norm strided", dt));
  }
}

// ---- embeddings and indexing --------------------------------------------------------------------------

TEST_F(Cuda, EmbeddingForwardBackwardRepeatedIds) {
  for (DType dt : kFloatTypes) {
    for (DType it : {DType::i64, DType::i32}) {
      for (int64_t C : {67, 768, 1}) {
        const int64_t V = 50;
        Pair w = randn({V, C}, dt, 501);
        Pair id = ids({3, 41}, V, it, 502);  // 123 ids over 50 rows: repeats
        const std::string n = tag("embedding", dt) + " " + dtype_name(it) + " C " + std::to_string(C);
        EXPECT_CLOSE(embedding(w.gpu, id.gpu), embedding(w.cpu, id.cpu), kExact, n);
        Pair gy = randn({3, 41, C}, dt, 503);
        EXPECT_CLOSE(embedding_backward(gy.gpu, id.gpu, V), embedding_backward(gy.cpu, id.cpu, V), tol_for(dt),
                     n + " backward");
        // Every id the same row: the worst case for atomics.
        Pair same = to_both(Tensor::full({200}, 7.0, it));
        Pair gs = randn({200, C}, dt, 504);
        EXPECT_CLOSE(embedding_backward(gs.gpu, same.gpu, V), embedding_backward(gs.cpu, same.cpu, V), long_tol(dt),
                     n + " backward one row");
      }
    }
    // Strided ids and weight.
    Pair wt = randn({67, 50}, dt, 505).view([](const Tensor& t) { return t.transpose(0, 1); });
    Pair idt = ids({41, 3}, 50, DType::i64, 506).view([](const Tensor& t) { return t.transpose(0, 1); });
    EXPECT_CLOSE(embedding(wt.gpu, idt.gpu), embedding(wt.cpu, idt.cpu), kExact, tag("embedding strided", dt));
  }
}

TEST_F(Cuda, GatherScatterAddIndexSelectIndexAdd) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::i64}) {
    const bool fl = dt != DType::i64;
    auto vals = [&](const Shape& s, uint64_t seed) { return fl ? randn(s, dt, seed) : ids(s, 1000, dt, seed); };
    Pair x = vals({5, 7, 9}, 601);
    Pair xt = vals({9, 7, 5}, 602).view([](const Tensor& t) { return t.permute({2, 1, 0}); });
    const Tol t = fl ? tol_for(dt) : kExact;
    for (int64_t axis : {0, 1, 2, -1}) {
      const int64_t ax = axis < 0 ? axis + 3 : axis;
      const int64_t n = x.cpu.size(ax);
      for (DType it : {DType::i64, DType::i32}) {
        const std::string nm = tag("axis " + std::to_string(axis) + " index " + dtype_name(it), dt);
        // gather/scatter: index of x's rank, smaller off the axis, longer along it (repeats).
        Shape is = {4, 6, 8};
        is[ax] = 11;
        Pair index = ids(is, n, it, 603 + ax);
        EXPECT_CLOSE(gather(x.gpu, axis, index.gpu), gather(x.cpu, axis, index.cpu), kExact, "gather " + nm);
        EXPECT_CLOSE(gather(xt.gpu, axis, index.gpu), gather(xt.cpu, axis, index.cpu), kExact, "gather strided " + nm);
        Pair src = vals(is, 607 + ax);
        EXPECT_CLOSE(scatter_add(x.gpu, axis, index.gpu, src.gpu), scatter_add(x.cpu, axis, index.cpu, src.cpu), t,
                     "scatter_add " + nm);
        EXPECT_CLOSE(scatter_add(xt.gpu, axis, index.gpu, src.gpu), scatter_add(xt.cpu, axis, index.cpu, src.cpu), t,
                     "scatter_add strided x " + nm);
        // index_select / index_add: 1-D index with repeats.
        Pair idx = ids({13}, n, it, 611 + ax);
        EXPECT_CLOSE(index_select(x.gpu, axis, idx.gpu), index_select(x.cpu, axis, idx.cpu), kExact,
                     "index_select " + nm);
        EXPECT_CLOSE(index_select(xt.gpu, axis, idx.gpu), index_select(xt.cpu, axis, idx.cpu), kExact,
                     "index_select strided " + nm);
        Shape ss = x.cpu.shape();
        ss[ax] = 13;
        Pair s2 = vals(ss, 615 + ax);
        EXPECT_CLOSE(index_add(x.gpu, axis, idx.gpu, s2.gpu), index_add(x.cpu, axis, idx.cpu, s2.cpu), t,
                     "index_add " + nm);
        EXPECT_CLOSE(index_add(xt.gpu, axis, idx.gpu, s2.gpu), index_add(xt.cpu, axis, idx.cpu, s2.cpu), t,
                     "index_add strided x " + nm);
      }
    }
  }
}

TEST_F(Cuda, ConcatStackSplit) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::u8}) {
    const bool fl = is_floating(dt);
    auto vals = [&](const Shape& s, uint64_t seed) { return fl ? randn(s, dt, seed) : ids(s, 100, dt, seed); };
    Pair a = vals({3, 5, 7}, 701), b = vals({3, 2, 7}, 702);
    Pair c = vals({7, 4, 3}, 703).view([](const Tensor& t) { return t.permute({2, 1, 0}); });  // strided [3, 4, 7]
    EXPECT_CLOSE(concat({a.gpu, b.gpu, c.gpu}, 1), concat({a.cpu, b.cpu, c.cpu}, 1), kExact, tag("concat axis 1", dt));
    Pair d = vals({3, 5, 2}, 704);
    EXPECT_CLOSE(concat({a.gpu, d.gpu}, -1), concat({a.cpu, d.cpu}, -1), kExact, tag("concat axis -1", dt));
    Pair e = vals({3, 5, 7}, 705).view([](const Tensor& t) { return t; });
    for (int64_t ax : {0, 1, 3, -1}) {
      EXPECT_CLOSE(stack({a.gpu, e.gpu, a.gpu}, ax), stack({a.cpu, e.cpu, a.cpu}, ax), kExact,
                   tag("stack axis " + std::to_string(ax), dt));
    }
    auto pg = split(a.gpu, {1, 3, 0, 1}, 1), pc = split(a.cpu, {1, 3, 0, 1}, 1);
    ASSERT_EQ(pg.size(), pc.size());
    for (size_t i = 0; i < pg.size(); ++i)
      EXPECT_CLOSE(pg[i].contiguous(), pc[i].contiguous(), kExact, tag("split piece " + std::to_string(i), dt));
  }
}

// ---- cross-entropy ------------------------------------------------------------------------------------

TEST_F(Cuda, CrossEntropyForwardBackward) {
  for (DType dt : kFloatTypes) {
    for (int64_t V : {13, 1000, 50257}) {
      for (double smooth : {0.0, 0.1}) {
        for (DType it : {DType::i64, DType::i32}) {
          const int64_t N = V > 1000 ? 37 : 67;
          const std::string n = tag("cross_entropy", dt) + " V " + std::to_string(V) + " smoothing " +
                                std::to_string(smooth) + " " + dtype_name(it);
          Pair logits = randn({N, V}, dt, 801, 3.0);
          Pair tg = ids({N}, V, it, 802, /*ignore_every=*/5, /*ignore=*/-100);
          CrossEntropyOut oc = cross_entropy(logits.cpu, tg.cpu, -100, smooth);
          CrossEntropyOut og = cross_entropy(logits.gpu, tg.gpu, -100, smooth);
          const Tol t = long_tol(dt);
          EXPECT_CLOSE(og.loss, oc.loss, t, n + " loss");
          EXPECT_CLOSE(og.lse, oc.lse, t, n + " lse");
          EXPECT_CLOSE(og.count, oc.count, kExact, n + " count");
          // Backward from the CPU's lse and count, with a device grad_loss.
          Tensor gl = Tensor::scalar(0.7, oc.loss.dtype());
          Tensor dc = cross_entropy_backward(logits.cpu, tg.cpu, oc.lse, gl, oc.count, -100, smooth);
          Tensor dg = cross_entropy_backward(logits.gpu, tg.gpu, oc.lse.to(kGpu), gl.to(kGpu), oc.count.to(kGpu), -100,
                                             smooth);
          EXPECT_CLOSE(dg, dc, t, n + " dlogits");
        }
      }
    }
    // Another ignore_index, a strided logits view, and every row ignored.
    Pair lt = randn({67, 37}, dt, 803).view([](const Tensor& t) { return t.transpose(0, 1); });
    Pair tg = ids({37}, 67, DType::i64, 804, 3, 5);
    CrossEntropyOut oc = cross_entropy(lt.cpu, tg.cpu, 5, 0.05), og = cross_entropy(lt.gpu, tg.gpu, 5, 0.05);
    EXPECT_CLOSE(og.loss, oc.loss, long_tol(dt), tag("cross_entropy strided ignore 5 loss", dt));
    EXPECT_CLOSE(og.count, oc.count, kExact, tag("cross_entropy strided ignore 5 count", dt));
    EXPECT_CLOSE(cross_entropy_backward(lt.gpu, tg.gpu, og.lse, 1.0, og.count, 5, 0.05),
                 cross_entropy_backward(lt.cpu, tg.cpu, oc.lse, 1.0, oc.count, 5, 0.05), long_tol(dt),
                 tag("cross_entropy strided backward", dt));
    Pair all_ign = to_both(Tensor::full({37}, -100.0, DType::i64));
    CrossEntropyOut ac = cross_entropy(lt.cpu, all_ign.cpu), ag = cross_entropy(lt.gpu, all_ign.gpu);
    EXPECT_CLOSE(ag.count, ac.count, kExact, tag("cross_entropy all ignored count", dt));
    EXPECT_CLOSE(ag.loss, ac.loss, tol_for(ac.loss.dtype()), tag("cross_entropy all ignored loss", dt));
  }
}

// ---- rope and attention --------------------------------------------------------------------------------

TEST_F(Cuda, RopeForwardInverse) {
  for (DType dt : kFloatTypes) {
    for (int64_t D : {64, 40, 128, 2}) {
      const int64_t B = 2, H = 3, T = 37;
      Tensor c, s;
      rope_tables(T, D, 10000.0, 5, dt, c, s);
      Pair cp = to_both(c), sp = to_both(s);
      Pair x = randn({B, H, T, D}, dt, 901);
      Pair xt = randn({B, T, H, D}, dt, 902).view([](const Tensor& t) { return t.transpose(1, 2); });
      for (bool inv : {false, true}) {
        const std::string n = tag(inv ? "rope inverse" : "rope", dt) + " D " + std::to_string(D);
        EXPECT_CLOSE(rope(x.gpu, cp.gpu, sp.gpu, inv), rope(x.cpu, cp.cpu, sp.cpu, inv), tol_for(dt), n);
        EXPECT_CLOSE(rope(xt.gpu, cp.gpu, sp.gpu, inv), rope(xt.cpu, cp.cpu, sp.cpu, inv), tol_for(dt), n + " strided");
      }
    }
  }
}

struct AttnCase {
  int64_t B, H, Hkv, T, S, D;
  bool causal;
  int64_t window = 0;  // sliding window (0 = none)
};

void check_attention(DType dt, const AttnCase& c, uint64_t seed) {
  std::ostringstream nm;
  nm << "attention " << dtype_name(dt) << " B" << c.B << " H" << c.H << " Hkv" << c.Hkv << " T" << c.T << " S" << c.S
     << " D" << c.D << (c.causal ? " causal" : "") << (c.window > 0 ? " window " + std::to_string(c.window) : "");
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  Pair q = randn({c.B, c.H, c.T, c.D}, dt, seed), k = randn({c.B, c.Hkv, c.S, c.D}, dt, seed + 1),
       v = randn({c.B, c.Hkv, c.S, c.D}, dt, seed + 2), go = randn({c.B, c.H, c.T, c.D}, dt, seed + 3);
  AttentionOut oc = attention(q.cpu, k.cpu, v.cpu, c.causal, scale, c.window);
  AttentionOut og = attention(q.gpu, k.gpu, v.gpu, c.causal, scale, c.window);
  // bf16 kernels may round probabilities to bf16 before the PV product (as FlashAttention does).
  const Tol t = dt == DType::bf16 ? Tol{3e-2, 3e-2, 2e-2} : long_tol(dt);
  EXPECT_CLOSE(og.out, oc.out, t, nm.str() + " out");
  EXPECT_CLOSE(og.lse, oc.lse, long_tol(oc.lse.dtype()), nm.str() + " lse");
  // The backward from the CPU's forward, so that it is checked on its own.
  AttentionGrads gc = attention_backward(go.cpu, q.cpu, k.cpu, v.cpu, oc.out, oc.lse, c.causal, scale, c.window);
  AttentionGrads gg = attention_backward(go.gpu, q.gpu, k.gpu, v.gpu, oc.out.to(kGpu), oc.lse.to(kGpu), c.causal,
                                         scale, c.window);
  const Tol tb = dt == DType::bf16 ? Tol{5e-2, 5e-2, 3e-2} : long_tol(dt);
  EXPECT_CLOSE(gg.dq, gc.dq, tb, nm.str() + " dq");
  EXPECT_CLOSE(gg.dk, gc.dk, tb, nm.str() + " dk");
  EXPECT_CLOSE(gg.dv, gc.dv, tb, nm.str() + " dv");
}

const AttnCase kAttnCases[] = {
    {1, 2, 2, 1, 1, 64, true},      {2, 4, 2, 37, 37, 64, true},   {1, 4, 2, 37, 130, 64, true},
    {1, 2, 1, 130, 37, 128, false}, {1, 4, 2, 130, 130, 128, true}, {1, 2, 2, 257, 257, 64, true},
    {2, 4, 2, 67, 67, 40, true},    {1, 4, 4, 37, 67, 24, false},  {1, 2, 2, 37, 20, 64, true},
    {1, 4, 2, 1, 257, 128, true},   {2, 2, 2, 64, 64, 64, false},  {1, 4, 2, 257, 130, 64, false},
    // Sliding windows, not multiples of any tile (16/32/64 rows or keys), so window starts
    // fall inside tiles and whole tiles are skipped; with a cached prefix (S > T), T > S,
    // window 1, and the simt / rowwise head sizes.
    {1, 4, 2, 257, 257, 64, true, 70}, {1, 2, 2, 200, 200, 128, true, 37}, {1, 4, 2, 37, 300, 64, true, 45},
    {1, 2, 1, 130, 37, 64, true, 20},  {1, 2, 2, 100, 100, 64, true, 1},   {2, 4, 2, 150, 150, 40, true, 33},
};

TEST_F(Cuda, AttentionForwardBackwardF32) {
  uint64_t seed = 1000;
  for (const AttnCase& c : kAttnCases) check_attention(DType::f32, c, seed += 10);
}

TEST_F(Cuda, AttentionForwardBackwardBf16) {
  uint64_t seed = 2000;
  for (const AttnCase& c : kAttnCases) check_attention(DType::bf16, c, seed += 10);
}

TEST_F(Cuda, AttentionForwardBackwardF64) {
  uint64_t seed = 3000;
  for (const AttnCase& c : {AttnCase{1, 4, 2, 37, 67, 64, true}, AttnCase{1, 2, 2, 67, 37, 40, false},
                            AttnCase{1, 2, 1, 90, 90, 24, true, 17}})
    check_attention(DType::f64, c, seed += 10);
}

// One small GQA case per dtype, forward and backward: the attention test the sanitizers
// (scripts/device_check.sh) run, which are too slow for the full set of cases.
TEST_F(Cuda, AttentionSmallF32Bf16) {
  check_attention(DType::f32, {1, 4, 2, 130, 130, 64, true}, 3201);
  check_attention(DType::bf16, {1, 2, 1, 67, 37, 128, false}, 3211);
  // Sliding windows: skipped tiles and both mask edges inside tiles, under the sanitizers too.
  check_attention(DType::f32, {1, 2, 1, 130, 130, 64, true, 37}, 3221);
  check_attention(DType::bf16, {1, 2, 1, 130, 150, 64, true, 45}, 3231);
}

TEST_F(Cuda, AttentionStridedInputs) {
  // q/k/v as transposes of [B, T, H, D] (the layout a fused QKV projection produces).
  for (DType dt : {DType::f32, DType::bf16}) {
    const int64_t B = 2, H = 4, Hkv = 2, T = 67, D = 64;
    auto tr = [](const Tensor& t) { return t.transpose(1, 2); };
    Pair q = randn({B, T, H, D}, dt, 3101).view(tr), k = randn({B, T, Hkv, D}, dt, 3102).view(tr),
         v = randn({B, T, Hkv, D}, dt, 3103).view(tr);
    const double scale = 0.125;
    AttentionOut oc = attention(q.cpu, k.cpu, v.cpu, true, scale), og = attention(q.gpu, k.gpu, v.gpu, true, scale);
    EXPECT_CLOSE(og.out, oc.out, dt == DType::bf16 ? Tol{3e-2, 3e-2, 2e-2} : long_tol(dt), tag("attention strided", dt));
  }
}

// ---- dropout and AdamW ----------------------------------------------------------------------------------

TEST_F(Cuda, DropoutBitIdenticalToCpu) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    for (double p : {0.1, 0.5, 0.0, 1.0}) {
      for (int variant = 0; variant < 2; ++variant) {
        Pair x = variant == 0 ? randn({100003}, dt, 1101)
                              : randn({67, 37}, dt, 1102).view([](const Tensor& t) { return t.transpose(0, 1); });
        Generator gc(0x5eed), gg(0x5eed);
        gc.set_state(0x5eed, 12345);
        gg.set_state(0x5eed, 12345);
        DropoutOut oc = dropout(x.cpu, p, gc), og = dropout(x.gpu, p, gg);
        const std::string n = tag("dropout p " + std::to_string(p), dt) + (variant ? " strided" : "");
        EXPECT_TRUE(bits_equal(og.mask, oc.mask, n + " mask"));
        EXPECT_TRUE(bits_equal(og.y, oc.y, n + " y"));
        EXPECT_EQ(gg.offset(), gc.offset()) << n;
        // A second draw continues the stream identically.
        DropoutOut oc2 = dropout(x.cpu, p, gc), og2 = dropout(x.gpu, p, gg);
        EXPECT_TRUE(bits_equal(og2.mask, oc2.mask, n + " second mask"));
      }
    }
  }
}

TEST_F(Cuda, AdamWStep) {
  for (const Shape& s : std::vector<Shape>{{100003}, {37, 67}, {1}}) {
    Pair p = randn(s, DType::f32, 1201), g = randn(s, DType::f32, 1202, 0.1), m = randn(s, DType::f32, 1203, 0.01);
    Pair v = uniform(s, DType::f32, 1204, 0.0, 1e-3);
    for (int64_t step = 1; step <= 3; ++step) {
      adamw_step(p.cpu, g.cpu, m.cpu, v.cpu, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
      adamw_step(p.gpu, g.gpu, m.gpu, v.gpu, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
    }
    const std::string n = "adamw_step " + shape_str(s);
    EXPECT_CLOSE(p.gpu, p.cpu, tol_for(DType::f32), n + " param");
    EXPECT_CLOSE(m.gpu, m.cpu, tol_for(DType::f32), n + " m");
    EXPECT_CLOSE(v.gpu, v.cpu, tol_for(DType::f32), n + " v");
  }
  // A transposed grad view.
  Pair p = randn({37, 67}, DType::f32, 1205), m = to_both(Tensor::zeros({37, 67})), v = to_both(Tensor::zeros({37, 67}));
  Pair g = randn({67, 37}, DType::f32, 1206).view([](const Tensor& t) { return t.transpose(0, 1); });
  adamw_step(p.cpu, g.cpu, m.cpu, v.cpu, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1);
  adamw_step(p.gpu, g.gpu, m.gpu, v.gpu, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1);
  EXPECT_CLOSE(p.gpu, p.cpu, tol_for(DType::f32), "adamw_step strided grad param");
  EXPECT_CLOSE(v.gpu, v.cpu, tol_for(DType::f32), "adamw_step strided grad v");
}

// ---- copies, fills, transfers ---------------------------------------------------------------------------

// Values exact in every dtype (0..6 in halves; integers truncate the .5 the same way).
Tensor exact_values(const Shape& s, DType dt, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> v(static_cast<size_t>(shape_numel(s)));
  for (auto& x : v) x = static_cast<double>(gen.next_u32() % 13) * 0.5;
  return Tensor::from_vector<double>(v, s).to(dt);
}

TEST_F(Cuda, TransfersRoundTripEveryDtype) {
  for (DType dt : kAllTypes) {
    Tensor x = is_floating(dt) ? randn({1001, 3}, dt, 1301).cpu : exact_values({1001, 3}, dt, 1301);
    Tensor g = x.to(kGpu);
    EXPECT_EQ(g.device(), kGpu);
    EXPECT_TRUE(bits_equal(g, x, tag("to(cuda) and back", dt)));
    // A strided CPU view goes over too (made contiguous on the way).
    Tensor xt = x.transpose(0, 1);
    EXPECT_TRUE(bits_equal(xt.to(kGpu), xt, tag("strided to(cuda)", dt)));
    EXPECT_TRUE(bits_equal(g.transpose(0, 1).to(Device::cpu()), xt, tag("strided to(cpu)", dt)));
    EXPECT_TRUE(bits_equal(g.clone(), x, tag("clone on cuda", dt)));
    EXPECT_TRUE(bits_equal(g.transpose(0, 1).contiguous(), xt.contiguous(), tag("contiguous on cuda", dt)));
  }
  // Empty and 0-d tensors.
  Tensor e = Tensor::empty({0, 5}).to(kGpu);
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(Tensor::scalar(2.5).to(kGpu).item(), 2.5);
}

TEST_F(Cuda, StridedCopyBetweenEveryPairOfDtypes) {
  for (DType sd : kAllTypes) {
    for (DType dd : kAllTypes) {
      const std::string n = std::string("copy_ ") + dtype_name(sd) + " -> " + dtype_name(dd);
      // src a transposed view; dst a transposed, sliced view of a larger tensor.
      Tensor src_c = exact_values({9, 13}, sd, 1401).transpose(0, 1);  // [13, 9]
      Pair src = to_both(exact_values({9, 13}, sd, 1401)).view([](const Tensor& t) { return t.transpose(0, 1); });
      ASSERT_TRUE(bits_equal(src.cpu, src_c, n + " setup"));
      Pair dst_base = to_both(exact_values({11, 17}, dd, 1402));
      Pair dst = dst_base.view([](const Tensor& t) { return t.slice(0, 1, 10).slice(1, 2, 15).transpose(0, 1); });
      dst.cpu.copy_(src.cpu);
      dst.gpu.copy_(src.gpu);
      EXPECT_TRUE(bits_equal(dst_base.gpu, dst_base.cpu, n + " (whole destination)"));
      // Broadcast source row into a contiguous destination.
      Pair row = to_both(exact_values({1, 9}, sd, 1403));
      Pair d2 = to_both(Tensor::zeros({13, 9}, dd));
      d2.cpu.copy_(row.cpu);
      d2.gpu.copy_(row.gpu);
      EXPECT_TRUE(bits_equal(d2.gpu, d2.cpu, n + " broadcast"));
    }
  }
}

TEST_F(Cuda, ToDtypeOnDeviceMatchesCpuRounding) {
  for (DType sd : kAllTypes) {
    for (DType dd : kAllTypes) {
      const bool fl = is_floating(sd) && is_floating(dd);
      // Float-to-float: random normals (rounding to nearest even must agree); otherwise exact values.
      Tensor x = fl ? randn({4099}, sd, 1501, 3.0).cpu : exact_values({4099}, sd, 1501);
      const std::string n = std::string("to(dtype) on cuda ") + dtype_name(sd) + " -> " + dtype_name(dd);
      EXPECT_TRUE(bits_equal(x.to(kGpu).to(dd), x.to(dd), n));
    }
  }
}

TEST_F(Cuda, FillEveryDtypeContiguousAndStrided) {
  for (DType dt : kAllTypes) {
    for (double value : {0.0, 3.0, 1.5}) {
      Pair base = to_both(exact_values({37, 67}, dt, 1601));
      Pair v = base.view([](const Tensor& t) { return t.slice(1, 3, 60, 2).transpose(0, 1); });
      v.cpu.fill_(value);
      v.gpu.fill_(value);
      EXPECT_TRUE(bits_equal(base.gpu, base.cpu, tag("fill_ strided " + std::to_string(value), dt)));
      Pair whole = to_both(exact_values({100003}, dt, 1602));
      whole.cpu.fill_(value);
      whole.gpu.fill_(value);
      EXPECT_TRUE(bits_equal(whole.gpu, whole.cpu, tag("fill_ contiguous " + std::to_string(value), dt)));
    }
  }
  EXPECT_TRUE(bits_equal(Tensor::full({5, 3}, -2.25, DType::bf16, kGpu), Tensor::full({5, 3}, -2.25, DType::bf16),
                         "Tensor::full on cuda"));
  EXPECT_TRUE(bits_equal(Tensor::arange(0, 37, 1, DType::i64, kGpu), Tensor::arange(0, 37, 1, DType::i64),
                         "Tensor::arange on cuda"));
}

// ---- memory ----------------------------------------------------------------------------------------

TEST_F(Cuda, PoisonedAllocationsAreNaN) {
  SKIP_UNLESS_REAL_CUDA();
  // The check every parity test relies on: an unwritten output reads as NaN (floats) or -1.
  Tensor f = Tensor::empty({1000}, DType::f32, kGpu);
  for (double v : vec(f)) ASSERT_TRUE(std::isnan(v)) << "cuda_poison_allocations did not poison f32";
  Tensor b = Tensor::empty({1000}, DType::bf16, kGpu);
  for (double v : vec(b)) ASSERT_TRUE(std::isnan(v)) << "cuda_poison_allocations did not poison bf16";
  Tensor i = Tensor::empty({1000}, DType::i64, kGpu);
  for (double v : vec(i)) ASSERT_EQ(v, -1.0) << "cuda_poison_allocations did not poison i64";
}

TEST_F(Cuda, CachingAllocatorReusesFreedBlocksAndEmptiesCache) {
  SKIP_UNLESS_REAL_CUDA();
  synchronize(kGpu);
  cuda_empty_cache();
  EXPECT_EQ(cuda_cached_bytes(), 0u);
  const MemoryStats m0 = memory_stats(DeviceType::cuda);
  const size_t r0 = cuda_reserved_bytes();
  const int64_t big = 3 << 20, small = 1000;  // one large and one small size class
  {
    Tensor a = Tensor::empty({big}, DType::f32, kGpu);
    Tensor b = Tensor::empty({small}, DType::f32, kGpu);
    EXPECT_GE(cuda_reserved_bytes(), r0 + static_cast<size_t>(big + small) * 4);
    const MemoryStats m1 = memory_stats(DeviceType::cuda);
    EXPECT_EQ(m1.total_current - m0.total_current, (big + small) * 4) << "CUDA tensors are counted in memory_stats";
  }
  EXPECT_EQ(memory_stats(DeviceType::cuda).total_current, m0.total_current);
  const size_t r1 = cuda_reserved_bytes();
  EXPECT_GE(cuda_cached_bytes(), static_cast<size_t>(big + small) * 4);
  for (int rep = 0; rep < 20; ++rep) {
    // Same size classes (slightly smaller requests too): served from the cache.
    Tensor a = Tensor::empty({big - rep * 16}, DType::f32, kGpu);
    Tensor b = Tensor::empty({small - rep}, DType::f32, kGpu);
    a.fill_(1.0);
    b.fill_(2.0);
    EXPECT_EQ(cuda_reserved_bytes(), r1) << "repetition " << rep << ": the freed blocks were not reused";
  }
  EXPECT_LE(r1, cuda_peak_reserved_bytes());
  cuda_empty_cache();
  EXPECT_EQ(cuda_cached_bytes(), 0u);
  EXPECT_LE(cuda_reserved_bytes(), r0);
  // Still usable afterwards.
  Tensor c = Tensor::full({big}, 4.0, DType::f32, kGpu);
  EXPECT_EQ(reduce(ReduceOp::sum, c, {}).item(), 4.0 * big);
}

TEST_F(Cuda, PinnedEmpty) {
  const int64_t before = memory_stats(DeviceType::cpu).total_current;
  Tensor p = pinned_empty({1001, 7}, DType::f32);
  EXPECT_TRUE(p.device().is_cpu());
  EXPECT_EQ(p.shape(), (Shape{1001, 7}));
  EXPECT_GE(memory_stats(DeviceType::cpu).total_current - before, 1001 * 7 * 4) << "pinned memory is counted";
  Tensor x = randn({1001, 7}, DType::f32, 1701).cpu;
  p.copy_(x);
  Tensor g = p.to(kGpu);
  EXPECT_TRUE(bits_equal(g, x, "pinned -> cuda"));
  Tensor back = pinned_empty({1001, 7}, DType::f32);
  back.copy_(affine(g, 2.0, 0.0).to(Device::cpu()));
  EXPECT_TRUE(bits_equal(back.to(kGpu), affine(x, 2.0, 0.0), "cuda -> pinned"));
}

// ---- autograd end to end: a tiny GPT on both devices -----------------------------------------------------

models::ModelSpec tiny_spec(models::Arch arch) {
  models::ModelSpec s;
  s.arch = arch;
  s.vocab_size = 67;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = arch == models::Arch::llama ? 2 : 0;
  s.d_model = 64;
  s.max_seq_len = 64;
  s.bias = arch == models::Arch::gpt2;
  s.dropout = 0.0;
  return s;
}

// AdamW on every parameter with its state on the parameter's device (kernels::adamw_step).
struct TinyAdamW {
  std::vector<Tensor> m, v;
  int64_t step = 0;
  void apply(models::CausalLM& model, double lr) {
    auto params = model.parameters();
    if (m.empty()) {
      for (const Tensor& p : params) {
        m.push_back(Tensor::zeros(p.shape(), DType::f32, p.device()));
        v.push_back(Tensor::zeros(p.shape(), DType::f32, p.device()));
      }
    }
    ++step;
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = params[i].grad();
      if (!g.defined()) continue;
      adamw_step(params[i], g.to(DType::f32), m[i], v[i], lr, 0.9, 0.95, 1e-8, params[i].dim() >= 2 ? 0.1 : 0.0,
                 step);
    }
    model.zero_grad();
  }
};

// The key projection's bias adds the same q.b to every score of a query's row, which the
// softmax ignores: its true gradient is exactly zero, so both devices hold rounding noise
// (~1e-12 in f32) that no relative comparison can match. Such a gradient is checked to be
// negligible against the model's gradient scale instead.
bool zero_true_grad(const std::string& name) {
  const std::string suf = "k_proj.bias";
  return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
}
double grad_rms(const std::vector<std::pair<std::string, Tensor>>& ps) {
  double ss = 0;
  int64_t n = 0;
  for (const auto& [name, p] : ps) {
    if (!p.grad().defined()) continue;
    for (double v : p.grad().to_vector<double>()) ss += v * v;
    n += p.numel();
  }
  return n ? std::sqrt(ss / static_cast<double>(n)) : 0.0;
}
void expect_negligible(const Tensor& g, double scale, const std::string& what) {
  double m = 0;
  for (double v : g.to_vector<double>()) m = std::max(m, std::abs(v));
  EXPECT_LT(m, 1e-2 * scale) << what << ": a gradient that is zero in exact arithmetic is " << m
                             << " against a model gradient rms of " << scale;
}

void check_tiny_model(models::Arch arch) {
  const models::ModelSpec spec = tiny_spec(arch);
  auto cpu = models::build_model(spec, 7);
  auto gpu = models::build_model(spec, 7);
  gpu->to(kGpu);
  ASSERT_EQ(gpu->device(), kGpu);
  const std::string an = models::arch_name(arch);
  Pair id = ids({3, 37}, spec.vocab_size, DType::i64, 1801);
  Pair tg = ids({3, 37}, spec.vocab_size, DType::i64, 1802, 7, -100);
  TinyAdamW oc, og;
  for (int step = 0; step < 5; ++step) {
    Tensor lc = cpu->loss(id.cpu, tg.cpu), lg = gpu->loss(id.gpu, tg.gpu);
    const double vc = lc.item(), vg = lg.item();
    // The first loss is the same computation; later ones follow the same curve.
    EXPECT_NEAR(vg, vc, (step == 0 ? 1e-4 : 1e-3) * std::abs(vc)) << an << " loss at step " << step;
    lc.backward();
    lg.backward();
    if (step == 0) {
      auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
      ASSERT_EQ(pc.size(), pg.size());
      for (size_t i = 0; i < pc.size(); ++i) {
        ASSERT_TRUE(pg[i].second.grad().defined()) << an << " no gradient for " << pg[i].first;
        if (zero_true_grad(pc[i].first)) {
          expect_negligible(pg[i].second.grad(), grad_rms(pc), an + " grad " + pc[i].first);
          continue;
        }
        EXPECT_CLOSE(pg[i].second.grad(), pc[i].second.grad(), (Tol{1e-3, 1e-4, 1e-4}), an + " grad " + pc[i].first);
      }
    }
    oc.apply(*cpu, 1e-2);
    og.apply(*gpu, 1e-2);
  }
}

TEST_F(Cuda, TinyGpt2LossGradientsAndAdamWCurve) { check_tiny_model(models::Arch::gpt2); }
TEST_F(Cuda, TinyLlamaLossGradientsAndAdamWCurve) { check_tiny_model(models::Arch::llama); }

// bf16 weights and activations on both devices (a model cast with Module::to(bf16)): the
// CUDA loss and gradients follow the CPU's within bf16 rounding.
TEST_F(Cuda, TinyGpt2Bf16MatchesCpuBf16) {
  const models::ModelSpec spec = tiny_spec(models::Arch::gpt2);
  auto cpu = models::build_model(spec, 9);
  auto gpu = models::build_model(spec, 9);
  cpu->to(DType::bf16);
  gpu->to(kGpu);
  gpu->to(DType::bf16);
  Pair id = ids({2, 33}, spec.vocab_size, DType::i64, 1901);
  Pair tg = ids({2, 33}, spec.vocab_size, DType::i64, 1902);
  Tensor lc = cpu->loss(id.cpu, tg.cpu), lg = gpu->loss(id.gpu, tg.gpu);
  EXPECT_NEAR(lg.item(), lc.item(), 2e-2 * std::abs(lc.item())) << "bf16 loss";
  lc.backward();
  lg.backward();
  auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_TRUE(pg[i].second.grad().defined()) << pg[i].first;
    // Norm-relative only: individual bf16 gradient elements may differ by a rounding step.
    if (zero_true_grad(pc[i].first)) {
          expect_negligible(pg[i].second.grad(), grad_rms(pc), "bf16 grad " + pc[i].first);
          continue;
        }
        EXPECT_CLOSE(pg[i].second.grad(), pc[i].second.grad(), (Tol{1e30, 1e30, 1e-1}), "bf16 grad " + pc[i].first);
  }
}

#ifdef LATHE_TEST_HAS_AUTOCAST
// bf16 autocast (f32 master weights, bf16 compute) on CUDA: against the same autocast run on
// the CPU at step 0 (loss and every gradient), and against the plain f32 CPU run's loss curve
// over a few AdamW steps within bf16 tolerance.
TEST_F(Cuda, TinyGpt2AutocastBf16FollowsCpu) {
  const models::ModelSpec spec = tiny_spec(models::Arch::gpt2);
  auto ref = models::build_model(spec, 11);  // CPU, f32, no autocast
  auto cpu = models::build_model(spec, 11);  // CPU, autocast
  auto gpu = models::build_model(spec, 11);  // CUDA, autocast
  gpu->to(kGpu);
  Pair id = ids({3, 37}, spec.vocab_size, DType::i64, 2001);
  Pair tg = ids({3, 37}, spec.vocab_size, DType::i64, 2002, 9, -100);
  TinyAdamW o_ref, o_cpu, o_gpu;
  for (int step = 0; step < 5; ++step) {
    Tensor lr_ = ref->loss(id.cpu, tg.cpu), lc, lg;
    {
      models::Autocast ac(DType::bf16);
      lc = cpu->loss(id.cpu, tg.cpu);
      lg = gpu->loss(id.gpu, tg.gpu);
    }
    EXPECT_EQ(lg.dtype(), DType::f32) << "the loss stays f32 under autocast";
    const double vr = lr_.item(), vc = lc.item(), vg = lg.item();
    EXPECT_NEAR(vg, vr, 2e-2 * std::abs(vr)) << "autocast loss vs f32 at step " << step;
    if (step == 0) {
      EXPECT_NEAR(vg, vc, 1e-2 * std::abs(vc)) << "autocast loss vs CPU autocast";
    }
    lr_.backward();
    lc.backward();
    lg.backward();
    if (step == 0) {
      auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
      for (size_t i = 0; i < pc.size(); ++i) {
        ASSERT_TRUE(pg[i].second.grad().defined()) << pg[i].first;
        EXPECT_EQ(pg[i].second.grad().dtype(), DType::f32) << "gradients of f32 masters stay f32: " << pg[i].first;
        if (zero_true_grad(pc[i].first)) {
          expect_negligible(pg[i].second.grad(), grad_rms(pc), "autocast grad " + pc[i].first);
          continue;
        }
        EXPECT_CLOSE(pg[i].second.grad(), pc[i].second.grad(), (Tol{1e30, 1e30, 5e-2}), "autocast grad " + pc[i].first);
      }
    }
    o_ref.apply(*ref, 1e-2);
    o_cpu.apply(*cpu, 1e-2);
    o_gpu.apply(*gpu, 1e-2);
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  g_has_cuda = lathe::kernels::cuda_device_count() > 0;
#ifdef LATHE_PARITY_SELFTEST_ON_CPU
  g_has_cuda = true;
#endif
  if (g_has_cuda) {
    lathe::kernels::cuda_poison_allocations(true);
    return RUN_ALL_TESTS();
  }
  // Without a GPU: one line instead of a SKIPPED report per test.
  const bool listing = ::testing::GTEST_FLAG(list_tests);
  if (!listing) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  if (!listing) {
    std::printf("test_cuda_parity: no CUDA device; %d tests skipped\n",
                ::testing::UnitTest::GetInstance()->skipped_test_count());
  }
  return rc;
}
