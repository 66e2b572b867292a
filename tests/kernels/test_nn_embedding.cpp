// embedding / embedding_backward on every available device: row lookup against the plain
// loop of reference.h (i64 and i32 ids, strided ids and weight, any ids shape), scatter-add
// with repeated ids against an explicit sum and against finite differences (taken on the
// device), bf16 accumulation; errors on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/reference.h"

using namespace lathe::kernel_test;

namespace {

using namespace lathe;
using namespace lathe::kernels;

LATHE_DEVICE_TEST_SUITE(EmbeddingNn);

TEST_P(EmbeddingNn, ForwardMatchesLookup) {
  Generator gen(21);
  const std::vector<int64_t> ids = {3, 0, 4, 4, 1, 3};
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    Tensor w = Tensor::randn({5, 3}, gen, dt);
    Tensor i64 = Tensor::from_vector<int64_t>(ids, {2, 3});
    Tensor i32 = Tensor::from_vector<int32_t>(std::vector<int32_t>(ids.begin(), ids.end()), {2, 3});
    Tensor o = back(embedding(on(w), on(i64)));
    EXPECT_EQ(o.shape(), (Shape{2, 3, 3}));
    EXPECT_EQ(o.dtype(), dt);
    // Lookups copy values exactly.
    EXPECT_EQ(vec(o), ref_lookup(vec(w), 3, ids));
    EXPECT_EQ(vback(embedding(on(w), on(i32))), ref_lookup(vec(w), 3, ids));
  }
}

TEST_P(EmbeddingNn, StridedIdsAndWeight) {
  Generator gen(22);
  Tensor wt = Tensor::randn({4, 6}, gen, DType::f32).transpose(0, 1);  // [6, 4] strided weight
  Tensor ids = Tensor::from_vector<int64_t>({5, 0, 2, 2, 1, 4}, {2, 3}).transpose(0, 1);  // [3, 2] strided ids
  ASSERT_FALSE(wt.is_contiguous());
  ASSERT_FALSE(ids.is_contiguous());
  std::vector<int64_t> logical;
  for (double v : vec(ids)) logical.push_back(static_cast<int64_t>(v));
  Tensor o = back(embedding(on(wt), on(ids)));
  EXPECT_EQ(o.shape(), (Shape{3, 2, 4}));
  EXPECT_EQ(vec(o), ref_lookup(vec(wt), 4, logical));
}

TEST_P(EmbeddingNn, BackwardSumsRepeatedIds) {
  Generator gen(23);
  const std::vector<int64_t> ids = {2, 0, 2, 5, 2, 0, 1};
  const int64_t V = 7, C = 4;
  Tensor gy = Tensor::randn({7, C}, gen, DType::f64);
  Tensor g = back(embedding_backward(on(gy), on(Tensor::from_vector<int64_t>(ids, {7})), V));
  EXPECT_EQ(g.shape(), (Shape{V, C}));
  std::vector<double> want = ref_embedding_backward(vec(gy), C, ids, V);
  expect_close(vec(g), want, tol(DType::f64, 1e-14), "embedding_backward f64");  // rows 3, 4, 6 stay zero

  // bf16 gradients accumulate in f32 and round once.
  Tensor gb = Tensor::randn({7, C}, gen, DType::bf16);
  Tensor out_b = back(embedding_backward(on(gb), on(Tensor::from_vector<int32_t>({2, 0, 2, 5, 2, 0, 1}, {7})), V));
  EXPECT_EQ(out_b.dtype(), DType::bf16);
  std::vector<double> want_b = ref_embedding_backward(vec(gb), C, ids, V);
  expect_close(vec(out_b), want_b, tol(DType::bf16, 8e-3), "embedding_backward bf16");
}

TEST_P(EmbeddingNn, LargeBackwardUsesThreads) {
  Generator gen(25);
  const int64_t n = 700, V = 50, C = 32;
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = (i * 7 + i / 3) % V;
  Tensor gy = Tensor::randn({n, C}, gen, DType::f32);
  Tensor g = embedding_backward(on(gy), on(Tensor::from_vector<int64_t>(ids, {n})), V);
  std::vector<double> want = ref_embedding_backward(vec(gy), C, ids, V);
  expect_close(vback(g), want, tol(DType::f32, 1e-5), "threaded embedding_backward");
}

TEST_P(EmbeddingNn, BackwardMatchesFiniteDifferences) {
  Generator gen(24);
  // all on the device; numeric_grad perturbs w there
  Tensor w = on(Tensor::randn({4, 3}, gen, DType::f64));
  Tensor ids = on(Tensor::from_vector<int64_t>({1, 3, 1, 0, 1, 3}, {3, 2}));
  Tensor u = on(Tensor::randn({3, 2, 3}, gen, DType::f64));
  auto f = [&] { return dot(u, embedding(w, ids)); };
  std::vector<double> num = numeric_grad(w, f);
  expect_close(vback(embedding_backward(u, ids, 4)), num, 1e-8, "embedding grad vs finite differences");
}

TEST(EmbeddingNnCpu, ErrorsNameIdAndRows) {
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
