// CPU indexing kernels: gather / index_select (reads) and scatter_add / index_add
// (accumulating writes).
//
// Reads use a view of x whose stride along `axis` is 0, so that the element an output
// position reads is "that view's element + index * x.stride(axis)"; index_select is the
// same kernel with its 1-D index broadcast along the other dims. Accumulating writes are
// split across threads by the positions *off* the axis, which never collide, and walk the
// axis serially, so duplicate indices add deterministically and without races.
// Indices are range-checked before anything is written.
#include <cstring>
#include <sstream>

#include "kernels/cpu/elementwise.h"

namespace lathe::kernels::cpu {

using detail::comp_t;
using detail::for_each_row;
using detail::ld;
using detail::st;

namespace {

// x viewed with the shape `shape` and stride 0 along `axis`.
Tensor axis_base_view(const Tensor& x, const Shape& shape, int64_t axis) {
  Shape s = x.strides();
  s[axis] = 0;
  return x.as_strided(shape, s, x.offset());
}

template <typename I>
int64_t first_bad(const I* p, int64_t n, int64_t lim) {
  int64_t bad = n;
#pragma omp parallel for schedule(static) reduction(min : bad) if (n > detail::kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < 0 || static_cast<int64_t>(p[i]) >= lim) bad = std::min(bad, i);
  return bad;
}

template <typename V, typename I>
void gather_t(const Tensor& xv, int64_t axis_bstride, const Tensor& index, const Tensor& out) {
  for_each_row<3>({&out, &index, &xv}, [&](const std::array<char*, 3>& p, const std::array<int64_t, 3>& s,
                                            int64_t n) {
    if (s[1] == 0 && s[0] == int64_t(sizeof(V)) && s[2] == int64_t(sizeof(V))) {  // one index for the row
      int64_t k = static_cast<int64_t>(*reinterpret_cast<const I*>(p[1]));
      std::memcpy(p[0], p[2] + k * axis_bstride, static_cast<size_t>(n) * sizeof(V));
      return;
    }
    for (int64_t j = 0; j < n; ++j) {
      int64_t k = static_cast<int64_t>(*reinterpret_cast<const I*>(p[1] + j * s[1]));
      *reinterpret_cast<V*>(p[0] + j * s[0]) = *reinterpret_cast<const V*>(p[2] + j * s[2] + k * axis_bstride);
    }
  });
}

template <typename V>
void gather_dispatch_index(const Tensor& xv, int64_t axis_bstride, const Tensor& index, const Tensor& out) {
  if (index.dtype() == DType::i64) gather_t<V, int64_t>(xv, axis_bstride, index, out);
  else gather_t<V, int32_t>(xv, axis_bstride, index, out);
}

void gather_any(const Tensor& x, int64_t axis, const Tensor& index_full, const Tensor& out) {
  Tensor xv = axis_base_view(x, out.shape(), axis);
  int64_t bstride = x.stride(axis) * static_cast<int64_t>(x.element_size());
  switch (x.element_size()) {
    case 1: return gather_dispatch_index<uint8_t>(xv, bstride, index_full, out);
    case 2: return gather_dispatch_index<uint16_t>(xv, bstride, index_full, out);
    case 4: return gather_dispatch_index<uint32_t>(xv, bstride, index_full, out);
    case 8: return gather_dispatch_index<uint64_t>(xv, bstride, index_full, out);
    default: LATHE_FAIL() << "gather: unsupported element size " << x.element_size();
  }
}

// out[pos with pos[axis] = index[pos]] += src[pos] for every pos of index/src's shape.
template <typename T, typename I>
void scatter_t(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  using C = comp_t<T>;
  const int64_t L = index.size(axis);
  const int64_t is = index.stride(axis) * int64_t(sizeof(I));
  const int64_t ss = src.stride(axis) * int64_t(sizeof(T));
  const int64_t os = out.stride(axis) * int64_t(sizeof(T));
  // off-axis positions: the three tensors with the axis removed
  Tensor ov = axis_base_view(out, index.shape(), axis).select(axis, 0);
  Tensor iv = index.select(axis, 0), sv = src.select(axis, 0);
  for_each_row<3>({&ov, &iv, &sv}, [&](const std::array<char*, 3>& p, const std::array<int64_t, 3>& s, int64_t n) {
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        int64_t k = static_cast<int64_t>(*reinterpret_cast<const I*>(p[1] + j * s[1] + i * is));
        T* o = reinterpret_cast<T*>(p[0] + j * s[0] + k * os);
        C v = ld(*reinterpret_cast<const T*>(p[2] + j * s[2] + i * ss));
        *o = st<T>(static_cast<C>(ld(*o) + v));
      }
    }
  }, detail::kParallelGrain / std::max<int64_t>(L, 1));
}

void scatter_any(const char* op, int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  if (index.numel() == 0) return;
  LATHE_DISPATCH_DTYPE(out.dtype(), T, {
    if (index.dtype() == DType::i64) scatter_t<T, int64_t>(axis, index, src, out);
    else scatter_t<T, int32_t>(axis, index, src, out);
  });
  (void)op;
}

// A 1-D index along `axis`, broadcast to `shape` (stride 0 off the axis).
Tensor broadcast_index(const Tensor& index, const Shape& shape, int64_t axis) {
  Shape st(shape.size(), 0);
  st[axis] = index.stride(0);
  return index.as_strided(shape, st, index.offset());
}

std::string context(const char* op, const Tensor& x, int64_t axis) {
  std::ostringstream os;
  os << op << " (x " << x.shape_str() << ", axis " << axis << ")";
  return os.str();
}

}  // namespace

void check_index_range(const char* op, const Tensor& index, int64_t n) {
  LATHE_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32)
      << op << ": index dtype must be i64 or i32, got " << dtype_name(index.dtype());
  Tensor c = index.contiguous();
  const int64_t m = c.numel();
  int64_t bad = index.dtype() == DType::i64 ? first_bad(c.data<int64_t>(), m, n) : first_bad(c.data<int32_t>(), m, n);
  if (bad < m) {
    int64_t v = index.dtype() == DType::i64 ? c.data<int64_t>()[bad] : c.data<int32_t>()[bad];
    LATHE_FAIL() << op << ": index " << v << " (element " << bad << " of index " << index.shape_str()
                 << ") is out of range [0, " << n << ")";
  }
}

void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) {
  check_index_range(context("gather", x, axis).c_str(), index, x.size(axis));
  gather_any(x, axis, index, out);
}

void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) {
  check_index_range(context("index_select", x, axis).c_str(), index, x.size(axis));
  gather_any(x, axis, broadcast_index(index, out.shape(), axis), out);
}

void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  check_index_range(context("scatter_add", out, axis).c_str(), index, out.size(axis));
  scatter_any("scatter_add", axis, index, src, out);
}

void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
  check_index_range(context("index_add", out, axis).c_str(), index, out.size(axis));
  scatter_any("index_add", axis, broadcast_index(index, src.shape(), axis), src, out);
}

}  // namespace lathe::kernels::cpu
