// Indexing ops on every available device against the reference loops of reference.h
// (gather, scatter_add, index_select, index_add, with duplicates, strided inputs and
// i64/i32 indices) and the copying shape ops concat / stack / split; out-of-range indices
// and other errors on the CPU.
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

Tensor rand_index(const Shape& shape, int64_t n, uint64_t seed, DType dt) {
  Generator g(seed);
  std::vector<int64_t> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = static_cast<int64_t>(g.next_u32() % static_cast<uint32_t>(n));
  return Tensor::from_vector(v, shape).to(dt);
}

void expect_equal(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  auto g = got.to_vector<double>(), w = want.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], w[i], tol * std::max(1.0, std::abs(w[i]))) << what << " @" << i;
}

}  // namespace

LATHE_DEVICE_TEST_SUITE(Gather);
LATHE_DEVICE_TEST_SUITE(ScatterAdd);
LATHE_DEVICE_TEST_SUITE(IndexSelect);
LATHE_DEVICE_TEST_SUITE(IndexAdd);
LATHE_DEVICE_TEST_SUITE(ConcatStackSplit);

TEST_P(Gather, MatchesReference) {
  for (DType dt : {DType::f64, DType::f32, DType::i64})
    for (DType it : {DType::i64, DType::i32})
      for (int64_t axis : {0, 1, 2, -1}) {
        Generator g(1);
        Tensor x = Tensor::randn({6, 5, 4}, g, DType::f64).to(dt).permute({1, 2, 0});  // [5, 4, 6] strided
        int64_t ax = axis < 0 ? axis + 3 : axis;
        Shape is{4, 3, 5};  // fits inside x off the axis
        Tensor index = rand_index(is, x.size(ax), 7 + ax, it);
        Tensor y = back(gather(on(x), axis, on(index)));
        expect_equal(y, ref_gather(x, ax, index).to(dt), 0.0, "gather");
      }
  // a transposed (strided) index
  Tensor x = Tensor::arange(0, 12, 1, DType::f32).view({3, 4});
  Tensor idx = Tensor::from_vector<int64_t>({2, 0, 1, 1, 0, 2}, {2, 3}).transpose(0, 1);  // [[2,1],[0,0],[1,2]]
  EXPECT_EQ(back(gather(on(x), 0, on(idx))).to_vector<float>(), (std::vector<float>{8, 5, 0, 1, 4, 9}));
}

TEST_P(ScatterAdd, DuplicatesAccumulate) {
  for (DType dt : {DType::f64, DType::f32})
    for (int64_t axis : {0, 1}) {
      Generator g(2);
      Tensor x = Tensor::randn({4, 5}, g, dt);
      Tensor x0 = x.clone();
      Tensor src_full = Tensor::randn({6, 5}, g, dt).transpose(0, 1);  // [5, 6] strided
      // axis 0: src [3, 5] (fewer rows than x); axis 1: src [4, 6] (more columns than x)
      Tensor src = axis == 0 ? src_full.narrow(0, 0, 3).narrow(1, 0, 5) : src_full.narrow(0, 0, 4);
      Tensor index = rand_index(src.shape(), x.size(axis), 3, DType::i64);
      Tensor xd = on(x);
      Tensor y = back(scatter_add(xd, axis, on(index), on(src)));
      expect_equal(y, ref_scatter_add(x, axis, index, src).to(dt), tol(dt, dt == DType::f64 ? 1e-14 : 1e-6),
                   "scatter_add");
      expect_equal(back(xd), x0, 0.0, "scatter_add leaves x alone");
    }
  Tensor x = on(Tensor::zeros({3}));
  Tensor y = back(scatter_add(x, 0, on(Tensor::from_vector<int32_t>({1, 1, 1, 2}, {4})),
                              on(Tensor::from_vector<float>({1, 2, 3, 4}, {4}))));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{0, 6, 4}));
  EXPECT_EQ(x.to_vector<float>(), (std::vector<float>{0, 0, 0}));
}

TEST_P(IndexSelect, MatchesReference) {
  for (DType dt : {DType::f64, DType::f32, DType::bf16})
    for (int64_t axis : {0, 1, 2}) {
      Generator g(4);
      Tensor x = Tensor::randn({5, 6, 7}, g, DType::f64).to(dt).transpose(0, 2);  // [7, 6, 5] strided
      Tensor index = Tensor::from_vector<int64_t>({4, 0, 4, 2, 1}, {5});
      Tensor y = back(index_select(on(x), axis, on(index)));
      Shape s = x.shape();
      s[axis] = 5;
      ASSERT_EQ(y.shape(), s);
      for_each_index(s, [&](const auto& i) {
        std::vector<int64_t> src = i;
        src[axis] = static_cast<int64_t>(index.at({i[axis]}));
        ASSERT_EQ(y.at(i), x.at(src));
      });
    }
  // big rows: the memcpy path, checked against the narrow views
  Generator g(5);
  Tensor w = Tensor::randn({50, 300}, g, DType::f32);
  Tensor ids = rand_index({4000}, 50, 9, DType::i32);
  Tensor e = back(index_select(on(w), 0, on(ids)));
  for (int64_t r = 0; r < 4000; r += 333) expect_equal(e.select(0, r), w.select(0, static_cast<int64_t>(ids.at({r}))), 0, "row");
}

TEST_P(IndexAdd, DuplicatesAccumulateDeterministically) {
  for (DType dt : {DType::f64, DType::f32})
    for (int64_t axis : {0, 1}) {
      Generator g(6);
      Tensor x = Tensor::randn({5, 4}, g, dt);
      Tensor index = Tensor::from_vector<int64_t>({1, 3, 1, 0, 1, 3, 2}, {7});
      Shape ss = x.shape();
      ss[axis] = 7;
      Tensor src = Tensor::randn({ss[1], ss[0]}, g, dt).transpose(0, 1);  // strided
      Tensor y = back(index_add(on(x), axis, on(index), on(src)));
      expect_equal(y, ref_index_add(x, axis, index, src).to(dt), tol(dt, dt == DType::f64 ? 1e-14 : 1e-6),
                   "index_add");
    }
  // large: rows added in index order in parallel over columns; same result every time
  Generator g(7);
  Tensor src = Tensor::randn({3000, 64}, g, DType::f32);
  Tensor index = rand_index({3000}, 20, 11, DType::i64);
  Tensor x = Tensor::zeros({20, 64});
  Tensor y1 = back(index_add(on(x), 0, on(index), on(src))), y2 = back(index_add(on(x), 0, on(index), on(src)));
  EXPECT_EQ(y1.to_vector<float>(), y2.to_vector<float>());
  auto want = ref_index_add(x, 0, index, src).to_vector<double>();
  auto got = y1.to_vector<float>();
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4);
}

TEST_P(IndexAdd, Bf16RoundsEachAdd) {
  Tensor x = Tensor::from_vector<float>({1.0f}, {1, 1}).to(DType::bf16);
  Tensor src = Tensor::from_vector<float>({0.00390625f, 0.00390625f}, {2, 1}).to(DType::bf16);  // 2^-8 each
  Tensor y = back(index_add(on(x), 0, on(Tensor::from_vector<int64_t>({0, 0}, {2})), on(src)));
  // 1 + 2^-8 rounds to 1 in bf16 (ties to even), twice; one rounding of the sum would give 1 + 2^-7
  float r = bf16_to_float(float_to_bf16(bf16_to_float(float_to_bf16(1.0f + 0.00390625f)) + 0.00390625f));
  EXPECT_EQ(y.item(), r);
  EXPECT_EQ(r, 1.0f);
}

TEST(IndexingCpu, OutOfRangeIndicesThrow) {
  Tensor x = Tensor::zeros({5, 3});
  std::string e = error_of([&] { gather(x, 0, Tensor::from_vector<int64_t>({0, 5, 1}, {1, 3})); });
  EXPECT_TRUE(has(e, "gather") && has(e, "index 5") && has(e, "[0, 5)") && has(e, "[5, 3]")) << e;
  e = error_of([&] { gather(x, 1, Tensor::from_vector<int32_t>({-1}, {1, 1})); });
  EXPECT_TRUE(has(e, "gather") && has(e, "index -1") && has(e, "[0, 3)")) << e;
  e = error_of([&] { index_select(x, 0, Tensor::from_vector<int64_t>({2, 7}, {2})); });
  EXPECT_TRUE(has(e, "index_select") && has(e, "index 7") && has(e, "[0, 5)")) << e;
  e = error_of([&] { scatter_add(x, 1, Tensor::from_vector<int64_t>({3}, {1, 1}), Tensor::ones({1, 1})); });
  EXPECT_TRUE(has(e, "scatter_add") && has(e, "index 3") && has(e, "[0, 3)")) << e;
  e = error_of([&] { index_add(x, 0, Tensor::from_vector<int64_t>({9}, {1}), Tensor::ones({1, 3})); });
  EXPECT_TRUE(has(e, "index_add") && has(e, "index 9") && has(e, "[0, 5)")) << e;
  // shape and dtype rules
  e = error_of([&] { gather(x, 0, Tensor::from_vector<int64_t>({0}, {1})); });
  EXPECT_TRUE(has(e, "gather") && has(e, "[1]") && has(e, "[5, 3]")) << e;
  e = error_of([&] { gather(x, 2, Tensor::zeros({1, 1}, DType::i64)); });
  EXPECT_TRUE(has(e, "gather") && has(e, "axis 2")) << e;
  e = error_of([&] { index_select(x, 0, Tensor::zeros({1}, DType::f32)); });
  EXPECT_TRUE(has(e, "index_select") && has(e, "i64 or i32")) << e;
  e = error_of([&] { index_add(x, 0, Tensor::zeros({2}, DType::i64), Tensor::ones({2, 4})); });
  EXPECT_TRUE(has(e, "index_add") && has(e, "[2, 4]")) << e;
  e = error_of([&] { scatter_add(x, 0, Tensor::zeros({1, 3}, DType::i64), Tensor::ones({1, 3}, DType::f64)); });
  EXPECT_TRUE(has(e, "scatter_add") && has(e, "f64")) << e;
}

TEST_P(ConcatStackSplit, ValuesAndShapes) {
  Generator g(8);
  Tensor a = Tensor::randn({2, 3}, g, DType::f64);
  Tensor b = Tensor::randn({4, 2}, g, DType::f64).transpose(0, 1);  // [2, 4] strided
  Tensor c = back(concat({on(a), on(b)}, -1));
  ASSERT_EQ(c.shape(), (Shape{2, 7}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 7; ++j) EXPECT_EQ(c.at({i, j}), j < 3 ? a.at({i, j}) : b.at({i, j - 3}));
  Tensor d = back(concat({on(a), on(a).narrow(0, 1, 1)}, 0));
  ASSERT_EQ(d.shape(), (Shape{3, 3}));
  EXPECT_EQ(d.at({2, 1}), a.at({1, 1}));
  // stack on a new middle axis
  Tensor a2 = Tensor::randn({3, 2}, g, DType::f64).transpose(0, 1);
  Tensor st = back(stack({on(a), on(a2), on(a)}, 1));
  ASSERT_EQ(st.shape(), (Shape{2, 3, 3}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(st.at({i, 0, j}), a.at({i, j}));
      EXPECT_EQ(st.at({i, 1, j}), a2.at({i, j}));
      EXPECT_EQ(st.at({i, 2, j}), a.at({i, j}));
    }
  EXPECT_EQ(stack({on(a), on(a2)}, -1).shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(back(stack({on(a), on(a2)}, 0)).at({1, 1, 2}), a2.at({1, 2}));
  // split gives views that cover x in order
  Tensor x = on(Tensor::arange(0, 24, 1, DType::f32).view({4, 6}));
  auto parts = split(x, {1, 0, 5}, 1);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].shape(), (Shape{4, 1}));
  EXPECT_EQ(parts[1].shape(), (Shape{4, 0}));
  EXPECT_EQ(parts[2].shape(), (Shape{4, 5}));
  EXPECT_EQ(back(parts[2]).at({3, 0}), 19.0);
  EXPECT_EQ(parts[2].storage(), x.storage());
  EXPECT_EQ(back(concat(parts, 1)).to_vector<float>(), x.to_vector<float>());
  // integer dtypes copy exactly
  Tensor ids = on(Tensor::from_vector<int64_t>({1, 2, 3}, {3}));
  EXPECT_EQ(back(concat({ids, ids}, 0)).to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 3, 1, 2, 3}));
}

TEST(ConcatStackSplitCpu, Errors) {
  std::string e = error_of([] { concat({Tensor::zeros({2, 3}), Tensor::zeros({3, 3})}, 1); });
  EXPECT_TRUE(has(e, "concat") && has(e, "[2, 3]") && has(e, "[3, 3]")) << e;
  e = error_of([] { concat({Tensor::zeros({2, 3}), Tensor::zeros({2, 3}, DType::f64)}, 0); });
  EXPECT_TRUE(has(e, "concat") && has(e, "f64")) << e;
  e = error_of([] { concat({Tensor::zeros({2, 3})}, 2); });
  EXPECT_TRUE(has(e, "concat") && has(e, "axis 2") && has(e, "[2, 3]")) << e;
  e = error_of([] { stack({Tensor::zeros({2, 3}), Tensor::zeros({3, 2})}, 0); });
  EXPECT_TRUE(has(e, "stack") && has(e, "[3, 2]")) << e;
  e = error_of([] { split(Tensor::zeros({4, 6}), {2, 3}, 1); });
  EXPECT_TRUE(has(e, "split") && has(e, "[4, 6]") && has(e, "sum to 5")) << e;
}
