// A job that loses a rank: run under `mpirun -np 2 kill_rank exit|hang`.
//   exit: rank 1 ends abruptly (std::_Exit(3), no MPI_Finalize) before the all_reduce.
//   hang: rank 1 never arrives at the all_reduce (sleeps far past the timeout).
// Rank 0 enters all_reduce with a 5 s timeout. Either way the job must end non-zero
// with a message (Open MPI's for the dead rank, lathe's timeout message for the hang).
// Ranks above 1 (with -np 3) wait in the all_reduce with a 20 s timeout, so rank 0 times
// out first and its probe finds them answering: the message names rank 1 alone.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "parallel/mpi_communicator.h"

int main(int argc, char** argv) {
  auto comm = lathe::parallel::init_mpi(&argc, &argv);
  const bool hang = argc > 1 && std::strcmp(argv[1], "hang") == 0;
  comm->set_timeout(comm->rank() <= 1 ? 5 : 20);
  comm->barrier();  // both ranks are up
  if (comm->rank() == 1) {
    if (hang) {
      std::this_thread::sleep_for(std::chrono::seconds(120));
    } else {
      std::fprintf(stderr, "kill_rank: rank 1 exits abruptly with code 3\n");
      std::fflush(stderr);
      std::_Exit(3);
    }
  }
  lathe::Tensor t = lathe::Tensor::ones({8});
  comm->all_reduce(t);
  std::printf("kill_rank: rank %d: all_reduce completed, which it should not have\n", comm->rank());
  return 0;
}
