#include "parallel/threads.h"

#include <mpi.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <utility>

#include "core/error.h"

extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_parallel(void);  // 0: serial build, 1: pthreads, 2: OpenMP

namespace lathe::parallel {

namespace {
int positive_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return (end && *end == '\0' && n > 0) ? static_cast<int>(n) : 0;
}

int affinity_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 0;
}
}  // namespace

int local_rank_count() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"}) {
    if (int n = positive_env(name)) return n;
  }
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) {
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
      int n = 1;
      MPI_Comm_size(node, &n);
      MPI_Comm_free(&node);
      return std::max(1, n);
    }
  }
  return 1;
}

int threads_per_rank(int requested) {
  LATHE_CHECK(requested >= 0) << "threads_per_rank: requested " << requested
                              << " threads; use 0 for automatic or a positive count";
  if (requested > 0) return requested;
  const int hw = std::max(1u, std::thread::hardware_concurrency());
  int cores = affinity_cores();
  if (cores <= 0) cores = hw;
  // A launcher that binds ranks to cores already divided them: the affinity mask wins.
  return std::max(1, std::min(cores, hw / local_rank_count()));
}

bool set_runtime_env_defaults() { return set_runtime_env_defaults(openblas_get_parallel() == 2); }

bool set_runtime_env_defaults(bool blas_uses_openmp) {
  if (blas_uses_openmp) return false;  // one libgomp pool: its own default wait
  bool changed = false;
  for (const auto& [name, value] : {std::pair<const char*, const char*>{"OMP_WAIT_POLICY", "passive"},
                                    std::pair<const char*, const char*>{"OPENBLAS_THREAD_TIMEOUT", "4"}}) {
    if (std::getenv(name) == nullptr && setenv(name, value, 0) == 0) changed = true;
  }
  return changed;
}

void apply_thread_settings(int n) {
  LATHE_CHECK(n >= 1) << "apply_thread_settings: thread count must be >= 1, got " << n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

}  // namespace lathe::parallel
