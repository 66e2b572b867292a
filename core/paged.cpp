#include "core/paged.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "core/error.h"

namespace lathe {

namespace {

thread_local int64_t tl_min_numel = -1;
thread_local std::string tl_dir;

// One file per allocation (<dir>/lathe-paged-<pid>-<n>.bin), mapped MAP_SHARED: under memory
// pressure the kernel writes dirty pages back to the file and drops them, instead of needing
// swap. The file is unlinked when the allocation is freed.
class FileBackedAllocator final : public PagedAllocator {
 public:
  void* allocate(size_t nbytes, int) override {
    const std::string dir = tl_dir.empty() ? std::filesystem::temp_directory_path().string() : tl_dir;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    LATHE_CHECK(!ec) << "paged optimizer state: cannot create the directory " << dir << " for its backing files ("
                     << ec.message() << "); set optimizer.paging.dir to a writable folder";
    const std::string path = dir + "/lathe-paged-" + std::to_string(::getpid()) + "-" +
                             std::to_string(counter_.fetch_add(1)) + ".bin";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    LATHE_CHECK(fd >= 0) << "paged optimizer state: cannot create " << path << ": " << std::strerror(errno);
    const size_t len = nbytes == 0 ? 1 : nbytes;
    if (::ftruncate(fd, static_cast<off_t>(len)) != 0) {
      const int e = errno;
      ::close(fd);
      ::unlink(path.c_str());
      LATHE_FAIL() << "paged optimizer state: cannot size " << path << " to " << len << " bytes: " << std::strerror(e);
    }
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int e = errno;
    ::close(fd);  // the mapping keeps the file open
    if (p == MAP_FAILED) {
      ::unlink(path.c_str());
      LATHE_FAIL() << "paged optimizer state: cannot map " << path << " (" << len << " bytes): " << std::strerror(e);
    }
    std::lock_guard<std::mutex> lk(mu_);
    live_[p] = Entry{path, len};
    return p;
  }

  void deallocate(void* p, size_t, int) override {
    if (!p) return;
    Entry e;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = live_.find(p);
      if (it == live_.end()) return;
      e = it->second;
      live_.erase(it);
    }
    ::munmap(p, e.len);
    ::unlink(e.path.c_str());
  }

  void prefetch(void*, size_t, int) override {}  // the OS faults pages back in on use
  const char* where() const override { return "file-backed mapping"; }

  std::vector<std::string> files() {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::string> out;
    for (const auto& [p, e] : live_) out.push_back(e.path);
    return out;
  }

 private:
  struct Entry {
    std::string path;
    size_t len = 0;
  };
  std::mutex mu_;
  std::map<void*, Entry> live_;
  std::atomic<uint64_t> counter_{0};
};

// Never destroyed: storages owned by static objects may be freed late at exit.
FileBackedAllocator& file_backed() {
  static FileBackedAllocator* a = new FileBackedAllocator();
  return *a;
}

PagedAllocator*& paged_slot(DeviceType d) {
  static PagedAllocator* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}

}  // namespace

PagedAllocGuard::PagedAllocGuard(int64_t min_numel, std::string dir) : prev_min_(tl_min_numel), prev_dir_(tl_dir) {
  tl_min_numel = min_numel < 0 ? 0 : min_numel;
  tl_dir = std::move(dir);
}

PagedAllocGuard::~PagedAllocGuard() {
  tl_min_numel = prev_min_;
  tl_dir = prev_dir_;
}

int64_t paged_min_numel() { return tl_min_numel; }
const std::string& paged_dir() { return tl_dir; }

void register_paged_allocator(DeviceType d, PagedAllocator* a) { paged_slot(d) = a; }

PagedAllocator& paged_allocator_for(DeviceType d) {
  if (PagedAllocator* a = paged_slot(d)) return *a;
  LATHE_CHECK(d == DeviceType::cpu) << "no paged allocator for cuda: lathe was built without the CUDA backend";
  return file_backed();
}

std::vector<std::string> paged_backing_files() { return file_backed().files(); }

}  // namespace lathe
