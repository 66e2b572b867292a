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

// OpenMP's and OpenBLAS's thread pools take turns on the same cores (OpenMP loops between
// BLAS calls; attention's tile GEMMs run serial BLAS inside OpenMP regions). An idle pool
// must sleep rather than spin, or it steals the cores the other one needs. Both runtimes
// read that setting from the environment once, when they are loaded (before main), so
// this sets the defaults in the environment: OMP_WAIT_POLICY=passive and
// OPENBLAS_THREAD_TIMEOUT=4 (OpenBLAS's workers sleep after 2^4 idle cycles instead of
// about 2^28). A variable that is already set is kept. Returns true when it set one: the
// caller must re-execute itself for them to take effect (the lathe CLI does,
// cli/main.cpp). Measured in bench/README.md, section 6.
bool set_runtime_env_defaults();

}  // namespace lathe::parallel
