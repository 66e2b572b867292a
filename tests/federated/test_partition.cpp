// Partitions: IID sizes and determinism; Dirichlet(alpha) skew falls as alpha grows (the mean
// total-variation distance of client label mixes from the global mix); same seed, same split.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "federated/partition.h"

namespace lathe::federated {
namespace {

std::vector<int64_t> balanced_labels(int64_t n, int64_t L) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(i % L);
  return v;
}

void expect_cover(const Partition& p, int64_t n) {
  std::vector<int64_t> all;
  for (const auto& c : p) {
    EXPECT_TRUE(std::is_sorted(c.begin(), c.end()));
    all.insert(all.end(), c.begin(), c.end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_EQ(static_cast<int64_t>(all.size()), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(all[static_cast<size_t>(i)], i);
}

TEST(Partition, IidSizesDifferByAtMostOneAndCoverEverySample) {
  Partition p = partition_iid(103, 10, 1, 5);
  expect_cover(p, 103);
  for (size_t k = 0; k < p.size(); ++k) EXPECT_EQ(static_cast<int64_t>(p[k].size()), k < 3 ? 11 : 10);
  EXPECT_EQ(p, partition_iid(103, 10, 1, 5));
  EXPECT_NE(p, partition_iid(103, 10, 1, 6));
  // One client holds the identity order (it trains on a plain run's batches).
  Partition one = partition_iid(50, 1, 1, 9);
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(one[0][static_cast<size_t>(i)], i);
  EXPECT_THROW(partition_iid(20, 10, 3, 0), lathe::Error);
}

TEST(Partition, DirichletSkewFollowsAlpha) {
  const auto labels = balanced_labels(4000, 4);
  auto skew = [&](double alpha) {
    double s = 0;
    for (uint64_t seed = 0; seed < 5; ++seed) {
      Partition p = partition_dirichlet(labels, 20, alpha, 1, seed);
      expect_cover(p, 4000);
      s += label_skew(p, labels);
    }
    return s / 5;
  };
  const double s01 = skew(0.1), s1 = skew(1.0), s100 = skew(100.0);
  // With alpha = 0.1 a client's mix is dominated by one or two labels; with 100 it is close to
  // uniform: the expected total-variation distance of Dir(100) shares from 1/4 is ~0.04, and
  // multinomial noise on ~200 samples per client adds ~0.05.
  EXPECT_GT(s01, 0.5);
  EXPECT_LT(s100, 0.12);
  EXPECT_GT(s01, s1);
  EXPECT_GT(s1, s100);
}

TEST(Partition, DirichletSameSeedSamePartitionAndMinimumSize) {
  const auto labels = balanced_labels(600, 3);
  Partition a = partition_dirichlet(labels, 10, 0.5, 20, 11);
  EXPECT_EQ(a, partition_dirichlet(labels, 10, 0.5, 20, 11));
  EXPECT_NE(a, partition_dirichlet(labels, 10, 0.5, 20, 12));
  for (const auto& c : a) EXPECT_GE(c.size(), 20u);
  // Impossible minimum: an error naming the field, not a loop.
  try {
    partition_dirichlet(labels, 10, 0.5, 61, 11);
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("min_client_size"), std::string::npos) << e.what();
  }
}

TEST(Partition, ByFieldOneClientPerValue) {
  std::vector<int64_t> labels = {0, 1, 2, 1, 0, 2, 2};
  Partition p = partition_by_field(labels, 3, 1);
  EXPECT_EQ(p[0], (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(p[1], (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(p[2], (std::vector<int64_t>{2, 5, 6}));
  EXPECT_THROW(partition_by_field(labels, 4, 1), lathe::Error);
  EXPECT_THROW(partition_by_field(labels, 3, 3), lathe::Error);
}

TEST(Partition, GammaDrawHasItsMeanAndVariance) {
  // Gamma(a, 1): mean a, variance a; checked for a < 1 (the boosted path) and a > 1.
  for (double a : {0.3, 2.5}) {
    GammaStream s(42);
    const int n = 200000;
    double m = 0, m2 = 0;
    for (int i = 0; i < n; ++i) {
      const double x = sample_gamma(a, s);
      m += x;
      m2 += x * x;
    }
    m /= n;
    const double var = m2 / n - m * m;
    EXPECT_NEAR(m, a, 4 * std::sqrt(a / n)) << a;
    EXPECT_NEAR(var, a, 0.03 * a + 0.01) << a;
  }
}

TEST(Partition, JsonlLabelsInRecordOrder) {
  std::vector<std::string> names;
  auto labels = read_jsonl_labels("tests/federated/data/ops_train.jsonl", "category", &names);
  ASSERT_EQ(labels.size(), 800u);
  EXPECT_EQ(names.size(), 4u);
  EXPECT_EQ(names[static_cast<size_t>(labels[0])], "add");  // the first record's category
  EXPECT_THROW(read_jsonl_labels("tests/federated/data/ops_train.jsonl", "nope"), lathe::Error);
}

}  // namespace
}  // namespace lathe::federated
