#include "core/storage.h"

#include "core/paged.h"

namespace lathe {

Storage::Storage(size_t nbytes, Device dev, MemCategory cat) : Storage(nbytes, dev, cat, false) {}

Storage::Storage(size_t nbytes, Device dev, MemCategory cat, bool paged)
    : nbytes_(nbytes), device_(dev), category_(cat), paged_(paged) {
  data_ = paged ? paged_allocator_for(dev.type).allocate(nbytes, dev.index)
                : allocator_for(dev.type).allocate(nbytes, dev.index);
  memory_account(dev.type, cat, static_cast<int64_t>(nbytes), paged);
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t nbytes, Device dev, std::function<void(void*)> release,
                                       bool counted, MemCategory cat) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = data;
  s->nbytes_ = nbytes;
  s->device_ = dev;
  s->category_ = cat;
  s->counted_ = counted;
  s->release_ = std::move(release);
  if (counted) memory_account(dev.type, cat, static_cast<int64_t>(nbytes));
  return s;
}

Storage::~Storage() {
  if (counted_) memory_account(device_.type, category_, -static_cast<int64_t>(nbytes_), paged_);
  if (release_) {
    release_(data_);
  } else if (paged_) {
    paged_allocator_for(device_.type).deallocate(data_, nbytes_, device_.index);
  } else if (data_) {
    allocator_for(device_.type).deallocate(data_, nbytes_, device_.index);
  }
}

void Storage::set_category(MemCategory c) {
  if (c == category_) return;
  if (counted_) {
    memory_account(device_.type, category_, -static_cast<int64_t>(nbytes_), paged_);
    memory_account(device_.type, c, static_cast<int64_t>(nbytes_), paged_);
  }
  category_ = c;
}

void Storage::prefetch() const {
  if (paged_ && data_) paged_allocator_for(device_.type).prefetch(data_, nbytes_, device_.index);
}

}  // namespace lathe
