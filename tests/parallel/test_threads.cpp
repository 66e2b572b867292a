// threads_per_rank / apply_thread_settings / set_runtime_env_defaults.
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "core/error.h"
#include "parallel/threads.h"

extern "C" int openblas_get_parallel(void);
extern "C" int openblas_get_num_threads();

namespace {
// Sets an environment variable for one scope, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};
}  // namespace

TEST(ParallelThreads, ExplicitRequestWins) {
  EXPECT_EQ(lathe::parallel::threads_per_rank(3), 3);
  EXPECT_THROW(lathe::parallel::threads_per_rank(-1), lathe::Error);
}

TEST(ParallelThreads, AutomaticSplitsCoresAmongLocalRanks) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int affinity = CPU_COUNT(&set);
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  {
    ScopedEnv env("OMPI_COMM_WORLD_LOCAL_SIZE", "1");
    EXPECT_EQ(lathe::parallel::local_rank_count(), 1);
    EXPECT_EQ(lathe::parallel::threads_per_rank(0), std::min(affinity, hw));
  }
  {
    ScopedEnv env("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
    EXPECT_EQ(lathe::parallel::threads_per_rank(0), std::max(1, std::min(affinity, hw / 2)));
  }
  {
    ScopedEnv env("OMPI_COMM_WORLD_LOCAL_SIZE", "100000");  // more ranks than cores: still one thread
    EXPECT_EQ(lathe::parallel::local_rank_count(), 100000);
    EXPECT_EQ(lathe::parallel::threads_per_rank(0), 1);
  }
}

TEST(ParallelThreads, ApplySetsOpenMPAndOpenBLAS) {
  const int omp_before = omp_get_max_threads();
  const int blas_before = openblas_get_num_threads();
  lathe::parallel::apply_thread_settings(3);
  EXPECT_EQ(omp_get_max_threads(), 3);
  EXPECT_EQ(openblas_get_num_threads(), 3);
  EXPECT_THROW(lathe::parallel::apply_thread_settings(0), lathe::Error);
  omp_set_num_threads(omp_before);
  lathe::parallel::apply_thread_settings(blas_before);
  omp_set_num_threads(omp_before);
}

TEST(ParallelThreads, RuntimeEnvDefaultsKeepExplicitValues) {
  // The pthreads OpenBLAS: both pools sleep when idle.
  ScopedEnv wait("OMP_WAIT_POLICY", "active"), timeout("OPENBLAS_THREAD_TIMEOUT", "");
  unsetenv("OPENBLAS_THREAD_TIMEOUT");
  EXPECT_TRUE(lathe::parallel::set_runtime_env_defaults(false));  // the timeout was missing
  EXPECT_EQ(std::string(std::getenv("OMP_WAIT_POLICY")), "active");
  EXPECT_EQ(std::string(std::getenv("OPENBLAS_THREAD_TIMEOUT")), "4");
  EXPECT_FALSE(lathe::parallel::set_runtime_env_defaults(false));  // nothing left to set: no re-exec loop
  unsetenv("OMP_WAIT_POLICY");
  EXPECT_TRUE(lathe::parallel::set_runtime_env_defaults(false));
  EXPECT_EQ(std::string(std::getenv("OMP_WAIT_POLICY")), "passive");
}

TEST(ParallelThreads, RuntimeEnvDefaultsLeaveOneOpenMPPoolAlone) {
  // The OpenMP OpenBLAS: libgomp's own bounded spin-then-sleep, nothing set, no re-exec.
  ScopedEnv wait("OMP_WAIT_POLICY", ""), timeout("OPENBLAS_THREAD_TIMEOUT", "");
  unsetenv("OMP_WAIT_POLICY");
  unsetenv("OPENBLAS_THREAD_TIMEOUT");
  EXPECT_FALSE(lathe::parallel::set_runtime_env_defaults(true));
  EXPECT_EQ(std::getenv("OMP_WAIT_POLICY"), nullptr);
  EXPECT_EQ(std::getenv("OPENBLAS_THREAD_TIMEOUT"), nullptr);
  // The no-argument form asks the loaded library.
  EXPECT_EQ(lathe::parallel::set_runtime_env_defaults(), !(openblas_get_parallel() == 2));
}
