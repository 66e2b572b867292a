// A scratch directory for MPI tests that every rank sees under the same name (rank 0's pid and
// the current test's name), created by rank 0 and removed at the end.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace lathe::test {

class SharedDir {
 public:
  explicit SharedDir(parallel::Communicator& comm) : comm_(comm) {
    Tensor pid = Tensor::from_vector<int64_t>({static_cast<int64_t>(::getpid())}, {1});
    comm.broadcast(pid, 0);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = (std::filesystem::temp_directory_path() /
             ("lathe_" + std::string(info->test_suite_name()) + "_" + std::string(info->name()) + "_" +
              std::to_string(pid.to_vector<int64_t>()[0])))
                .string();
    if (comm.rank() == 0) {
      std::filesystem::remove_all(path_);
      std::filesystem::create_directories(path_);
    }
    comm.barrier();
  }
  ~SharedDir() {
    comm_.barrier();
    std::error_code ec;
    if (comm_.rank() == 0) std::filesystem::remove_all(path_, ec);
  }
  SharedDir(const SharedDir&) = delete;
  SharedDir& operator=(const SharedDir&) = delete;
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  parallel::Communicator& comm_;
  std::string path_;
};

}  // namespace lathe::test
