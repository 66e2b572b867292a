// Helpers every test suite needs: a fresh temporary directory per test, whole-file reads
// and writes, and checks on the lathe::Error a statement throws. One copy for all suites.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace lathe::test {

// A fresh directory under the system temp dir, named after the running test and the pid
// (parallel ctest runs and other users' tests do not collide), removed when it goes out of
// scope. `tag` tells the suites apart in the name.
class TmpDir {
 public:
  explicit TmpDir(const std::string& tag = "lathe_test") {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = tag + "_" + (info ? std::string(info->test_suite_name()) + "_" + info->name() : "x") + "_" +
                       std::to_string(::getpid());
    path_ = (std::filesystem::temp_directory_path() / name).string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TmpDir() {
    std::error_code ec;
    // A test may have made parts read-only to provoke errors.
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TmpDir(const TmpDir&) = delete;
  TmpDir& operator=(const TmpDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// A fresh, empty directory <temp>/<name>_<pid> that is not removed (for outputs that
// several tests of a suite share); prefer TmpDir.
inline std::string fresh_dir(const std::string& name) {
  const std::filesystem::path p = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Writes (truncating) `data` to path, creating its parent directories.
inline void write_file(const std::string& path, const std::string& data) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

inline bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Runs fn, which must throw lathe::Error; returns its message. Records a test failure and
// returns "" when fn throws nothing or another exception.
template <typename F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const lathe::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected lathe::Error, got std::exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected lathe::Error, nothing was thrown";
  return "";
}

// error_of(fn), and every one of `parts` must occur in the message. Returns the message.
template <typename F>
std::string expect_error(F&& fn, const std::vector<std::string>& parts) {
  const std::string msg = error_of(fn);
  for (const auto& p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "the error message lacks \"" << p << "\": " << msg;
  return msg;
}

}  // namespace lathe::test

// EXPECT_ERROR_HAS(statement, "part", ...): the statement throws a lathe::Error whose message
// contains every part.
#define EXPECT_ERROR_HAS(stmt, ...) ::lathe::test::expect_error([&] { stmt; }, std::vector<std::string>{__VA_ARGS__})
