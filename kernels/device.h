// Devices as the layers above kernels/ see them: how many GPUs, waiting for one, the
// CUDA caching allocator's cache, pinned host buffers. Every function works in a build
// without CUDA (no GPUs, nothing cached, ordinary host memory).
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor.h"

namespace lathe::kernels {

// Number of CUDA devices usable by this build (0 without the CUDA backend or without a GPU).
int cuda_device_count();
// "NVIDIA H200 (sm_90, 132 SMs, 140 GiB)" for a CUDA device, "cpu" for the CPU.
std::string device_description(Device d);
// Waits for the work queued on a device (no-op on the CPU).
void synchronize(Device d);
// Bytes the CUDA caching allocator holds in its free lists (not in use by any tensor).
size_t cuda_cached_bytes();
// Returns the cached blocks to the driver (cudaFree), as torch.cuda.empty_cache().
void cuda_empty_cache();
// Bytes reserved from the driver (in use + cached), and the peak of that.
size_t cuda_reserved_bytes();
size_t cuda_peak_reserved_bytes();
// Testing aid: while on, every CUDA allocation (fresh or reused) is filled with 0xFF bytes
// (NaN in every float dtype, -1 in the signed integers) before it is handed out, so an
// output element a kernel forgot to write shows up in a comparison. Also set by the
// environment variable LATHE_CUDA_POISON=1.
void cuda_poison_allocations(bool on);
// A host tensor in page-locked memory (fast, asynchronous host<->device copies); ordinary
// host memory in a build without CUDA. Counted like any CPU tensor.
Tensor pinned_empty(const Shape& shape, DType dt);

}  // namespace lathe::kernels
