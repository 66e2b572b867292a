#include "core/memory.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

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

// Host allocator with a cache of large blocks.
//
// glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh mmap and
// unmaps them on free, so every large op output used to pay one zeroing page fault per
// 4 KiB page on first touch: for a 64 MiB tensor that is ~3x the cost of the op itself
// (bench/README.md, finding 1). Blocks of at least kMinCached bytes are therefore kept on
// free, in size classes, and handed out again to the next request of the same class: the
// host analogue of a CUDA caching allocator. The cache is bounded (oldest blocks are
// released first), emptied by release_cached_memory(), and emptied before an allocation
// is allowed to fail. Small blocks go straight to the C library, which already recycles
// them. Memory accounting is unaffected: Storage counts the bytes it asked for.
class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kMinCached = size_t(1) << 20;

  CpuAllocator() : limit_(default_limit()) {}

  void* allocate(size_t nbytes, int) override {
    if (nbytes < kMinCached) return raw_alloc(nbytes < 64 ? 64 : (nbytes + 63) / 64 * 64, nbytes);
    const size_t cls = size_class(nbytes);
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = by_class_.find(cls);
      if (it != by_class_.end() && !it->second.empty()) {
        // The most recently freed block of the class: its pages are the likeliest to be warm.
        auto node = it->second.back();
        it->second.pop_back();
        void* p = node->p;
        lru_.erase(node);
        cached_ -= cls;
        live_.emplace(p, cls);
        return p;
      }
    }
    void* p = raw_alloc(cls, nbytes);
    std::lock_guard<std::mutex> lk(mu_);
    live_.emplace(p, cls);
    return p;
  }

  void deallocate(void* p, size_t, int) override {
    if (!p) return;
    std::unique_lock<std::mutex> lk(mu_);
    // The block's class comes from the table of live large blocks, not from the caller's byte
    // count, so a block can never be filed under a class larger than the block.
    auto live = live_.find(p);
    if (live == live_.end()) {
      lk.unlock();
      std::free(p);
      return;
    }
    const size_t cls = live->second;
    live_.erase(live);
    if (cls > limit_) {
      lk.unlock();
      std::free(p);
      return;
    }
    std::vector<void*> evicted;
    while (cached_ + cls > limit_) evicted.push_back(pop_oldest());
    lru_.push_front(Block{p, cls});
    by_class_[cls].push_back(lru_.begin());
    cached_ += cls;
    lk.unlock();
    for (void* e : evicted) std::free(e);
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lk(mu_);
    return cached_;
  }

  // Frees every cached block; with `keep` > 0 only down to at most `keep` bytes (oldest first).
  void trim(size_t keep) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (cached_ > keep) evicted.push_back(pop_oldest());
    }
    for (void* e : evicted) std::free(e);
  }

  size_t set_limit(size_t bytes) {
    size_t prev;
    {
      std::lock_guard<std::mutex> lk(mu_);
      prev = limit_;
      limit_ = bytes;
    }
    trim(bytes);
    return prev;
  }

  // Request size -> block size: rounded up to one of 8 steps per power of two, so a block
  // is at most 12.5% larger than the request (the unused tail of a fresh block is never
  // touched, so it costs address space, not memory, until a larger request reuses it).
  static size_t size_class(size_t n) {
    int top = 63 - __builtin_clzll(static_cast<unsigned long long>(n));
    size_t step = size_t(1) << (top - 3);
    return (n + step - 1) / step * step;
  }

 private:
  struct Block {
    void* p;
    size_t cls;
  };

  // Default bound on cached bytes: 1/8 of physical memory, at most 4 GiB; the environment
  // variable LATHE_CPU_CACHE_LIMIT_MB overrides it (0 disables the cache).
  static size_t default_limit() {
    if (const char* env = std::getenv("LATHE_CPU_CACHE_LIMIT_MB")) {
      char* end = nullptr;
      unsigned long long mb = std::strtoull(env, &end, 10);
      if (end != env && *end == '\0') return static_cast<size_t>(mb) << 20;
    }
    size_t lim = size_t(4) << 30;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) lim = std::min(lim, static_cast<size_t>(pages) * static_cast<size_t>(page) / 8);
    return lim;
  }

  // aligned_alloc of `n` bytes; when the C library is out of memory the cache is emptied
  // and the request retried once before failing.
  void* raw_alloc(size_t n, size_t requested) {
    void* p = std::aligned_alloc(64, n);
    if (!p) {
      trim(0);
      p = std::aligned_alloc(64, n);
    }
    LATHE_CHECK(p != nullptr) << "out of host memory allocating " << requested << " bytes";
    return p;
  }

  // Caller holds mu_ and cached_ > 0. Unlinks the least recently cached block.
  void* pop_oldest() {
    Block b = lru_.back();
    auto& q = by_class_[b.cls];
    q.pop_front();  // blocks of one class enter q in the same order as lru_
    if (q.empty()) by_class_.erase(b.cls);
    lru_.pop_back();
    cached_ -= b.cls;
    return b.p;
  }

  std::mutex mu_;
  std::list<Block> lru_;  // cached blocks, most recently freed first
  std::unordered_map<size_t, std::deque<std::list<Block>::iterator>> by_class_;  // oldest first
  std::unordered_map<void*, size_t> live_;  // large blocks handed out -> their class
  size_t cached_ = 0;
  size_t limit_;
};

// Never destroyed: Storages owned by static objects may be freed after any function-local
// static would be, and cached blocks are returned to the OS at exit anyway.
CpuAllocator& builtin_cpu() {
  static CpuAllocator* a = new CpuAllocator();
  return *a;
}

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
  out += buf;
  for (int i = 0; i < kNumMemCategories; ++i)
    if (paged[i] != 0) {
      std::snprintf(buf, sizeof buf, " paged_%s=%.2fMiB", mem_category_name(static_cast<MemCategory>(i)),
                    paged[i] / 1048576.0);
      out += buf;
    }
  return out;
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
  c.s.paged_peak = c.s.paged;
  c.s.total_peak = c.s.total_current;
}

void memory_account(DeviceType d, MemCategory cat, int64_t delta, bool paged) {
  Counters& c = counters(d);
  std::lock_guard<std::mutex> lk(c.mu);
  int i = static_cast<int>(cat);
  if (paged) {
    c.s.paged[i] += delta;
    if (c.s.paged[i] > c.s.paged_peak[i]) c.s.paged_peak[i] = c.s.paged[i];
  }
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
    return slot(d) ? *slot(d) : builtin_cpu();
  }
  Allocator* a = slot(d);
  LATHE_CHECK(a != nullptr) << "no allocator for cuda: lathe was built without the CUDA backend, "
                            << "or the CUDA backend library is not linked";
  return *a;
}

size_t cpu_allocator_cached_bytes() { return builtin_cpu().cached_bytes(); }
void release_cached_memory() { builtin_cpu().trim(0); }
size_t set_cpu_allocator_cache_limit(size_t bytes) { return builtin_cpu().set_limit(bytes); }

uint64_t machine_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0, total = 0;
  bool found = false;
  while (in >> key >> kb) {
    if (key == "MemTotal:" || key == "SwapTotal:") {
      total += kb * 1024;
      found = true;
    }
    in.ignore(256, '\n');
  }
  return found ? total : 0;
}

}  // namespace lathe
