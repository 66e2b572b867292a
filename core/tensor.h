// Tensor: a view (shape, strides, offset, dtype) of a shared Storage on a device.
//
// Methods here are raw: views and copies, no math, no gradient recording. The
// differentiable versions of every op (including the views) live in
// lathe::autograd (autograd/ops.h). Shapes are int64 vectors; negative dims count
// from the end.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/storage.h"

namespace lathe {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

namespace autograd {
struct AutogradMeta;  // defined in autograd/: grad, grad_fn, hooks
}

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<autograd::AutogradMeta> autograd;  // created lazily by autograd/
};

class Tensor {
 public:
  Tensor() = default;  // undefined
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories -----------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dt = DType::f32, Device dev = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dt = DType::f32, Device dev = Device::cpu());
  static Tensor ones(const Shape& shape, DType dt = DType::f32, Device dev = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dt = DType::f32, Device dev = Device::cpu());
  static Tensor scalar(double value, DType dt = DType::f32, Device dev = Device::cpu());  // 0-d
  // [start, end) by step, like numpy.arange
  static Tensor arange(double start, double end, double step = 1.0, DType dt = DType::f32,
                       Device dev = Device::cpu());
  // N(0, 1) (randn) or U[0, 1) (rand) from the generator's stream; advances it by
  // 2*numel (randn) or numel (rand) values.
  static Tensor randn(const Shape& shape, Generator& gen, DType dt = DType::f32, Device dev = Device::cpu());
  static Tensor rand(const Shape& shape, Generator& gen, DType dt = DType::f32, Device dev = Device::cpu());
  // Copies values (given in row-major order) into a new tensor of dtype_of<T>.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device dev = Device::cpu());
  // Tensor over existing storage.
  static Tensor from_storage(std::shared_ptr<Storage> s, const Shape& shape, DType dt, const Shape& strides = {},
                             int64_t offset = 0);

  // ---- metadata -------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t d) const { return impl().shape[wrap_dim(d)]; }
  int64_t stride(int64_t d) const { return impl().strides[wrap_dim(d)]; }
  int64_t numel() const { return shape_numel(impl().shape); }
  int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return numel() * element_size(); }
  bool is_contiguous() const;
  std::string shape_str() const { return lathe::shape_str(shape()); }
  // Normalizes a possibly negative dim against this tensor's rank (throws when out of range).
  int64_t wrap_dim(int64_t d) const;
  // Short description with values (up to `max_elems` of them), for debugging and tests.
  std::string str(int64_t max_elems = 64) const;

  // ---- data -----------------------------------------------------------------
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  // Pointer to the first element (storage base + offset); checks dtype for data<T>.
  void* raw_data() const;
  template <typename T>
  T* data() const;
  // Value of a one-element tensor, any dtype, as double (CPU, or copied from the device).
  double item() const;
  // Values in row-major order of the logical shape, converted to T.
  template <typename T>
  std::vector<T> to_vector() const;
  // Element at a multi-index, as double (slow; for tests).
  double at(const std::vector<int64_t>& idx) const;

  // ---- views (share storage) ---------------------------------------------------
  Tensor view(const Shape& shape) const;     // needs compatible strides; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // view when possible, otherwise a contiguous copy
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes dim
  Tensor expand(const Shape& shape) const;          // broadcast size-1 dims (stride 0); -1 keeps a size
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;

  // ---- copies ---------------------------------------------------------------------
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;       // always a new contiguous copy
  Tensor to(DType dt) const;  // itself when already dt; f->bf16/f16 rounds to nearest even
  Tensor to(Device dev) const;
  // Copies src into this tensor (same shape, or broadcastable to it); casts dtypes.
  void copy_(const Tensor& src) const;
  void fill_(double value) const;
  void zero_() const { fill_(0.0); }
  // Points this tensor (and every handle sharing its TensorImpl, e.g. a module's parameter
  // registry) at other's data: storage, shape, strides, offset and dtype. Autograd flags stay.
  // Used to cast or move parameters in place and to load weights of another dtype.
  void set_data(const Tensor& other) const;

  // ---- autograd (flags here; the machinery is in autograd/) -------------------------
  bool requires_grad() const { return impl_ && impl().requires_grad; }
  // Only on leaves with a floating dtype; returns *this for chaining.
  const Tensor& set_requires_grad(bool r = true) const;
  // The following are defined in autograd/ (link lathe_autograd to use them).
  Tensor grad() const;                            // accumulated gradient, undefined if none
  void set_grad(const Tensor& g) const;
  void backward(const Tensor& grad_output = Tensor()) const;  // scalar outputs may omit the seed
  bool is_leaf() const;
  Tensor detach() const;  // same storage, no history, requires_grad false

  // ---- identity ----------------------------------------------------------------------
  TensorImpl& impl() const {
    LATHE_CHECK(impl_ != nullptr) << "use of an undefined tensor";
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Broadcast shape of a and b (numpy rules); throws naming `op` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Strided copy with dtype conversion between two CPU tensors of the same shape
// (dst may not alias src). Used by contiguous/to/copy_; exposed for kernels.
void copy_strided_cpu(const Tensor& dst, const Tensor& src);

// ---- template definitions -------------------------------------------------------
template <typename T>
T* Tensor::data() const {
  LATHE_CHECK(dtype() == dtype_of<T>::value)
      << "data<" << dtype_name(dtype_of<T>::value) << ">() on a tensor of dtype " << dtype_name(dtype());
  return static_cast<T*>(raw_data());
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device dev) {
  LATHE_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape))
      << "from_vector: " << values.size() << " values for shape " << lathe::shape_str(shape);
  Tensor t = empty(shape, dtype_of<T>::value, Device::cpu());
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return dev.is_cpu() ? t : t.to(dev);
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = to(Device::cpu()).to(dtype_of<T>::value).contiguous();
  std::vector<T> out(static_cast<size_t>(c.numel()));
  if (!out.empty()) std::memcpy(out.data(), c.raw_data(), out.size() * sizeof(T));
  return out;
}

}  // namespace lathe
