// Reductions: axis normalization, output shape and dtype rules; kernels in the Backend
// (kernels/cpu/reduce.cpp on the CPU).
//
// Output dtypes: sum of an integer tensor is i64 (a u8 mask sums to a count), argmax is
// i64, everything else keeps x's dtype; mean/var/norm need a floating x.
#include <algorithm>
#include <sstream>

#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

namespace {

const char* reduce_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
    case ReduceOp::argmax: return "argmax";
    case ReduceOp::var: return "var";
    case ReduceOp::norm: return "norm";
  }
  return "unknown";
}

std::string axes_str(const std::vector<int64_t>& axes) {
  std::ostringstream os;
  os << "{";
  for (size_t i = 0; i < axes.size(); ++i) os << (i ? ", " : "") << axes[i];
  os << "}";
  return os.str();
}

}  // namespace

Tensor reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes_in, bool keepdim, int64_t correction) {
  const std::string name = std::string("reduce(") + reduce_name(op) + ")";
  LATHE_CHECK(x.defined()) << name << ": x is an undefined tensor";
  const int64_t nd = x.dim();
  std::vector<int64_t> axes;
  for (int64_t a : axes_in) {
    int64_t w = a < 0 ? a + nd : a;
    if (nd == 0 && (a == 0 || a == -1)) continue;  // a 0-d tensor has nothing to reduce
    LATHE_CHECK(w >= 0 && w < nd) << name << ": axis " << a << " is out of range for x "
                                  << x.shape_str() << " (axes " << axes_str(axes_in) << ")";
    LATHE_CHECK(std::find(axes.begin(), axes.end(), w) == axes.end())
        << name << ": axis " << a << " repeated in " << axes_str(axes_in) << " for x " << x.shape_str();
    axes.push_back(w);
  }
  if (op == ReduceOp::argmax) {
    LATHE_CHECK(axes_in.size() == 1 && nd >= 1)
        << name << ": takes exactly one axis, got " << axes_str(axes_in) << " for x " << x.shape_str();
  } else if (axes_in.empty()) {
    for (int64_t d = 0; d < nd; ++d) axes.push_back(d);
  }
  std::sort(axes.begin(), axes.end());

  const bool integer = !is_floating(x.dtype());
  if (op == ReduceOp::mean || op == ReduceOp::var || op == ReduceOp::norm) {
    LATHE_CHECK(!integer) << name << ": needs a floating dtype, got " << dtype_name(x.dtype()) << " "
                          << x.shape_str();
  }
  int64_t R = 1;
  Shape keep_shape = x.shape(), out_shape;
  for (int64_t a : axes) {
    R *= x.size(a);
    keep_shape[a] = 1;
  }
  for (int64_t d = 0; d < nd; ++d)
    if (!std::binary_search(axes.begin(), axes.end(), d)) out_shape.push_back(x.size(d));
  if (op == ReduceOp::max || op == ReduceOp::min || op == ReduceOp::argmax) {
    LATHE_CHECK(R > 0 || shape_numel(keep_shape) == 0)
        << name << ": cannot reduce over an empty set of elements (x " << x.shape_str() << ", axes "
        << axes_str(axes_in) << ")";
  }
  DType odt = x.dtype();
  if (op == ReduceOp::argmax || (op == ReduceOp::sum && integer)) odt = DType::i64;
  Tensor out = Tensor::empty(keep_shape, odt, x.device());
  backend(x.device()).reduce(op, x, axes, correction, out);
  return keepdim ? out : out.view(out_shape);
}

Tensor sum_to_shape(const Tensor& x, const Shape& shape) {
  LATHE_CHECK(x.defined()) << "sum_to_shape: x is an undefined tensor";
  const int64_t nd = x.dim(), ns = static_cast<int64_t>(shape.size());
  LATHE_CHECK(ns <= nd) << "sum_to_shape: x " << x.shape_str() << " cannot be summed to " << shape_str(shape);
  std::vector<int64_t> axes;
  for (int64_t d = 0; d < nd; ++d) {
    if (d < nd - ns) {
      axes.push_back(d);
      continue;
    }
    int64_t want = shape[d - (nd - ns)];
    LATHE_CHECK(want == x.size(d) || want == 1)
        << "sum_to_shape: x " << x.shape_str() << " cannot be summed to " << shape_str(shape)
        << " (dim " << d << ": " << x.size(d) << " vs " << want << ")";
    if (want == 1 && x.size(d) != 1) axes.push_back(d);
  }
  // Nothing to sum: x itself (no copy), as for any broadcast that was a no-op.
  if (axes.empty()) return x.shape() == shape ? x : x.reshape(shape);
  Tensor s = reduce(ReduceOp::sum, x, axes, /*keepdim=*/true);
  if (s.dtype() != x.dtype()) s = s.to(x.dtype());
  return s.view(shape);
}

}  // namespace lathe::kernels
