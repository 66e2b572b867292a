// NcclCommunicator: the Communicator for CUDA tensors (NCCL), bootstrapped by a host
// communicator (MPI) that also serves every host tensor, so one object takes any tensor
// and picks the transport by the tensor's device.
//
// - Bootstrap: rank 0 makes the NCCL unique id and broadcasts it over the host
//   communicator; every rank then joins with ncclCommInitRank on its GPU.
// - Streams: NCCL runs on a stream of its own. Before a collective, an event recorded on
//   the compute stream (kernels' stream) orders it after the kernels that produced the
//   tensor; after it, an event on the NCCL stream is what Work::test/wait look at, and
//   wait() also makes the compute stream wait on it, so later kernels see the result.
// - Timeouts: wait() polls the event against timeout(); on expiry the NCCL communicator is
//   aborted (ncclCommAbort, so no kernel hangs forever) and the job ends, or the wait
//   throws, as the MPI backend does (TimeoutAction).
// - bf16 and f16 reduce natively in NCCL; avg uses ncclAvg.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace lathe::parallel {

// The GPU a rank should use under mpirun: its node-local rank (OMPI_COMM_WORLD_LOCAL_RANK,
// MPI_LOCALRANKID, SLURM_LOCALID, or LOCAL_RANK). Throws a clear error when the node's
// ranks outnumber its GPUs or there is no GPU.
Device local_cuda_device();

// True when lathe was built with NCCL (the CUDA backend).
bool nccl_available();

// A communicator over the same ranks as `host` that runs CUDA tensors through NCCL on
// `device` and host tensors through `host`. Collective over `host`. Throws without NCCL.
std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host, Device device);

// The communicator for tensors on `device`: `host` itself for the CPU, an NCCL one
// (cached per host communicator and device) for CUDA.
std::shared_ptr<Communicator> communicator_for(const std::shared_ptr<Communicator>& host, Device device);

}  // namespace lathe::parallel
