// How many compute threads each rank should use, so that the ranks on one node share
// its cores instead of oversubscribing them (N ranks x all cores each).
#pragma once

namespace lathe::parallel {

// Ranks of this job on this node: OMPI_COMM_WORLD_LOCAL_SIZE (or MPI_LOCALNRANKS) when
// the launcher sets it; else, with MPI initialized, the size of MPI_COMM_TYPE_SHARED
// (a collective call); else 1.
int local_rank_count();

// requested > 0: that many. 0: the cores this process may run on, divided among the
// node's ranks, min(affinity cores, hardware threads / local ranks), at least 1.
// Negative: throws.
int threads_per_rank(int requested);

// Sets the OpenMP and OpenBLAS thread counts of this process (n >= 1).
void apply_thread_settings(int n);

// How idle compute threads wait, set before the runtimes are loaded. Both runtimes read it
// from the environment once, when they are loaded (before main), so this sets defaults in the
// environment; a variable that is already set is kept. Returns true when it set one: the
// caller must re-execute itself for them to take effect (the lathe CLI does, cli/main.cpp).
// Which defaults depends on the OpenBLAS the process loaded (openblas_get_parallel()):
// - the OpenMP build (the default since bench/README.md section 20): BLAS and lathe's own
//   loops share libgomp's one pool, so nothing is set and libgomp's default applies: a
//   worker spins briefly (GOMP_SPINCOUNT 300,000) and then sleeps, and spins less when a
//   process has more threads than cores. On a quiet 2-core machine that is 1.10-1.23x the
//   tokens/s of the pthreads build with passive waiting at 2 threads (section 20).
// - the pthreads build: two pools take turns on the same cores (OpenMP loops between BLAS
//   calls), and an idle one must sleep rather than spin or it steals the cores the other
//   needs: OMP_WAIT_POLICY=passive and OPENBLAS_THREAD_TIMEOUT=4 (OpenBLAS's workers sleep
//   after 2^4 idle cycles instead of about 2^28). Measured in sections 4 and 6.
bool set_runtime_env_defaults();
// The same for a given build: blas_uses_openmp is what openblas_get_parallel() == 2 says.
bool set_runtime_env_defaults(bool blas_uses_openmp);

}  // namespace lathe::parallel
