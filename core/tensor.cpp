#include "core/tensor.h"

#include "core/paged.h"

#include "core/device_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>

namespace lathe {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LATHE_CHECK(da == db || da == 1 || db == 1)
        << op << ": shapes " << shape_str(a) << " and " << shape_str(b) << " cannot be broadcast together";
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// ---- factories ------------------------------------------------------------------

Tensor Tensor::from_storage(std::shared_ptr<Storage> s, const Shape& shape, DType dt, const Shape& strides,
                            int64_t offset) {
  for (int64_t d : shape) LATHE_CHECK(d >= 0) << "negative size in shape " << lathe::shape_str(shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(s);
  impl->shape = shape;
  impl->strides = strides.empty() ? contiguous_strides(shape) : strides;
  LATHE_CHECK(impl->strides.size() == shape.size()) << "strides " << lathe::shape_str(strides)
                                                      << " do not match shape " << lathe::shape_str(shape);
  impl->offset = offset;
  impl->dtype = dt;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dt, Device dev) {
  for (int64_t d : shape) LATHE_CHECK(d >= 0) << "negative size in shape " << lathe::shape_str(shape);
  const int64_t numel = shape_numel(shape);
  // Inside a PagedAllocGuard, large tensors get paged storage (core/paged.h).
  const int64_t paged_min = paged_min_numel();
  const bool paged = paged_min >= 0 && numel >= paged_min && numel > 0;
  auto s = std::make_shared<Storage>(static_cast<size_t>(numel) * dtype_size(dt), dev, current_mem_category(), paged);
  return from_storage(std::move(s), shape, dt);
}

Tensor Tensor::zeros(const Shape& shape, DType dt, Device dev) {
  Tensor t = empty(shape, dt, dev);
  t.fill_(0.0);
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dt, Device dev) { return full(shape, 1.0, dt, dev); }

Tensor Tensor::full(const Shape& shape, double value, DType dt, Device dev) {
  Tensor t = empty(shape, dt, dev);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dt, Device dev) { return full({}, value, dt, dev); }

Tensor Tensor::arange(double start, double end, double step, DType dt, Device dev) {
  LATHE_CHECK(step != 0) << "arange: step must be non-zero";
  int64_t n = static_cast<int64_t>(std::ceil((end - start) / step));
  if (n < 0) n = 0;
  Tensor t = empty({n}, dt, Device::cpu());
  char* p = static_cast<char*>(t.raw_data());
  size_t es = dtype_size(dt);
  for (int64_t i = 0; i < n; ++i) store_from_double(p + i * es, dt, start + step * static_cast<double>(i));
  return dev.is_cpu() ? t : t.to(dev);
}

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dt, Device dev) {
  LATHE_CHECK(is_floating(dt)) << "randn: dtype must be floating, got " << dtype_name(dt);
  Tensor t = empty(shape, DType::f64, Device::cpu());
  int64_t n = t.numel();
  uint64_t base = gen.reserve(2 * static_cast<uint64_t>(n));
  double* p = t.data<double>();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) p[i] = normal_from_uints(gen.at(base + 2 * i), gen.at(base + 2 * i + 1));
  return t.to(dt).to(dev);
}

Tensor Tensor::rand(const Shape& shape, Generator& gen, DType dt, Device dev) {
  LATHE_CHECK(is_floating(dt)) << "rand: dtype must be floating, got " << dtype_name(dt);
  Tensor t = empty(shape, DType::f32, Device::cpu());
  int64_t n = t.numel();
  uint64_t base = gen.reserve(static_cast<uint64_t>(n));
  float* p = t.data<float>();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) p[i] = uint_to_unit_float(gen.at(base + i));
  return t.to(dt).to(dev);
}

// ---- metadata ---------------------------------------------------------------------

int64_t Tensor::wrap_dim(int64_t d) const {
  int64_t n = dim();
  int64_t w = d < 0 ? d + n : d;
  LATHE_CHECK(w >= 0 && w < std::max<int64_t>(n, 1) && (n > 0 || w == 0))
      << "dimension " << d << " out of range for a tensor of shape " << shape_str();
  return w;
}

bool Tensor::is_contiguous() const {
  const auto& s = shape();
  const auto& st = strides();
  int64_t acc = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (s[i] == 1) continue;
    if (st[i] != acc) return false;
    acc *= s[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(storage()->data()) + offset() * static_cast<int64_t>(element_size());
}

double Tensor::item() const {
  LATHE_CHECK(numel() == 1) << "item() on a tensor with " << numel() << " elements, shape " << shape_str();
  Tensor c = to(Device::cpu());
  return load_as_double(c.raw_data(), c.dtype());
}

double Tensor::at(const std::vector<int64_t>& idx) const {
  LATHE_CHECK(static_cast<int64_t>(idx.size()) == dim()) << "at(): " << idx.size() << " indices for shape " << shape_str();
  LATHE_CHECK(device().is_cpu()) << "at(): tensor is on " << device().str();
  int64_t off = offset();
  for (int64_t i = 0; i < dim(); ++i) {
    LATHE_CHECK(idx[i] >= 0 && idx[i] < shape()[i]) << "at(): index " << idx[i] << " out of range for dim " << i
                                                     << " of shape " << shape_str();
    off += idx[i] * strides()[i];
  }
  return load_as_double(static_cast<char*>(storage()->data()) + off * static_cast<int64_t>(element_size()), dtype());
}

std::string Tensor::str(int64_t max_elems) const {
  std::ostringstream os;
  os << "Tensor(" << shape_str() << ", " << dtype_name(dtype()) << ", " << device().str() << ") [";
  std::vector<double> v = to_vector<double>();
  for (int64_t i = 0; i < std::min<int64_t>(max_elems, static_cast<int64_t>(v.size())); ++i)
    os << (i ? ", " : "") << v[i];
  if (static_cast<int64_t>(v.size()) > max_elems) os << ", ...";
  os << "]";
  return os.str();
}

// ---- views --------------------------------------------------------------------------

static Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

static Shape infer_shape(const Shape& req, int64_t numel, const Shape& from) {
  Shape s = req;
  int64_t known = 1, neg = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      LATHE_CHECK(neg < 0) << "view/reshape: more than one -1 in " << shape_str(req);
      neg = static_cast<int64_t>(i);
    } else {
      LATHE_CHECK(s[i] >= 0) << "view/reshape: bad size in " << shape_str(req);
      known *= s[i];
    }
  }
  if (neg >= 0) {
    LATHE_CHECK(known != 0 && numel % known == 0)
        << "view/reshape: shape " << shape_str(req) << " is invalid for " << shape_str(from);
    s[neg] = numel / known;
  }
  LATHE_CHECK(shape_numel(s) == numel) << "view/reshape: cannot view a tensor of shape " << shape_str(from) << " ("
                                       << numel << " elements) as " << shape_str(req);
  return s;
}

// Strides for viewing (shape, strides) as new_shape without a copy; false if impossible.
// Old dims are grouped into runs that are contiguous with each other; each run must
// map onto a run of new dims with the same element count.
static bool view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape, Shape& out) {
  out.assign(new_shape.size(), 1);
  if (shape_numel(shape) == 0 || shape.empty()) {
    out = contiguous_strides(new_shape);
    return true;
  }
  int64_t vd = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t base = strides.back();
  int64_t run_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    run_numel *= shape[d];
    bool run_ends = d == 0 || (shape[d - 1] != 1 && strides[d - 1] != run_numel * base);
    if (!run_ends) continue;
    while (vd >= 0 && (view_numel < run_numel || new_shape[vd] == 1)) {
      out[vd] = view_numel * base;
      view_numel *= new_shape[vd];
      --vd;
    }
    if (view_numel != run_numel) return false;
    if (d > 0) {
      base = strides[d - 1];
      run_numel = 1;
      view_numel = 1;
    }
  }
  return vd == -1;
}

Tensor Tensor::view(const Shape& req) const {
  Shape s = infer_shape(req, numel(), shape());
  if (is_contiguous()) return make_view(*this, s, contiguous_strides(s), offset());
  Shape st;
  LATHE_CHECK(view_strides(shape(), strides(), s, st))
      << "view: a tensor of shape " << shape_str() << " with strides " << lathe::shape_str(strides())
      << " cannot be viewed as " << lathe::shape_str(s) << " without a copy; use reshape()";
  return make_view(*this, s, st, offset());
}

Tensor Tensor::reshape(const Shape& req) const {
  Shape s = infer_shape(req, numel(), shape());
  if (is_contiguous()) return make_view(*this, s, contiguous_strides(s), offset());
  Shape st;
  if (view_strides(shape(), strides(), s, st)) return make_view(*this, s, st, offset());
  return contiguous().view(s);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  d0 = wrap_dim(d0);
  d1 = wrap_dim(d1);
  Shape s = shape(), st = strides();
  std::swap(s[d0], s[d1]);
  std::swap(st[d0], st[d1]);
  return make_view(*this, s, st, offset());
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  LATHE_CHECK(static_cast<int64_t>(dims.size()) == dim())
      << "permute: " << dims.size() << " dims given for a tensor of shape " << shape_str();
  Shape s(dims.size()), st(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i]);
    LATHE_CHECK(!seen[d]) << "permute: dim " << d << " repeated";
    seen[d] = true;
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  return make_view(*this, s, st, offset());
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d);
  if (start < 0) start += shape()[d];
  LATHE_CHECK(start >= 0 && length >= 0 && start + length <= shape()[d])
      << "narrow: [" << start << ", " << start + length << ") is out of range for dim " << d << " of shape "
      << shape_str();
  Shape s = shape();
  s[d] = length;
  return make_view(*this, s, strides(), offset() + start * strides()[d]);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d);
  int64_t n = shape()[d];
  LATHE_CHECK(step > 0) << "slice: step must be positive, got " << step;
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape(), st = strides();
  s[d] = (end - start + step - 1) / step;
  st[d] *= step;
  return make_view(*this, s, st, offset() + start * strides()[d]);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d);
  if (index < 0) index += shape()[d];
  LATHE_CHECK(index >= 0 && index < shape()[d])
      << "select: index " << index << " out of range for dim " << d << " of shape " << shape_str();
  Shape s = shape(), st = strides();
  int64_t off = offset() + index * st[d];
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  return make_view(*this, s, st, off);
}

Tensor Tensor::expand(const Shape& req) const {
  LATHE_CHECK(req.size() >= shape().size())
      << "expand: cannot expand shape " << shape_str() << " to " << lathe::shape_str(req);
  size_t lead = req.size() - shape().size();
  Shape s(req.size()), st(req.size());
  for (size_t i = 0; i < req.size(); ++i) {
    if (i < lead) {
      LATHE_CHECK(req[i] >= 0) << "expand: -1 not allowed for a new leading dim in " << lathe::shape_str(req);
      s[i] = req[i];
      st[i] = 0;
      continue;
    }
    int64_t cur = shape()[i - lead];
    int64_t want = req[i] == -1 ? cur : req[i];
    LATHE_CHECK(cur == want || cur == 1)
        << "expand: cannot expand shape " << shape_str() << " to " << lathe::shape_str(req);
    s[i] = want;
    st[i] = (cur == want) ? strides()[i - lead] : 0;
  }
  return make_view(*this, s, st, offset());
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d);
  LATHE_CHECK(shape()[d] == 1) << "squeeze: dim " << d << " of shape " << shape_str() << " is not 1";
  Shape s = shape(), st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  return make_view(*this, s, st, offset());
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int64_t n = dim() + 1;
  if (d < 0) d += n;
  LATHE_CHECK(d >= 0 && d < n) << "unsqueeze: dim out of range for shape " << shape_str();
  Shape s = shape(), st = strides();
  int64_t stv = d < dim() ? st[d] * s[d] : 1;
  s.insert(s.begin() + d, 1);
  st.insert(st.begin() + d, stv);
  return make_view(*this, s, st, offset());
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = wrap_dim(start_dim);
  end_dim = wrap_dim(end_dim);
  LATHE_CHECK(start_dim <= end_dim) << "flatten: start_dim > end_dim";
  Shape s;
  for (int64_t i = 0; i < start_dim; ++i) s.push_back(shape()[i]);
  int64_t m = 1;
  for (int64_t i = start_dim; i <= end_dim; ++i) m *= shape()[i];
  s.push_back(m);
  for (int64_t i = end_dim + 1; i < dim(); ++i) s.push_back(shape()[i]);
  return reshape(s);
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t off) const {
  LATHE_CHECK(shape.size() == strides.size()) << "as_strided: shape and strides differ in rank";
  int64_t maxoff = off;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] > 0) maxoff += (shape[i] - 1) * strides[i];
  LATHE_CHECK(off >= 0 && (shape_numel(shape) == 0 ||
                           (maxoff + 1) * static_cast<int64_t>(element_size()) <=
                               static_cast<int64_t>(storage()->nbytes())))
      << "as_strided: view " << lathe::shape_str(shape) << " reaches past the storage";
  return make_view(*this, shape, strides, off);
}

// ---- copies ---------------------------------------------------------------------------

namespace {

template <typename D, typename S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<S, bf16_t> || std::is_same_v<S, f16_t>) {
    return convert<D>(to_f32(v));
  } else if constexpr (std::is_same_v<D, bf16_t> || std::is_same_v<D, f16_t>) {
    return from_f32<D>(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}

template <typename D, typename S>
void copy_kernel(const Tensor& dst, const Tensor& src) {
  const int64_t nd = dst.dim();
  const int64_t n = dst.numel();
  if (n == 0) return;
  D* dp = static_cast<D*>(dst.raw_data());
  const S* sp = static_cast<const S*>(src.raw_data());
  if (nd == 0) {
    dp[0] = convert<D>(sp[0]);
    return;
  }
  const Shape& shape = dst.shape();
  const Shape& dst_st = dst.strides();
  const Shape& src_st = src.strides();
  const int64_t inner = shape[nd - 1];
  const int64_t dsi = dst_st[nd - 1], ssi = src_st[nd - 1];
  const int64_t rows = n / inner;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, doff = 0, soff = 0;
    for (int64_t d = nd - 2; d >= 0; --d) {
      int64_t i = rem % shape[d];
      rem /= shape[d];
      doff += i * dst_st[d];
      soff += i * src_st[d];
    }
    D* dr = dp + doff;
    const S* sr = sp + soff;
    if (dsi == 1 && ssi == 1) {
      for (int64_t j = 0; j < inner; ++j) dr[j] = convert<D>(sr[j]);
    } else {
      for (int64_t j = 0; j < inner; ++j) dr[j * dsi] = convert<D>(sr[j * ssi]);
    }
  }
}

template <typename T>
void fill_kernel(const Tensor& t, double value) {
  T v{};
  store_from_double(&v, t.dtype(), value);
  const int64_t n = t.numel();
  if (t.is_contiguous()) {
    T* p = static_cast<T*>(t.raw_data());
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  } else {
    Tensor one = Tensor::empty({}, t.dtype(), Device::cpu());
    *static_cast<T*>(one.raw_data()) = v;
    copy_strided_cpu(t, one.expand(t.shape()));
  }
}

}  // namespace

void copy_strided_cpu(const Tensor& dst, const Tensor& src) {
  LATHE_CHECK(dst.shape() == src.shape())
      << "copy: shapes differ, dst " << dst.shape_str() << " src " << src.shape_str();
  LATHE_CHECK(dst.device().is_cpu() && src.device().is_cpu()) << "copy_strided_cpu: tensors must be on the cpu";
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.nbytes()) std::memmove(dst.raw_data(), src.raw_data(), dst.nbytes());
    return;
  }
  LATHE_DISPATCH_DTYPE(dst.dtype(), D, LATHE_DISPATCH_DTYPE(src.dtype(), S, copy_kernel<D, S>(dst, src)));
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = empty(shape(), dt, device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), dev);
  if (out.numel() == 0) return out;
  if (src.device().is_cpu()) {
    device_ops(dev.type).copy_from_host(out, src);
  } else if (dev.is_cpu()) {
    device_ops(src.device().type).copy_to_host(out, src);
  } else {  // between two GPUs: through the host (rare; peer copies are a later optimisation)
    Tensor host = empty(shape(), dtype(), Device::cpu());
    device_ops(src.device().type).copy_to_host(host, src);
    device_ops(dev.type).copy_from_host(out, host);
  }
  return out;
}

void Tensor::copy_(const Tensor& src) const {
  Tensor s = src;
  if (s.shape() != shape()) s = s.expand(shape());
  if (s.device() != device()) s = s.to(device());
  if (numel() == 0) return;
  // Guard against overlapping storage: copy through a temporary.
  if (s.storage() == storage() && !(s.offset() == offset() && s.strides() == strides())) s = s.clone();
  if (s.storage() == storage() && s.dtype() == dtype()) return;  // the same view: nothing to do
  device_ops(device().type).copy(*this, s);
}

void Tensor::fill_(double value) const {
  if (numel() == 0) return;
  device_ops(device().type).fill(*this, value);
}

// ---- the CPU's device table (copies and fills live in core) ----------------------------

namespace {
class CpuDeviceOps final : public DeviceOps {
 public:
  void copy(const Tensor& dst, const Tensor& src) override { copy_strided_cpu(dst, src); }
  void fill(const Tensor& dst, double value) override {
    LATHE_DISPATCH_DTYPE(dst.dtype(), T, fill_kernel<T>(dst, value));
  }
  void copy_from_host(const Tensor& dst, const Tensor& src) override { copy_strided_cpu(dst, src); }
  void copy_to_host(const Tensor& dst, const Tensor& src) override { copy_strided_cpu(dst, src); }
  void synchronize(int) override {}
};

DeviceOps*& device_ops_slot(DeviceType d) {
  static DeviceOps* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}
}  // namespace

void register_device_ops(DeviceType d, DeviceOps* ops) { device_ops_slot(d) = ops; }

DeviceOps& device_ops(DeviceType d) {
  if (d == DeviceType::cpu) {
    static CpuDeviceOps cpu;
    return device_ops_slot(d) ? *device_ops_slot(d) : cpu;
  }
  DeviceOps* ops = device_ops_slot(d);
  LATHE_CHECK(ops != nullptr) << "no backend for cuda: lathe was built without the CUDA backend "
                              << "(configure with -DLATHE_CUDA=on on a machine with nvcc)";
  return *ops;
}

void Tensor::set_data(const Tensor& other) const {
  TensorImpl& me = impl();
  const TensorImpl& o = other.impl();
  LATHE_CHECK(!me.requires_grad || is_floating(o.dtype))
      << "set_data: a tensor that requires grad needs floating data, got " << dtype_name(o.dtype);
  me.storage = o.storage;
  me.shape = o.shape;
  me.strides = o.strides;
  me.offset = o.offset;
  me.dtype = o.dtype;
}

const Tensor& Tensor::set_requires_grad(bool r) const {
  LATHE_CHECK(!r || is_floating(dtype())) << "requires_grad needs a floating dtype, got " << dtype_name(dtype());
  impl().requires_grad = r;
  return *this;
}

}  // namespace lathe
