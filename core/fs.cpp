#include "core/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace lathe {

namespace {
[[noreturn]] void io_fail(const std::string& msg) { throw IoError("file", msg); }

std::string parent_of(const std::string& path) {
  std::string p = std::filesystem::path(path).parent_path().string();
  return p.empty() ? "." : p;
}
}  // namespace

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

void fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open '" + path + "' to fsync it: " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) io_fail("fsync of '" + path + "' failed: " + std::strerror(err));
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open directory '" + dir + "' to fsync it: " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) io_fail("fsync of directory '" + dir + "' failed: " + std::strerror(err));
}

void commit_file(const std::string& tmp, const std::string& final_path) {
  try {
    fsync_file(tmp);
    if (::rename(tmp.c_str(), final_path.c_str()) != 0)
      io_fail("cannot rename '" + tmp + "' to '" + final_path + "': " + std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(parent_of(final_path));
}

void write_file_atomic_with(const std::string& path, const std::function<void(int, const std::string&)>& write) {
  const std::string tmp = temp_path_for(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_fail("cannot create '" + tmp + "' (writing " + path + "): " + std::strerror(errno));
  try {
    write(fd, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    io_fail("cannot write '" + tmp + "' (writing " + path + "): " + std::strerror(err));
  }
  commit_file(tmp, path);
}

void write_file_atomic(const std::string& path, const std::string& text, const std::string& tmp_name) {
  const std::string tmp = tmp_name.empty() ? temp_path_for(path) : tmp_name;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_fail("cannot create '" + tmp + "' (writing " + path + "): " + std::strerror(errno));
  const char* p = text.data();
  size_t n = text.size();
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      io_fail("cannot write '" + tmp + "' (writing " + path + "): " + std::strerror(err));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  // close() may report a delayed write error (NFS, quotas).
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    io_fail("cannot write '" + tmp + "' (writing " + path + "): " + std::strerror(err));
  }
  commit_file(tmp, path);
}

}  // namespace lathe
