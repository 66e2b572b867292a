#include "kernels/backend.h"

namespace lathe::kernels {

void Backend::missing(const char* op, const Tensor& t) const {
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

void register_backend(DeviceType d, Backend* b) { slot(d) = b; }

Backend& backend(Device d) {
  if (d.is_cpu()) return slot(d.type) ? *slot(d.type) : cpu_backend();
  Backend* b = slot(d.type);
  LATHE_CHECK(b != nullptr) << "no kernels for " << d.str()
                            << ": lathe was built without the CUDA backend (configure with -DLATHE_CUDA=on)";
  return *b;
}

}  // namespace lathe::kernels
