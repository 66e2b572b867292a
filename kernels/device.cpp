#include "kernels/ops.h"

namespace lathe::kernels {

#ifdef LATHE_HAS_CUDA
int cuda_device_count_impl();  // kernels/cuda/device.cu
int cuda_device_count() { return cuda_device_count_impl(); }
#else
int cuda_device_count() { return 0; }
#endif

}  // namespace lathe::kernels
