// A fresh directory under /tmp for one test, removed when the test ends.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"

namespace lathe::train::test_util {

class TmpDir {
 public:
  TmpDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("lathe_test_train_") + (info ? info->name() : "x") + "_" +
                       std::to_string(::getpid());
    path_ = (std::filesystem::temp_directory_path() / name).string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TmpDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

inline std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void write_all(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

// Runs fn, which must throw lathe::Error; returns its message ("" and a test failure if not).
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

}  // namespace lathe::train::test_util
