// Allocators and memory accounting.
//
// Every Storage is allocated through the allocator registered for its device and
// is counted under a category (parameters, gradients, optimizer state, activations,
// other). Counters hold the bytes currently held and the peak, per device type and
// category, and a total peak across categories. The optimizer and PEFT code proves
// its memory savings with these numbers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/device.h"

namespace lathe {

enum class MemCategory : uint8_t { parameters, gradients, optimizer_state, activations, other };
constexpr int kNumMemCategories = 5;
const char* mem_category_name(MemCategory c);

struct MemoryStats {
  std::array<int64_t, kNumMemCategories> current{};  // bytes held now, by category
  std::array<int64_t, kNumMemCategories> peak{};     // highest value of current[c] seen
  // The part of current[c] in paged memory (core/paged.h: file-backed on the CPU, managed
  // memory on CUDA), and its peak.
  std::array<int64_t, kNumMemCategories> paged{};
  std::array<int64_t, kNumMemCategories> paged_peak{};
  int64_t total_current = 0;                          // sum of current
  int64_t total_peak = 0;                             // highest total_current seen
  int64_t current_of(MemCategory c) const { return current[static_cast<int>(c)]; }
  int64_t peak_of(MemCategory c) const { return peak[static_cast<int>(c)]; }
  int64_t paged_of(MemCategory c) const { return paged[static_cast<int>(c)]; }
  std::string str() const;  // one line, human-readable MiB figures
};

// Snapshot of the counters for a device type.
MemoryStats memory_stats(DeviceType d = DeviceType::cpu);
// Sets every peak to the current value (call before measuring a phase).
void reset_peak_memory(DeviceType d = DeviceType::cpu);

// Adjust the counters (used by Storage; allocators themselves do not count).
// paged: the bytes are paged memory (also counted in MemoryStats::paged).
void memory_account(DeviceType d, MemCategory c, int64_t delta_bytes, bool paged = false);

// Category given to new allocations on this thread while the guard lives.
class MemCategoryGuard {
 public:
  explicit MemCategoryGuard(MemCategory c);
  ~MemCategoryGuard();
  MemCategoryGuard(const MemCategoryGuard&) = delete;
  MemCategoryGuard& operator=(const MemCategoryGuard&) = delete;

 private:
  MemCategory prev_;
};
MemCategory current_mem_category();

// Raw memory for one device type. The CPU allocator is built in (64-byte aligned);
// the CUDA backend registers its own when it is linked.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes, int device_index) = 0;
  virtual void deallocate(void* p, size_t nbytes, int device_index) = 0;
};
// Copies and fills are not the allocator's: they go through the device's table
// (core/device_ops.h), which the kernels backend implements.
void register_allocator(DeviceType d, Allocator* a);
// Throws "no allocator for cuda: lathe was built without the CUDA backend" when absent.
Allocator& allocator_for(DeviceType d);
bool has_allocator(DeviceType d);

// Bytes of memory on this machine (MemTotal + SwapTotal from /proc/meminfo), 0 when unknown.
// Totals, not what is free now: size checks against it must not depend on what else runs at
// the moment (parallel tests). Used to refuse configs and files that cannot fit at all.
uint64_t machine_memory_bytes();

// The built-in CPU allocator keeps freed blocks of 1 MiB and more in a bounded cache and
// reuses them for later requests of the same size class (fresh large blocks cost a page
// fault per page on first touch). Cached blocks are not counted by memory_stats(), which
// tracks the bytes tensors hold; these report and drop the cache itself.
size_t cpu_allocator_cached_bytes();
// Returns every cached block to the C library (and so, for large blocks, to the OS).
void release_cached_memory();
// Bound on the cached bytes (default: 1/8 of physical memory, at most 4 GiB, or
// LATHE_CPU_CACHE_LIMIT_MB from the environment); 0 disables caching. Trims the cache to
// the new bound and returns the previous one.
size_t set_cpu_allocator_cache_limit(size_t bytes);

}  // namespace lathe
