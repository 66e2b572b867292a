#include "kernels/backend.h"

namespace lathe::kernels {

void Backend::unsupported(const char* op, const Tensor& t) const {
  LATHE_FAIL() << "op '" << op << "': no kernel for " << name() << " / " << dtype_name(t.dtype());
  throw;  // unreachable: LATHE_FAIL throws
}

namespace {
Backend*& slot(DeviceType d) {
  static Backend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}
}  // namespace

Backend& cpu_backend();  // kernels/cpu/cpu_backend.cpp
#ifdef LATHE_HAS_CUDA
namespace cuda {
void register_cuda();  // kernels/cuda/runtime.cu: the CUDA allocator and device table
}
Backend& cuda_backend();  // kernels/cuda/cuda_backend.cu

// Registered at start-up: this file is linked into every program that runs an op, and
// registration only stores pointers (no CUDA call, so it is harmless without a GPU).
namespace {
const bool cuda_registered = [] {
  cuda::register_cuda();
  register_backend(DeviceType::cuda, &cuda_backend());
  register_device_ops(DeviceType::cuda, &cuda_backend());
  return true;
}();
}  // namespace
#endif

void register_backend(DeviceType d, Backend* b) { slot(d) = b; }

Backend& backend(Device d) {
  if (d.is_cpu()) return slot(d.type) ? *slot(d.type) : cpu_backend();
  Backend* b = slot(d.type);
  LATHE_CHECK(b != nullptr) << "no kernels for " << d.str()
                            << ": lathe was built without the CUDA backend (configure with -DLATHE_CUDA=on)";
  return *b;
}

}  // namespace lathe::kernels
