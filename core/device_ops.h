// The part of a device's backend that core/ needs: copies, fills and host<->device
// transfers. kernels::Backend derives from this (kernels/backend.h), so one table per
// device serves both the ops and Tensor's own copies; the CPU's is built into core so
// that core works without the kernels library. Every method is pure: a backend that
// forgets one does not compile.
#pragma once

#include "core/device.h"

namespace lathe {

class Tensor;

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;
  // dst and src on this device, same shape (src may be a broadcast view, dst may be
  // strided); the dtype is converted (floats round to nearest even). dst must not overlap src.
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  virtual void fill(const Tensor& dst, double value) = 0;
  // Contiguous tensors of the same dtype and size; one side on the host.
  virtual void copy_from_host(const Tensor& dst, const Tensor& host_src) = 0;
  virtual void copy_to_host(const Tensor& host_dst, const Tensor& src) = 0;
  // Waits for all work queued on the device.
  virtual void synchronize(int device_index) = 0;
};

// The table of a device type. The CPU's is always there; CUDA's is registered by the
// CUDA backend (kernels/cuda) when lathe is built with it.
DeviceOps& device_ops(DeviceType d);
void register_device_ops(DeviceType d, DeviceOps* ops);

}  // namespace lathe
