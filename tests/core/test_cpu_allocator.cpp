// The caching CPU allocator: large blocks are reused by size class, the cache is bounded
// and can be released, small blocks bypass it, and memory accounting stays exact.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "core/memory.h"
#include "core/tensor.h"

using namespace lathe;

namespace {

constexpr int64_t kMiB = int64_t(1) << 20;

Tensor bytes(int64_t n) { return Tensor::empty({n}, DType::u8); }

// Restores the cache bound and empties the cache around each test.
class CpuAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prev_limit_ = set_cpu_allocator_cache_limit(size_t(1) << 30);
    release_cached_memory();
  }
  void TearDown() override {
    set_cpu_allocator_cache_limit(prev_limit_);
    release_cached_memory();
  }
  size_t prev_limit_ = 0;
};

TEST_F(CpuAllocatorTest, FreedLargeBlockIsReusedForTheSameSizeClass) {
  MemoryStats base = memory_stats();
  void* first = nullptr;
  {
    Tensor a = bytes(3 * kMiB);
    first = a.raw_data();
    std::memset(first, 7, 3 * kMiB);
    EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
  }
  // 3 MiB is a class boundary (steps of 256 KiB between 2 and 4 MiB).
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(3 * kMiB));
  EXPECT_EQ(memory_stats().total_current, base.total_current);
  {
    // A slightly smaller request falls in the same class and gets the cached block back;
    // accounting still counts the bytes asked for, exactly.
    Tensor b = bytes(3 * kMiB - 1000);
    EXPECT_EQ(b.raw_data(), first);
    EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
    EXPECT_EQ(memory_stats().total_current - base.total_current, 3 * kMiB - 1000);
  }
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(3 * kMiB));
  EXPECT_EQ(memory_stats().total_current, base.total_current);
}

TEST_F(CpuAllocatorTest, ClassesRoundUpByAtMostAnEighth) {
  { Tensor a = bytes(kMiB + 1); }
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(kMiB + kMiB / 8));
  release_cached_memory();
  { Tensor a = bytes(64 * kMiB + 1); }
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(72 * kMiB));
  release_cached_memory();
  { Tensor a = bytes(5 * kMiB); }  // 5 MiB = 4 MiB + 2 steps of 512 KiB: exact
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(5 * kMiB));
  {
    Tensor b = bytes(6 * kMiB);  // another class: not served from the 5 MiB block
    EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(5 * kMiB));
  }
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(11 * kMiB));
}

TEST_F(CpuAllocatorTest, SmallBlocksBypassTheCache) {
  { Tensor a = bytes(kMiB - 1); }
  { Tensor b = Tensor::empty({1000}, DType::f32); }
  EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
}

TEST_F(CpuAllocatorTest, ReleaseEmptiesTheCache) {
  {
    Tensor a = bytes(2 * kMiB), b = bytes(4 * kMiB);
  }
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(6 * kMiB));
  release_cached_memory();
  EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
  // Nothing cached: a new block still works.
  Tensor c = Tensor::zeros({kMiB}, DType::f32);
  EXPECT_EQ(c.to_vector<float>()[kMiB - 1], 0.0f);
}

TEST_F(CpuAllocatorTest, BoundEvictsOldestBlocksFirst) {
  set_cpu_allocator_cache_limit(size_t(5 * kMiB));
  void* pb = nullptr;
  { Tensor a = bytes(2 * kMiB); }
  {
    Tensor b = bytes(4 * kMiB);
    pb = b.raw_data();
  }
  // 2 + 4 MiB exceed the 5 MiB bound: the older 2 MiB block was released.
  EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(4 * kMiB));
  {
    Tensor c = bytes(2 * kMiB);  // no 2 MiB block left: the 4 MiB one stays cached
    EXPECT_EQ(cpu_allocator_cached_bytes(), size_t(4 * kMiB));
    Tensor d = bytes(4 * kMiB);
    EXPECT_EQ(d.raw_data(), pb);
    EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
  }
  // A block larger than the bound is never cached; lowering the bound trims.
  { Tensor e = bytes(8 * kMiB); }
  EXPECT_LE(cpu_allocator_cached_bytes(), size_t(5 * kMiB));
  set_cpu_allocator_cache_limit(size_t(2 * kMiB));
  EXPECT_LE(cpu_allocator_cached_bytes(), size_t(2 * kMiB));
  set_cpu_allocator_cache_limit(0);
  EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
  { Tensor f = bytes(2 * kMiB); }
  EXPECT_EQ(cpu_allocator_cached_bytes(), 0u);
}

TEST_F(CpuAllocatorTest, ConcurrentUseKeepsBlocksDisjoint) {
  set_cpu_allocator_cache_limit(size_t(16 * kMiB));
  const MemoryStats base = memory_stats();
  constexpr int kThreads = 4, kIters = 60;
  std::vector<int> bad(kThreads, 0);
  std::vector<std::thread> th;
  for (int t = 0; t < kThreads; ++t) {
    th.emplace_back([t, &bad] {
      for (int i = 0; i < kIters; ++i) {
        // Two live blocks per thread from a few classes; each is filled with a value
        // unique to (thread, iteration) and checked after the other was written.
        const int64_t n1 = (1 + (i + t) % 3) * kMiB, n2 = (2 + (i * 7 + t) % 2) * kMiB + 4096;
        Tensor a = bytes(n1), b = bytes(n2);
        const auto va = static_cast<unsigned char>(t * 61 + i), vb = static_cast<unsigned char>(va + 1);
        std::memset(a.raw_data(), va, static_cast<size_t>(n1));
        std::memset(b.raw_data(), vb, static_cast<size_t>(n2));
        std::this_thread::yield();
        const auto* pa = static_cast<const unsigned char*>(a.raw_data());
        const auto* pb = static_cast<const unsigned char*>(b.raw_data());
        for (int64_t k = 0; k < n1; k += 4093) bad[t] += pa[k] != va;
        for (int64_t k = 0; k < n2; k += 4093) bad[t] += pb[k] != vb;
        bad[t] += pa[n1 - 1] != va;
        bad[t] += pb[n2 - 1] != vb;
      }
    });
  }
  for (auto& x : th) x.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(bad[t], 0) << "thread " << t;
  EXPECT_LE(cpu_allocator_cached_bytes(), size_t(16 * kMiB));
  EXPECT_GT(cpu_allocator_cached_bytes(), 0u);
  EXPECT_EQ(memory_stats().total_current, base.total_current);
}

}  // namespace
