// Reductions against a reference loop over the reduced elements (reference.h), on every
// available device, for every op, several axis sets with and without keepdim, on strided
// views; plus the long (chunked) and columnwise code paths, argmax ties, integer sums, bf16
// rounding, sum_to_shape; errors on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "core/tensor.h"
#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe;
using namespace lathe::kernels;

using namespace lathe::kernel_test;

namespace {

const char* name_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
    case ReduceOp::argmax: return "argmax";
    case ReduceOp::var: return "var";
    case ReduceOp::norm: return "norm";
  }
  return "?";
}

// Reduces x (a CPU tensor) on `dev` (with x's layout) and compares with ref_reduce.
void check_reduce(Device dev, ReduceOp op, const Tensor& x, std::vector<int64_t> axes, bool keepdim,
                  int64_t correction, double tol) {
  std::string what = std::string(name_of(op)) + " axes " + shape_str(axes) + (keepdim ? " keepdim" : "") + " " +
                     dtype_name(x.dtype()) + " x " + x.shape_str() + " on " + dev.str();
  Tensor yd = reduce(op, to_device_keep_layout(x, dev), axes, keepdim, correction);
  ASSERT_EQ(yd.device(), dev) << what;
  Tensor y = yd.to(Device::cpu());
  std::vector<int64_t> norm_axes;
  if (axes.empty())
    for (int64_t d = 0; d < x.dim(); ++d) norm_axes.push_back(d);
  for (int64_t a : axes) norm_axes.push_back(a < 0 ? a + x.dim() : a);
  Shape keep = x.shape(), flat;
  for (int64_t a : norm_axes) keep[a] = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (std::find(norm_axes.begin(), norm_axes.end(), d) == norm_axes.end()) flat.push_back(x.size(d));
  ASSERT_EQ(y.shape(), keepdim ? keep : flat) << what;
  Tensor yk = y.reshape(keep);
  int bad = 0;
  for_each_index(keep, [&](const std::vector<int64_t>& oi) {
    double r = ref_reduce(op, x, norm_axes, oi, correction), v = yk.at(oi);
    if (!(std::abs(v - r) <= tol * std::max(1.0, std::abs(r))) && bad++ < 3)
      ADD_FAILURE() << what << " at " << shape_str(oi) << ": got " << v << " want " << r;
  });
}

}  // namespace

LATHE_DEVICE_TEST_SUITE(Reduce);

TEST_P(Reduce, AllOpsAxesKeepdimStrided) {
  const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::var, ReduceOp::norm};
  const std::vector<std::vector<int64_t>> axis_sets = {{}, {0}, {1}, {2}, {-1}, {0, 2}, {0, 1}, {1, 2}, {2, 0, 1}};
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(1);
    Tensor c = Tensor::randn({4, 3, 5}, g, dt);
    Tensor t = Tensor::randn({5, 3, 4}, g, dt).permute({2, 1, 0});  // [4, 3, 5] non-contiguous
    Tensor wide = Tensor::randn({3, 4, 20}, g, dt).slice(2, 0, 20, 2);  // last dim kept stride 2
    Tensor cols = Tensor::randn({3, 4, 12}, g, dt);                     // last dim stride 1, size >= 8
    const double tl = tol(dt, dt == DType::f64 ? 1e-12 : 2e-6);
    for (const Tensor& x : {c, t, wide, cols})
      for (ReduceOp op : ops)
        for (const auto& axes : axis_sets)
          for (bool keep : {false, true}) check_reduce(dev(), op, x, axes, keep, 1, tl);
    for (const Tensor& x : {c, cols}) {
      check_reduce(dev(), ReduceOp::var, x, {0, 1}, false, 0, tl);
      check_reduce(dev(), ReduceOp::var, x, {2}, true, 0, tl);
    }
    for (const Tensor& x : {t, cols})
      for (int64_t a : {0, 1, 2, -1})
        for (bool keep : {false, true}) check_reduce(dev(), ReduceOp::argmax, x, {a}, keep, 1, 0.0);
  }
}

TEST_P(Reduce, LongReductionsUseChunksDeterministically) {
  Generator g(2);
  // 2 rows of 50000: each row is cut into partial states that are merged in order
  Tensor x = Tensor::randn({2, 50000}, g, DType::f32);
  x.select(0, 1).narrow(0, 41000, 1).fill_(9.0);  // max in a late chunk
  x.select(0, 1).narrow(0, 45000, 1).fill_(9.0);  // a later tie
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::var, ReduceOp::norm,
                      ReduceOp::argmax})
    check_reduce(dev(), op, x, {1}, false, 1, op == ReduceOp::argmax ? 0.0 : tol(DType::f32, 1e-6));
  EXPECT_EQ(back(reduce(ReduceOp::argmax, on(x), {1})).at({1}), 41000);
  check_reduce(dev(), ReduceOp::sum, x, {}, false, 1, tol(DType::f32, 1e-6));
  check_reduce(dev(), ReduceOp::var, x.transpose(0, 1), {0, 1}, true, 1, tol(DType::f32, 1e-6));
  // columnwise path with many rows: [20000, 9] over axis 0
  Tensor c = Tensor::randn({20000, 9}, g, DType::f64);
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::var, ReduceOp::argmax, ReduceOp::min})
    check_reduce(dev(), op, c, {0}, false, 1, op == ReduceOp::argmax ? 0.0 : tol(DType::f64, 1e-11));
}

TEST_P(Reduce, ArgmaxTiesPickFirst) {
  auto argmax = [&](const Tensor& x, int64_t axis) {
    return back(reduce(ReduceOp::argmax, on(x), {axis})).to_vector<int64_t>();
  };
  Tensor x = Tensor::from_vector<float>({1, 3, 3, 2, 5, 5, 5, 0, -1, -1, -1, -1}, {3, 4});
  EXPECT_EQ(argmax(x, 1), (std::vector<int64_t>{1, 0, 0}));
  EXPECT_EQ(argmax(x, 0), (std::vector<int64_t>{1, 1, 1, 0}));
  Tensor cols = Tensor::from_vector<double>({4, 1, 7, 4, 1, 7, 2, 1, 7}, {3, 3});  // ties down every column
  EXPECT_EQ(argmax(cols, 0), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(argmax(cols.transpose(0, 1), 1), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(reduce(ReduceOp::argmax, on(x), {1}).dtype(), DType::i64);
  Tensor ninf = Tensor::full({3}, -std::numeric_limits<double>::infinity());
  EXPECT_EQ(back(reduce(ReduceOp::argmax, on(ninf), {0})).item(), 0);
}

TEST_P(Reduce, IntegerAndBf16) {
  Tensor m = Tensor::from_vector<uint8_t>({1, 0, 1, 1, 1, 0}, {2, 3});
  Tensor s = back(reduce(ReduceOp::sum, on(m), {}));
  EXPECT_EQ(s.dtype(), DType::i64);
  EXPECT_EQ(s.item(), 4);
  Tensor i = Tensor::from_vector<int32_t>({4, -7, 2, 9, 9, 1}, {2, 3});
  EXPECT_EQ(back(reduce(ReduceOp::max, on(i), {1})).to_vector<int64_t>(), (std::vector<int64_t>{4, 9}));
  EXPECT_EQ(back(reduce(ReduceOp::min, on(i), {0})).to_vector<int64_t>(), (std::vector<int64_t>{4, -7, 1}));
  EXPECT_EQ(back(reduce(ReduceOp::argmax, on(i), {1})).to_vector<int64_t>(), (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(reduce(ReduceOp::max, on(i), {1}).dtype(), DType::i32);
  // bf16: accumulated wide, rounded once
  Generator g(4);
  Tensor b = Tensor::randn({5, 37}, g, DType::bf16);
  Tensor bs = back(reduce(ReduceOp::sum, on(b), {1}));
  Tensor bm = back(reduce(ReduceOp::mean, on(b), {1}));
  ASSERT_EQ(bs.dtype(), DType::bf16);
  for (int64_t r = 0; r < 5; ++r) {
    double acc = 0;
    for (int64_t c = 0; c < 37; ++c) acc += b.at({r, c});
    if (on_cpu()) {
      EXPECT_EQ(bs.data<bf16_t>()[r].bits, float_to_bf16(static_cast<float>(acc)).bits);
      EXPECT_EQ(bm.data<bf16_t>()[r].bits, float_to_bf16(static_cast<float>(acc / 37)).bits);
    } else {  // another summation order in f32 may round to the neighbouring bf16 value
      EXPECT_LE(std::abs(int{bs.data<bf16_t>()[r].bits} - int{float_to_bf16(static_cast<float>(acc)).bits}), 1);
      EXPECT_LE(std::abs(int{bm.data<bf16_t>()[r].bits} - int{float_to_bf16(static_cast<float>(acc / 37)).bits}), 1);
    }
  }
}

TEST_P(Reduce, VarEdgeCases) {
  Tensor one = Tensor::from_vector<double>({3.0}, {1});
  EXPECT_TRUE(std::isnan(back(reduce(ReduceOp::var, on(one), {0})).item()));  // n - correction = 0
  EXPECT_EQ(back(reduce(ReduceOp::var, on(one), {0}, false, 0)).item(), 0.0);
  Tensor z = Tensor::zeros({0, 3});
  EXPECT_EQ(back(reduce(ReduceOp::sum, on(z), {0})).to_vector<float>(), (std::vector<float>{0, 0, 0}));
  Tensor sc = Tensor::scalar(2.5);
  EXPECT_EQ(back(reduce(ReduceOp::sum, on(sc), {})).item(), 2.5);
}

TEST(ReduceCpu, EmptyMaxErrors) {
  Tensor z = Tensor::zeros({0, 3});
  std::string e = error_of([&] { reduce(ReduceOp::max, z, {0}); });
  EXPECT_TRUE(has(e, "reduce(max)") && has(e, "[0, 3]")) << e;
}

TEST(ReduceCpu, Errors) {
  Tensor x = Tensor::zeros({2, 3});
  std::string e = error_of([&] { reduce(ReduceOp::sum, x, {2}); });
  EXPECT_TRUE(has(e, "reduce(sum)") && has(e, "axis 2") && has(e, "[2, 3]")) << e;
  e = error_of([&] { reduce(ReduceOp::sum, x, {-3}); });
  EXPECT_TRUE(has(e, "reduce(sum)") && has(e, "-3")) << e;
  e = error_of([&] { reduce(ReduceOp::mean, x, {0, 0}); });
  EXPECT_TRUE(has(e, "repeated")) << e;
  e = error_of([&] { reduce(ReduceOp::argmax, x, {0, 1}); });
  EXPECT_TRUE(has(e, "reduce(argmax)") && has(e, "exactly one axis")) << e;
  e = error_of([&] { reduce(ReduceOp::mean, Tensor::zeros({2}, DType::i64), {}); });
  EXPECT_TRUE(has(e, "reduce(mean)") && has(e, "i64")) << e;
}

LATHE_DEVICE_TEST_SUITE(SumToShape);

TEST_P(SumToShape, InvertsBroadcasting) {
  Generator g(6);
  Tensor x = Tensor::randn({2, 3, 4}, g, DType::f64).transpose(0, 2).transpose(1, 2);  // [4, 2, 3] strided
  Tensor xd = on(x);
  struct Case {
    Shape to;
    std::vector<int64_t> axes;
  };
  for (const Case& c : {Case{{2, 1}, {0, 2}}, Case{{3}, {0, 1}}, Case{{4, 1, 3}, {1}}, Case{{1}, {0, 1, 2}},
                        Case{{}, {0, 1, 2}}}) {
    Tensor s = back(sum_to_shape(xd, c.to));
    ASSERT_EQ(s.shape(), c.to);
    // against ref_reduce of the CPU input (a sum over the axes that broadcasting added)
    Shape keep = x.shape();
    for (int64_t a : c.axes) keep[a] = 1;
    std::vector<double> want;
    for_each_index(keep, [&](const std::vector<int64_t>& oi) { want.push_back(ref_reduce(ReduceOp::sum, x, c.axes, oi, 0)); });
    auto a = s.to_vector<double>();
    ASSERT_EQ(a.size(), want.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], want[i], 1e-12);
  }
  // broadcast then sum back: every element counted once per copy
  Tensor v = Tensor::from_vector<float>({1, 2, 3}, {3});
  EXPECT_EQ(back(sum_to_shape(on(v).expand({5, 3}), {1, 3})).to_vector<float>(), (std::vector<float>{5, 10, 15}));
  EXPECT_TRUE(sum_to_shape(xd, xd.shape()).is_same(xd));
}

TEST(SumToShapeCpu, Errors) {
  Generator g(6);
  Tensor x = Tensor::randn({2, 3, 4}, g, DType::f64).transpose(0, 2).transpose(1, 2);  // [4, 2, 3]
  std::string e = error_of([&] { sum_to_shape(x, {5}); });
  EXPECT_TRUE(has(e, "sum_to_shape") && has(e, "[4, 2, 3]") && has(e, "[5]")) << e;
}
