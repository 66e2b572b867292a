// lathe::Error and the LATHE_CHECK macro: every failed check throws an Error whose
// message starts with file:line, followed by what the caller streamed in.
//
//   LATHE_CHECK(a.dim() == 2) << "matmul: expected a 2-D tensor, got " << a.shape_str();
//   LATHE_FAIL() << "unknown dtype " << name;
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lathe {

class Error : public std::runtime_error {
 public:
  Error(std::string where, std::string what)
      : std::runtime_error(where + ": " + what), where_(std::move(where)), what_(std::move(what)) {}
  // "file.cpp:42"
  const std::string& where() const { return where_; }
  // the message without the location
  const std::string& message() const { return what_; }

 private:
  std::string where_;
  std::string what_;
};

namespace detail {
// Collects the streamed message and throws from its destructor, so that
// `LATHE_CHECK(c) << a << b;` throws once the whole statement has been evaluated.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) : file_(file), line_(line) {
    if (cond) os_ << "check failed: " << cond << ": ";
  }
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;
  template <typename T>
  CheckFailure& operator<<(const T& v) {
    os_ << v;
    return *this;
  }
  ~CheckFailure() noexcept(false);

 private:
  const char* file_;
  int line_;
  std::ostringstream os_;
};
}  // namespace detail

}  // namespace lathe

#define LATHE_CHECK(cond) \
  if (__builtin_expect(!!(cond), 1)) { \
  } else \
    ::lathe::detail::CheckFailure(__FILE__, __LINE__, #cond)

#define LATHE_FAIL() ::lathe::detail::CheckFailure(__FILE__, __LINE__, nullptr)

// Like LATHE_CHECK, but the message leaves out the condition's text: for errors that users
// read (bad files, bad configs), where the streamed message says everything.
#define LATHE_REQUIRE(cond) \
  if (__builtin_expect(!!(cond), 1)) { \
  } else \
    ::lathe::detail::CheckFailure(__FILE__, __LINE__, nullptr)
