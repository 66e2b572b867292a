#include "data/jsonl.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace lathe::data {

LineReader::LineReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  LATHE_CHECK(f_ != nullptr) << "cannot open " << path << ": " << std::strerror(errno);
  std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
}

LineReader::~LineReader() {
  if (f_) std::fclose(f_);
  std::free(buf_);
}

bool LineReader::next(std::string& line) {
  line.clear();
  // POSIX getline returns the true length, so a NUL byte inside a line stays in it (and
  // the JSON parser reports that line) instead of silently cutting it.
  const ssize_t n = ::getline(&buf_, &cap_, f_);
  const bool failed = n < 0 && std::ferror(f_);
  if (n > 0) line.assign(buf_, static_cast<size_t>(n));
  LATHE_CHECK(!failed) << "read error in " << path_ << " after line " << line_;
  if (n < 0) return false;
  bytes_ += n;
  if (!line.empty() && line.back() == '\n') line.pop_back();
  if (!line.empty() && line.back() == '\r') line.pop_back();
  ++line_;
  return true;
}

bool is_blank_line(const std::string& line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

}  // namespace lathe::data
