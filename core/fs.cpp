#include "core/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace lathe {

namespace {
std::string parent_of(const std::string& path) {
  std::string p = std::filesystem::path(path).parent_path().string();
  return p.empty() ? "." : p;
}
}  // namespace

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

void fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LATHE_CHECK(fd >= 0) << "cannot open '" << path << "' to fsync it: " << std::strerror(errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  LATHE_CHECK(rc == 0) << "fsync of '" << path << "' failed: " << std::strerror(err);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  LATHE_CHECK(fd >= 0) << "cannot open directory '" << dir << "' to fsync it: " << std::strerror(errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  LATHE_CHECK(rc == 0 || err == EINVAL) << "fsync of directory '" << dir << "' failed: " << std::strerror(err);
}

void commit_file(const std::string& tmp, const std::string& final_path) {
  try {
    fsync_file(tmp);
    if (::rename(tmp.c_str(), final_path.c_str()) != 0)
      LATHE_FAIL() << "cannot rename '" << tmp << "' to '" << final_path << "': " << std::strerror(errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(parent_of(final_path));
}

void write_file_atomic_with(const std::string& path, const std::function<void(int, const std::string&)>& write) {
  const std::string tmp = temp_path_for(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  LATHE_CHECK(fd >= 0) << "cannot create '" << tmp << "' (writing " << path << "): " << std::strerror(errno);
  try {
    write(fd, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  commit_file(tmp, path);
}

void write_file_atomic(const std::string& path, const std::string& text, const std::string& tmp_name) {
  const std::string tmp = tmp_name.empty() ? temp_path_for(path) : tmp_name;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  LATHE_CHECK(fd >= 0) << "cannot create '" << tmp << "' (writing " << path << "): " << std::strerror(errno);
  const char* p = text.data();
  size_t n = text.size();
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      LATHE_FAIL() << "cannot write '" << tmp << "' (writing " << path << "): " << std::strerror(err);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  ::close(fd);
  commit_file(tmp, path);
}

}  // namespace lathe
