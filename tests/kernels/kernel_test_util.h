// Helpers shared by the kernel tests: error capture, index iteration, closeness checks,
// central finite differences in f64 (on any device), and the device parity harness: a
// value-parameterised fixture whose instances run the same test on every available device
// (the CPU always, cuda:0 when a GPU is present). Inputs are drawn on the CPU from seeded
// generators, moved to the device under test with their layout kept, the op runs there, and
// the result comes back to be compared with the reference loops of reference.h.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/storage.h"
#include "core/tensor.h"
#include "kernels/device.h"

namespace lathe {
// gtest prints a test's parameter with this (found by ADL): "cpu", "cuda:0".
inline void PrintTo(const Device& d, std::ostream* os) { *os << d.str(); }
}  // namespace lathe

namespace lathe::kernel_test {

// The message of the lathe::Error that f throws, or "<no error>".
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

inline bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Calls f with every multi-index of shape, in row-major order.
inline void for_each_index(const Shape& shape, const std::function<void(const std::vector<int64_t>&)>& f) {
  int64_t n = shape_numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t e = 0; e < n; ++e) {
    f(idx);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

inline std::vector<double> vec(const Tensor& t) { return t.to_vector<double>(); }

inline void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                         const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {  // e.g. the log-sum-exp of a fully masked row
      EXPECT_EQ(got[i], want[i]) << what << " at flat index " << i;
      continue;
    }
    EXPECT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " at flat index " << i;
  }
}

inline double dot(const Tensor& a, const Tensor& b) {
  auto va = vec(a), vb = vec(b);
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
  return s;
}

// The one-element view of x at multi-index idx (a narrow in every dim).
inline Tensor element_view(const Tensor& x, const std::vector<int64_t>& idx) {
  Tensor e = x;
  for (size_t d = 0; d < idx.size(); ++d) e = e.narrow(static_cast<int64_t>(d), idx[d], 1);
  return e;
}

// Central differences of the scalar f() with respect to every element of the f64 tensor x,
// in row-major order. x may live on any device and have any layout: each element is set in
// place through a one-element view (fill_ runs on x's device) and restored bit-exactly.
inline std::vector<double> numeric_grad(const Tensor& x, const std::function<double()>& f, double h = 1e-6) {
  LATHE_CHECK(x.dtype() == DType::f64) << "numeric_grad: x has dtype " << dtype_name(x.dtype()) << ", needs f64";
  const std::vector<double> keep = x.to_vector<double>();
  std::vector<double> g;
  g.reserve(keep.size());
  for_each_index(x.shape(), [&](const std::vector<int64_t>& idx) {
    const Tensor e = element_view(x, idx);
    const double k = keep[g.size()];
    e.fill_(k + h);
    const double fp = f();
    e.fill_(k - h);
    const double fm = f();
    e.fill_(k);
    g.push_back((fp - fm) / (2 * h));
  });
  return g;
}

// ---- the device parity harness ------------------------------------------------------------

// Every device this build and machine can run the kernels on.
inline std::vector<Device> available_devices() {
  std::vector<Device> d{Device::cpu()};
  if (kernels::cuda_device_count() > 0) d.push_back(Device::cuda(0));
  return d;
}

inline std::string device_param_name(const ::testing::TestParamInfo<Device>& info) {
  return info.param.is_cpu() ? "cpu" : "cuda";
}

// t on `dev` with t's shape, strides and offset (its whole storage is copied), so strided,
// sliced and stride-0 views reach the device kernels as views, as they do on the CPU.
// On t's own device: t itself, so the CPU instance runs exactly what the CPU test ran.
inline Tensor to_device_keep_layout(const Tensor& t, Device dev) {
  if (!t.defined() || t.device() == dev) return t;
  const int64_t n = static_cast<int64_t>(t.storage()->nbytes() / t.element_size());
  Tensor moved = Tensor::from_storage(t.storage(), {n}, t.dtype()).to(dev);
  return Tensor::from_storage(moved.storage(), t.shape(), t.dtype(), t.strides(), t.offset());
}

// Tolerance for a result computed on `dev` against a double-precision reference that the
// CPU meets within cpu_tol. The CPU keeps its own tolerance; on CUDA, f32 results differ by
// ~1e-6 relative (fused multiply-adds, another summation order, the device's libm) and
// bf16 results by one more rounding step. A tolerance of 0 (copies, selections, exact
// integer math) stays exact on every device.
inline double tol(Device dev, DType dt, double cpu_tol) {
  if (dev.is_cpu() || cpu_tol == 0.0) return cpu_tol;
  switch (dt) {
    case DType::f64: return cpu_tol + 1e-13;
    case DType::f32: return cpu_tol + 2e-6;
    case DType::bf16: return cpu_tol + 4e-3;
    case DType::f16: return cpu_tol + 1e-3;
    default: return cpu_tol;
  }
}

// Base of every per-device test: GetParam() is the device under test.
class DeviceTest : public ::testing::TestWithParam<Device> {
 protected:
  Device dev() const { return GetParam(); }
  bool on_cpu() const { return dev().is_cpu(); }
  // An input (made on the CPU) on the device under test, layout kept.
  Tensor on(const Tensor& t) const { return to_device_keep_layout(t, dev()); }
  // A result of an op that ran on the device under test, checked to live there, on the CPU.
  Tensor back(const Tensor& t) const {
    if (t.defined()) {
      EXPECT_EQ(t.device(), dev()) << "result on " << t.device().str() << ", not " << dev().str();
    }
    return t.defined() ? t.to(Device::cpu()) : t;
  }
  std::vector<double> vback(const Tensor& t) const { return vec(back(t)); }
  double tol(DType dt, double cpu_tol) const { return kernel_test::tol(dev(), dt, cpu_tol); }
};

}  // namespace lathe::kernel_test

// Declares the per-device test suite `Suite` (TEST_P(Suite, Name) { ... dev() ... }) and
// instantiates it once per available device, named Device/Suite.Name/cpu and .../cuda.
#define LATHE_DEVICE_TEST_SUITE(Suite)                                  \
  class Suite : public ::lathe::kernel_test::DeviceTest {};             \
  INSTANTIATE_TEST_SUITE_P(Device, Suite,                               \
                           ::testing::ValuesIn(::lathe::kernel_test::available_devices()), \
                           ::lathe::kernel_test::device_param_name)
