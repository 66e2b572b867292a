#include "kernels/device.h"

#include "core/device_ops.h"

namespace lathe::kernels {

void synchronize(Device d) {
  if (!d.is_cpu()) device_ops(d.type).synchronize(d.index);
}

#ifndef LATHE_HAS_CUDA
std::string device_description(Device d) { return d.str(); }
int cuda_device_count() { return 0; }
size_t cuda_cached_bytes() { return 0; }
void cuda_empty_cache() {}
void cuda_poison_allocations(bool) {}
size_t cuda_reserved_bytes() { return 0; }
size_t cuda_peak_reserved_bytes() { return 0; }
Tensor pinned_empty(const Shape& shape, DType dt) { return Tensor::empty(shape, dt, Device::cpu()); }
#endif

}  // namespace lathe::kernels
