// Helpers for the config tests: writing a config to a fresh temporary file and catching the
// ConfigError that loading it throws.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "configs/config.h"

namespace lathe::configs::testing {

// Writes `text` to <tmp>/lathe_test_configs/<name> and returns that path.
inline std::string write_temp(const std::string& name, const std::string& text) {
  const auto dir = std::filesystem::temp_directory_path() / "lathe_test_configs";
  std::filesystem::create_directories(dir);
  const auto path = dir / name;
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

// The errors of the ConfigError that load_config(path, overrides) throws; fails the test if
// it does not throw one.
inline std::vector<std::string> load_errors(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    load_config(path, overrides);
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.origin(), path);
    // what() carries every error too (that is what a user sees).
    for (const auto& err : e.errors()) EXPECT_NE(std::string(e.what()).find(err), std::string::npos);
    return e.errors();
  }
  ADD_FAILURE() << "load_config(" << path << ") did not throw";
  return {};
}

}  // namespace lathe::configs::testing
