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

}  // namespace lathe::parallel
