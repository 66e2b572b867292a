// Storage: one allocation on one device, shared by every tensor that views it.
// Its bytes are counted in the memory accounting under a category for as long as it lives.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "core/device.h"
#include "core/memory.h"

namespace lathe {

class Storage {
 public:
  // Allocates nbytes on dev, counted under cat (default: the thread's current category).
  Storage(size_t nbytes, Device dev, MemCategory cat);
  Storage(size_t nbytes, Device dev) : Storage(nbytes, dev, current_mem_category()) {}
  // paged: from the device's paged allocator (core/paged.h), counted as paged too.
  Storage(size_t nbytes, Device dev, MemCategory cat, bool paged);
  // Wraps memory owned elsewhere (an mmap'd file, a buffer from a library); `release`
  // runs when the last tensor lets go. Not counted unless `counted` is true.
  static std::shared_ptr<Storage> wrap(void* data, size_t nbytes, Device dev, std::function<void(void*)> release,
                                       bool counted = false, MemCategory cat = MemCategory::other);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  MemCategory category() const { return category_; }
  // Moves the bytes from one accounting category to another (e.g. a tensor that
  // becomes a parameter or an optimizer state).
  void set_category(MemCategory c);
  // Paged memory (core/paged.h): may live outside the device's own memory.
  bool paged() const { return paged_; }
  // Moves paged memory to the device before a kernel uses it (asynchronously, in stream
  // order); nothing for ordinary storage.
  void prefetch() const;

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  MemCategory category_ = MemCategory::other;
  bool counted_ = true;
  bool paged_ = false;
  std::function<void(void*)> release_;
};

}  // namespace lathe
