// CUDA device discovery. Kernels and the CUDA allocator/backend registration land here
// in later issues; with no GPU (or no driver) the count is 0 and CUDA tests skip.
#include <cuda_runtime.h>

namespace lathe::kernels {

int cuda_device_count_impl() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace lathe::kernels
