// Indexing ops (gather, scatter_add, index_select, index_add) and the copying shape ops
// (concat, stack) plus split. Index values are range-checked by the kernels, which see
// the data; the shape rules are checked here.
#include <numeric>
#include <sstream>

#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

namespace {

int64_t norm_axis(const char* op, int64_t axis, int64_t rank, const Tensor& x) {
  int64_t w = axis < 0 ? axis + rank : axis;
  LATHE_CHECK(w >= 0 && w < rank) << op << ": axis " << axis << " is out of range for x " << x.shape_str();
  return w;
}

void check_index_tensor(const char* op, const Tensor& x, const Tensor& index) {
  LATHE_CHECK(x.defined() && index.defined()) << op << ": undefined input tensor";
  LATHE_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32)
      << op << ": index must be i64 or i32, got " << dtype_name(index.dtype()) << " " << index.shape_str();
  LATHE_CHECK(index.device() == x.device()) << op << ": index is on " << index.device().str() << ", x on "
                                            << x.device().str();
  LATHE_CHECK(x.dim() >= 1) << op << ": x must have at least one dim, got " << x.shape_str();
}

void check_src(const char* op, const Tensor& x, const Tensor& src) {
  LATHE_CHECK(src.defined()) << op << ": src is an undefined tensor";
  LATHE_CHECK(src.dtype() == x.dtype()) << op << ": dtype mismatch: x is " << dtype_name(x.dtype()) << " "
                                        << x.shape_str() << ", src is " << dtype_name(src.dtype()) << " "
                                        << src.shape_str();
  LATHE_CHECK(src.device() == x.device()) << op << ": src is on " << src.device().str() << ", x on "
                                          << x.device().str();
}

// index has x's rank and fits inside x off the axis (gather / scatter_add rule).
void check_fits(const char* op, const Tensor& x, int64_t axis, const Tensor& index) {
  bool ok = index.dim() == x.dim();
  for (int64_t d = 0; ok && d < x.dim(); ++d) ok = d == axis || index.size(d) <= x.size(d);
  LATHE_CHECK(ok) << op << ": index " << index.shape_str() << " must have x's rank and fit in x "
                  << x.shape_str() << " off axis " << axis;
}

}  // namespace

Tensor gather(const Tensor& x, int64_t axis, const Tensor& index) {
  check_index_tensor("gather", x, index);
  axis = norm_axis("gather", axis, x.dim(), x);
  check_fits("gather", x, axis, index);
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  if (out.numel() > 0) backend(x.device()).gather(x, axis, index, out);
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src) {
  check_index_tensor("scatter_add", x, index);
  check_src("scatter_add", x, src);
  axis = norm_axis("scatter_add", axis, x.dim(), x);
  check_fits("scatter_add", x, axis, index);
  LATHE_CHECK(src.shape() == index.shape()) << "scatter_add: src " << src.shape_str() << " and index "
                                            << index.shape_str() << " must have the same shape (x "
                                            << x.shape_str() << ")";
  Tensor out = x.clone();
  if (index.numel() > 0) backend(x.device()).scatter_add(axis, index, src, out);
  return out;
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index) {
  check_index_tensor("index_select", x, index);
  axis = norm_axis("index_select", axis, x.dim(), x);
  LATHE_CHECK(index.dim() == 1) << "index_select: index must be 1-D, got " << index.shape_str() << " (x "
                                << x.shape_str() << ")";
  Shape s = x.shape();
  s[axis] = index.size(0);
  Tensor out = Tensor::empty(s, x.dtype(), x.device());
  if (out.numel() > 0) backend(x.device()).index_select(x, axis, index, out);
  return out;
}

Tensor index_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src) {
  check_index_tensor("index_add", x, index);
  check_src("index_add", x, src);
  axis = norm_axis("index_add", axis, x.dim(), x);
  LATHE_CHECK(index.dim() == 1) << "index_add: index must be 1-D, got " << index.shape_str() << " (x "
                                << x.shape_str() << ")";
  Shape s = x.shape();
  s[axis] = index.size(0);
  LATHE_CHECK(src.shape() == s) << "index_add: src " << src.shape_str() << " must be " << shape_str(s) << " (x "
                                << x.shape_str() << ", index " << index.shape_str() << ", axis " << axis << ")";
  Tensor out = x.clone();
  if (src.numel() > 0) backend(x.device()).index_add(axis, index, src, out);
  return out;
}

Tensor sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols) {
  const char* op = "sparse_delta_grad";
  LATHE_CHECK(x.defined() && dy.defined() && rows.defined() && cols.defined()) << op << ": undefined input";
  LATHE_CHECK(x.dim() == 2 && dy.dim() == 2 && x.size(0) == dy.size(0))
      << op << ": x " << x.shape_str() << " and dy " << dy.shape_str() << " must be [T, in] and [T, out]";
  LATHE_CHECK(is_floating(x.dtype()) && dy.dtype() == x.dtype())
      << op << ": x and dy must share one float dtype, got " << dtype_name(x.dtype()) << " and "
      << dtype_name(dy.dtype());
  LATHE_CHECK(rows.dtype() == DType::i64 && cols.dtype() == DType::i64 && rows.dim() == 1 &&
              cols.shape() == rows.shape())
      << op << ": rows and cols must be i64 vectors of one length, got " << rows.shape_str() << " "
      << dtype_name(rows.dtype()) << " and " << cols.shape_str() << " " << dtype_name(cols.dtype());
  LATHE_CHECK(dy.device() == x.device() && rows.device() == x.device() && cols.device() == x.device())
      << op << ": x on " << x.device().str() << ", dy on " << dy.device().str() << ", rows on "
      << rows.device().str() << ", cols on " << cols.device().str();
  Tensor out = Tensor::empty({rows.numel()}, x.dtype(), x.device());
  if (out.numel() == 0) return out;
  if (x.size(0) == 0) {
    out.fill_(0.0);
    return out;
  }
  backend(x.device()).sparse_delta_grad(x.contiguous(), dy.contiguous(), rows.contiguous(), cols.contiguous(), out);
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t axis) {
  LATHE_CHECK(!xs.empty()) << "concat: no tensors given";
  for (size_t i = 0; i < xs.size(); ++i) LATHE_CHECK(xs[i].defined()) << "concat: tensor " << i << " is undefined";
  const Tensor& x0 = xs[0];
  auto all_shapes = [&]() {
    std::ostringstream os;
    for (size_t i = 0; i < xs.size(); ++i) os << (i ? ", " : "") << xs[i].shape_str();
    return os.str();
  };
  LATHE_CHECK(x0.dim() >= 1) << "concat: tensors must have at least one dim, got " << all_shapes();
  int64_t ax = norm_axis("concat", axis, x0.dim(), x0);
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& t = xs[i];
    LATHE_CHECK(t.dtype() == x0.dtype() && t.device() == x0.device())
        << "concat: tensor " << i << " is " << dtype_name(t.dtype()) << " on " << t.device().str()
        << ", tensor 0 is " << dtype_name(x0.dtype()) << " on " << x0.device().str();
    bool ok = t.dim() == x0.dim();
    for (int64_t d = 0; ok && d < t.dim(); ++d) ok = d == ax || t.size(d) == x0.size(d);
    LATHE_CHECK(ok) << "concat: shapes " << all_shapes() << " differ off axis " << axis;
    total += t.size(ax);
  }
  Shape s = x0.shape();
  s[ax] = total;
  Tensor out = Tensor::empty(s, x0.dtype(), x0.device());
  int64_t off = 0;
  for (const Tensor& t : xs) {
    if (t.numel() > 0) out.narrow(ax, off, t.size(ax)).copy_(t);
    off += t.size(ax);
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& xs, int64_t axis) {
  LATHE_CHECK(!xs.empty()) << "stack: no tensors given";
  for (size_t i = 0; i < xs.size(); ++i) {
    LATHE_CHECK(xs[i].defined()) << "stack: tensor " << i << " is undefined";
    LATHE_CHECK(xs[i].shape() == xs[0].shape())
        << "stack: tensor " << i << " has shape " << xs[i].shape_str() << ", tensor 0 has " << xs[0].shape_str();
  }
  const int64_t rank = xs[0].dim() + 1;
  int64_t w = axis < 0 ? axis + rank : axis;
  LATHE_CHECK(w >= 0 && w < rank) << "stack: axis " << axis << " is out of range for tensors of shape "
                                  << xs[0].shape_str();
  std::vector<Tensor> us;
  us.reserve(xs.size());
  for (const Tensor& t : xs) us.push_back(t.unsqueeze(w));
  return concat(us, w);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis) {
  LATHE_CHECK(x.defined()) << "split: x is an undefined tensor";
  LATHE_CHECK(x.dim() >= 1) << "split: x must have at least one dim, got " << x.shape_str();
  int64_t ax = norm_axis("split", axis, x.dim(), x);
  int64_t total = 0;
  std::ostringstream ss;
  for (size_t i = 0; i < sizes.size(); ++i) {
    ss << (i ? ", " : "") << sizes[i];
    total += sizes[i];
  }
  for (int64_t s : sizes)
    LATHE_CHECK(s >= 0) << "split: negative size in [" << ss.str() << "] for x " << x.shape_str();
  LATHE_CHECK(total == x.size(ax)) << "split: sizes [" << ss.str() << "] sum to " << total << ", but x "
                                   << x.shape_str() << " has " << x.size(ax) << " along axis " << axis;
  std::vector<Tensor> out;
  int64_t off = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(ax, off, s));
    off += s;
  }
  return out;
}

}  // namespace lathe::kernels
