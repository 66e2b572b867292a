// Small helpers shared by the ops_*.cpp files (not a public header).
#pragma once

#include <algorithm>
#include <vector>

#include "autograd/function.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::autograd::detail {

using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

inline Tensor zeros_like(const Shape& shape, DType dt, Device dev) { return Tensor::zeros(shape, dt, dev); }

// A 0-d tensor of t's dtype and device (for broadcasting a constant against t).
inline Tensor scalar_like(double v, const Tensor& t) { return Tensor::scalar(v, t.dtype(), t.device()); }

// Axes normalized against rank, sorted, unique; empty means all.
inline std::vector<int64_t> norm_axes(const std::vector<int64_t>& axes, int64_t rank, const char* op) {
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int64_t i = 0; i < rank; ++i) out.push_back(i);
    return out;
  }
  for (int64_t a : axes) {
    int64_t w = a < 0 ? a + rank : a;
    LATHE_CHECK(w >= 0 && w < rank) << op << ": axis " << a << " out of range for rank " << rank;
    out.push_back(w);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// x's shape with the reduced axes set to 1.
inline Shape keepdim_shape(const Shape& s, const std::vector<int64_t>& axes) {
  Shape k = s;
  for (int64_t a : axes) k[a] = 1;
  return k;
}

inline int64_t reduced_count(const Shape& s, const std::vector<int64_t>& axes) {
  int64_t n = 1;
  for (int64_t a : axes) n *= s[a];
  return n;
}

inline Tensor kmul(const Tensor& a, const Tensor& b) { return kernels::binary(kernels::BinaryOp::mul, a, b); }
inline Tensor kadd(const Tensor& a, const Tensor& b) { return kernels::binary(kernels::BinaryOp::add, a, b); }
inline Tensor ksub(const Tensor& a, const Tensor& b) { return kernels::binary(kernels::BinaryOp::sub, a, b); }
inline Tensor kdiv(const Tensor& a, const Tensor& b) { return kernels::binary(kernels::BinaryOp::div, a, b); }
inline Tensor kneg(const Tensor& a) { return kernels::unary(kernels::UnaryOp::neg, a); }

}  // namespace lathe::autograd::detail
