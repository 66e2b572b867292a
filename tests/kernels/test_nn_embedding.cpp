// embedding / embedding_backward: row lookup against a plain loop (i64 and i32 ids,
// strided ids and weight, any ids shape), scatter-add with repeated ids against an
// explicit sum and against finite differences, bf16 accumulation, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

// out[i, :] = w[ids[i], :] for row-major w [V, C].
std::vector<double> ref_lookup(const std::vector<double>& w, int64_t C, const std::vector<int64_t>& ids) {
  std::vector<double> out;
  for (int64_t id : ids)
    for (int64_t j = 0; j < C; ++j) out.push_back(w[id * C + j]);
  return out;
}

TEST(EmbeddingNn, ForwardMatchesLookup) {
  Generator gen(21);
  const std::vector<int64_t> ids = {3, 0, 4, 4, 1, 3};
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    Tensor w = Tensor::randn({5, 3}, gen, dt);
    Tensor i64 = Tensor::from_vector<int64_t>(ids, {2, 3});
    Tensor i32 = Tensor::from_vector<int32_t>(std::vector<int32_t>(ids.begin(), ids.end()), {2, 3});
    Tensor o = embedding(w, i64);
    EXPECT_EQ(o.shape(), (Shape{2, 3, 3}));
    EXPECT_EQ(o.dtype(), dt);
    // Lookups copy values exactly.
    EXPECT_EQ(vec(o), ref_lookup(vec(w), 3, ids));
    EXPECT_EQ(vec(embedding(w, i32)), ref_lookup(vec(w), 3, ids));
  }
}

TEST(EmbeddingNn, StridedIdsAndWeight) {
  Generator gen(22);
  Tensor wt = Tensor::randn({4, 6}, gen, DType::f32).transpose(0, 1);  // [6, 4] strided weight
  Tensor ids = Tensor::from_vector<int64_t>({5, 0, 2, 2, 1, 4}, {2, 3}).transpose(0, 1);  // [3, 2] strided ids
  ASSERT_FALSE(wt.is_contiguous());
  ASSERT_FALSE(ids.is_contiguous());
  std::vector<int64_t> logical;
  for (double v : vec(ids)) logical.push_back(static_cast<int64_t>(v));
  Tensor o = embedding(wt, ids);
  EXPECT_EQ(o.shape(), (Shape{3, 2, 4}));
  EXPECT_EQ(vec(o), ref_lookup(vec(wt), 4, logical));
}

TEST(EmbeddingNn, BackwardSumsRepeatedIds) {
  Generator gen(23);
  const std::vector<int64_t> ids = {2, 0, 2, 5, 2, 0, 1};
  const int64_t V = 7, C = 4;
  Tensor gy = Tensor::randn({7, C}, gen, DType::f64);
  Tensor g = embedding_backward(gy, Tensor::from_vector<int64_t>(ids, {7}), V);
  EXPECT_EQ(g.shape(), (Shape{V, C}));
  auto vg = vec(gy);
  std::vector<double> want(V * C, 0.0);
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < C; ++j) want[ids[i] * C + j] += vg[i * C + j];
  expect_close(vec(g), want, 1e-14, "embedding_backward f64");  // rows 3, 4, 6 stay zero

  // bf16 gradients accumulate in f32 and round once.
  Tensor gb = Tensor::randn({7, C}, gen, DType::bf16);
  Tensor out_b = embedding_backward(gb, Tensor::from_vector<int32_t>({2, 0, 2, 5, 2, 0, 1}, {7}), V);
  EXPECT_EQ(out_b.dtype(), DType::bf16);
  auto vb = vec(gb);
  std::vector<double> want_b(V * C, 0.0);
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < C; ++j) want_b[ids[i] * C + j] += vb[i * C + j];
  expect_close(vec(out_b), want_b, 8e-3, "embedding_backward bf16");
}

TEST(EmbeddingNn, LargeBackwardUsesThreads) {
  Generator gen(25);
  const int64_t n = 700, V = 50, C = 32;
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = (i * 7 + i / 3) % V;
  Tensor gy = Tensor::randn({n, C}, gen, DType::f32);
  Tensor g = embedding_backward(gy, Tensor::from_vector<int64_t>(ids, {n}), V);
  auto vg = vec(gy);
  std::vector<double> want(V * C, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < C; ++j) want[ids[i] * C + j] += vg[i * C + j];
  expect_close(vec(g), want, 1e-5, "threaded embedding_backward");
}

TEST(EmbeddingNn, BackwardMatchesFiniteDifferences) {
  Generator gen(24);
  Tensor w = Tensor::randn({4, 3}, gen, DType::f64);
  Tensor ids = Tensor::from_vector<int64_t>({1, 3, 1, 0, 1, 3}, {3, 2});
  Tensor u = Tensor::randn({3, 2, 3}, gen, DType::f64);
  auto f = [&] {
    auto a = vec(u), b = vec(embedding(w, ids));
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  double* p = w.data<double>();
  std::vector<double> num(12);
  for (int i = 0; i < 12; ++i) {
    const double keep = p[i];
    p[i] = keep + 1e-6;
    const double fp = f();
    p[i] = keep - 1e-6;
    const double fm = f();
    p[i] = keep;
    num[i] = (fp - fm) / 2e-6;
  }
  expect_close(vec(embedding_backward(u, ids, 4)), num, 1e-8, "embedding grad vs finite differences");
}

TEST(EmbeddingNn, ErrorsNameIdAndRows) {
  Tensor w = Tensor::zeros({5, 2});
  try {
    embedding(w, Tensor::from_vector<int64_t>({0, 7, 1}, {3}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("embedding"), std::string::npos) << m;
    EXPECT_NE(m.find("7"), std::string::npos) << m;
    EXPECT_NE(m.find("5 rows"), std::string::npos) << m;
  }
  EXPECT_THROW(embedding(w, Tensor::from_vector<int32_t>({-1}, {1})), Error);
  EXPECT_THROW(embedding(w, Tensor::zeros({2}, DType::f32)), Error);
  try {
    embedding_backward(Tensor::zeros({3, 2}), Tensor::from_vector<int64_t>({0, 1}, {2}), 5);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("embedding_backward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(embedding_backward(Tensor::zeros({1, 2}), Tensor::from_vector<int64_t>({5}, {1}), 5), Error);
}

}  // namespace
