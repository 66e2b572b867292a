#include "core/memory.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/error.h"

namespace lathe {

namespace {

struct Counters {
  std::mutex mu;
  MemoryStats s;
};

Counters& counters(DeviceType d) {
  static Counters c[2];
  return c[static_cast<int>(d)];
}

thread_local MemCategory tl_category = MemCategory::other;

class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes, int) override {
    size_t n = (nbytes + 63) / 64 * 64;
    if (n == 0) n = 64;
    void* p = std::aligned_alloc(64, n);
    LATHE_CHECK(p != nullptr) << "out of host memory allocating " << nbytes << " bytes";
    return p;
  }
  void deallocate(void* p, size_t, int) override { std::free(p); }
  void copy(void* dst, const void* src, size_t nbytes, int, int) override {
    if (nbytes) std::memcpy(dst, src, nbytes);
  }
  void memset_zero(void* p, size_t nbytes, int) override {
    if (nbytes) std::memset(p, 0, nbytes);
  }
};

Allocator*& slot(DeviceType d) {
  static Allocator* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}

}  // namespace

const char* mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::parameters: return "parameters";
    case MemCategory::gradients: return "gradients";
    case MemCategory::optimizer_state: return "optimizer_state";
    case MemCategory::activations: return "activations";
    case MemCategory::other: return "other";
  }
  return "?";
}

std::string MemoryStats::str() const {
  std::string out;
  char buf[128];
  for (int i = 0; i < kNumMemCategories; ++i) {
    std::snprintf(buf, sizeof buf, "%s%s=%.2fMiB", i ? " " : "", mem_category_name(static_cast<MemCategory>(i)),
                  current[i] / 1048576.0);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, " total=%.2fMiB peak=%.2fMiB", total_current / 1048576.0, total_peak / 1048576.0);
  return out + buf;
}

MemoryStats memory_stats(DeviceType d) {
  Counters& c = counters(d);
  std::lock_guard<std::mutex> lk(c.mu);
  return c.s;
}

void reset_peak_memory(DeviceType d) {
  Counters& c = counters(d);
  std::lock_guard<std::mutex> lk(c.mu);
  c.s.peak = c.s.current;
  c.s.total_peak = c.s.total_current;
}

void memory_account(DeviceType d, MemCategory cat, int64_t delta) {
  Counters& c = counters(d);
  std::lock_guard<std::mutex> lk(c.mu);
  int i = static_cast<int>(cat);
  c.s.current[i] += delta;
  c.s.total_current += delta;
  if (c.s.current[i] > c.s.peak[i]) c.s.peak[i] = c.s.current[i];
  if (c.s.total_current > c.s.total_peak) c.s.total_peak = c.s.total_current;
}

MemCategoryGuard::MemCategoryGuard(MemCategory c) : prev_(tl_category) { tl_category = c; }
MemCategoryGuard::~MemCategoryGuard() { tl_category = prev_; }
MemCategory current_mem_category() { return tl_category; }

void register_allocator(DeviceType d, Allocator* a) { slot(d) = a; }

bool has_allocator(DeviceType d) { return d == DeviceType::cpu || slot(d) != nullptr; }

Allocator& allocator_for(DeviceType d) {
  if (d == DeviceType::cpu) {
    static CpuAllocator cpu;
    return slot(d) ? *slot(d) : cpu;
  }
  Allocator* a = slot(d);
  LATHE_CHECK(a != nullptr) << "no allocator for cuda: lathe was built without the CUDA backend, "
                            << "or the CUDA backend library is not linked";
  return *a;
}

}  // namespace lathe
