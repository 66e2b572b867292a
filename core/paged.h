// Paged allocations: memory the system may move out of the device's fast memory when it runs
// short, for large optimizer states (QLoRA's "paged optimizers", Dettmers et al. 2023).
//  CUDA: managed memory (cudaMallocManaged), prefetched to the GPU before it is used
//        (Storage::prefetch) where the device supports concurrent managed access; plain device
//        memory otherwise. Registered by the CUDA backend.
//  CPU:  a file-backed shared mapping of a file under the paging directory, so the OS can write
//        the pages out to the file instead of needing RAM or swap for them; the file is removed
//        when the storage is freed.
// A paged allocation is a kind of Storage (Storage::paged()); the memory accounting counts
// its bytes in its category as usual and also as paged (MemoryStats::paged), so a report can
// say how much of each category lives where.
//
// Which allocations are paged is set per thread by PagedAllocGuard: while one lives, tensors
// created by Tensor::empty/zeros/... with at least `min_numel` elements get paged storage.
// The optimizer sets it around the creation of its state (optim/optimizer.h, PagingOptions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/memory.h"

namespace lathe {

class PagedAllocGuard {
 public:
  // dir: where CPU backing files go (created if missing; "" = the system temp directory).
  PagedAllocGuard(int64_t min_numel, std::string dir);
  ~PagedAllocGuard();
  PagedAllocGuard(const PagedAllocGuard&) = delete;
  PagedAllocGuard& operator=(const PagedAllocGuard&) = delete;

 private:
  int64_t prev_min_;
  std::string prev_dir_;
};
// -1 when no guard is active on this thread.
int64_t paged_min_numel();
const std::string& paged_dir();

// An allocator of paged memory has, on top of Allocator, a way to move a range to the device
// before a kernel uses it.
class PagedAllocator : public Allocator {
 public:
  virtual void prefetch(void* p, size_t nbytes, int device_index) = 0;
  virtual const char* where() const = 0;  // "file-backed mapping", "managed memory", ...
};
void register_paged_allocator(DeviceType d, PagedAllocator* a);
// The CPU's file-backed allocator is built in; CUDA's is registered by the CUDA backend.
// Throws naming the device type when there is none.
PagedAllocator& paged_allocator_for(DeviceType d);

// Backing files of the CPU allocator that exist now (absolute paths), for tests.
std::vector<std::string> paged_backing_files();

}  // namespace lathe
