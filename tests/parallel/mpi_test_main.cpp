// main() of the tests that run under mpirun: MPI up before gtest, a failure on any rank
// fails every rank's exit code, and only rank 0 prints the full gtest report (other
// ranks print their failures, tagged with the rank).
#include <gtest/gtest.h>

#include <cstdio>

#include "parallel/mpi_communicator.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  auto comm = lathe::parallel::init_mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // A test that fails on one rank can leave the others inside a collective: bound it.
  comm->set_timeout(30);
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(comm->rank()));
  }
  const int rc = RUN_ALL_TESTS();
  lathe::Tensor failed = lathe::Tensor::full({1}, rc != 0 ? 1 : 0, lathe::DType::i32);
  comm->all_reduce(failed, lathe::parallel::ReduceOp::max);
  const bool any_failed = failed.item() != 0;
  if (comm->rank() == 0 && any_failed && rc == 0) std::fprintf(stderr, "rank 0 passed but another rank failed\n");
  comm.reset();
  lathe::parallel::finalize_mpi();
  return any_failed ? 1 : 0;
}
