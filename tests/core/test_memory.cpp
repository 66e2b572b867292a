// Memory accounting: allocations and frees move the counters by exact byte counts.
#include <gtest/gtest.h>

#include "core/memory.h"
#include "core/tensor.h"

using namespace lathe;

TEST(Memory, AllocateAndFreeMoveCountersExactly) {
  MemoryStats before = memory_stats();
  {
    MemCategoryGuard g(MemCategory::activations);
    Tensor a = Tensor::empty({10, 7}, DType::f32);   // 280 bytes
    Tensor b = Tensor::zeros({3, 5}, DType::bf16);   // 30 bytes
    MemoryStats mid = memory_stats();
    EXPECT_EQ(mid.current_of(MemCategory::activations) - before.current_of(MemCategory::activations), 310);
    EXPECT_EQ(mid.total_current - before.total_current, 310);
    Tensor v = a.transpose(0, 1);  // a view allocates nothing
    EXPECT_EQ(memory_stats().total_current, mid.total_current);
  }
  MemoryStats after = memory_stats();
  EXPECT_EQ(after.total_current, before.total_current);
  EXPECT_EQ(after.current_of(MemCategory::activations), before.current_of(MemCategory::activations));
}

TEST(Memory, PeakAndCategories) {
  reset_peak_memory();
  MemoryStats base = memory_stats();
  {
    Tensor p = Tensor::empty({1000}, DType::f64);  // 8000 bytes, category other
    p.storage()->set_category(MemCategory::parameters);
    MemoryStats s = memory_stats();
    EXPECT_EQ(s.current_of(MemCategory::parameters) - base.current_of(MemCategory::parameters), 8000);
    EXPECT_EQ(s.current_of(MemCategory::other), base.current_of(MemCategory::other));
    {
      MemCategoryGuard g(MemCategory::optimizer_state);
      Tensor m = Tensor::empty({500}, DType::f32);  // 2000 bytes
      EXPECT_EQ(memory_stats().current_of(MemCategory::optimizer_state) -
                    base.current_of(MemCategory::optimizer_state),
                2000);
    }
  }
  MemoryStats end = memory_stats();
  EXPECT_EQ(end.total_current, base.total_current);
  EXPECT_EQ(end.total_peak - base.total_current, 10000);
  EXPECT_EQ(end.peak_of(MemCategory::optimizer_state) - base.current_of(MemCategory::optimizer_state), 2000);
}

TEST(Memory, WrappedStorageIsNotCountedUnlessAsked) {
  static float buf[16];
  MemoryStats before = memory_stats();
  {
    auto s = Storage::wrap(buf, sizeof buf, Device::cpu(), [](void*) {});
    Tensor t = Tensor::from_storage(s, {4, 4}, DType::f32);
    EXPECT_EQ(memory_stats().total_current, before.total_current);
  }
  bool released = false;
  {
    auto s = Storage::wrap(buf, sizeof buf, Device::cpu(), [&](void*) { released = true; }, true,
                           MemCategory::parameters);
    EXPECT_EQ(memory_stats().total_current - before.total_current, 64);
  }
  EXPECT_TRUE(released);
  EXPECT_EQ(memory_stats().total_current, before.total_current);
}

TEST(Memory, CudaWithoutBackendIsAClearError) {
  if (has_allocator(DeviceType::cuda)) GTEST_SKIP() << "CUDA allocator registered";
  try {
    Tensor::empty({4}, DType::f32, Device::cuda(0));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no allocator for cuda"), std::string::npos) << e.what();
  }
}
