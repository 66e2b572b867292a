// CUDA elementwise kernels: unary maps and their derivatives, scalar maps, broadcast binary
// ops, where, and the in-place add_/scale_. Semantics follow kernels/cpu/elementwise.cpp
// exactly (formulas, NaN rules, integer support); only the loops differ.
//
// Every op is a functor over raw element values run by one of two kernel shapes:
// - contiguous: all operands contiguous; with V > 1 each thread moves one aligned V-element
//   vector per operand (16 bytes of the widest type), chosen only when every pointer is
//   aligned to its vector size (checked on the host), plus a scalar tail.
// - strided: any views (broadcast inputs have stride 0). The row-major coordinates of an
//   output index are computed once and shared by all operands, in 32-bit arithmetic when
//   the element count allows (64-bit integer division is several times slower on the GPU).
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {


// Math in the compute precision (float functions for float, double for double).
__device__ __forceinline__ float m_exp(float v) { return expf(v); }
__device__ __forceinline__ double m_exp(double v) { return exp(v); }
__device__ __forceinline__ float m_log(float v) { return logf(v); }
__device__ __forceinline__ double m_log(double v) { return log(v); }
__device__ __forceinline__ float m_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double m_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float m_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double m_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float m_erf(float v) { return erff(v); }
__device__ __forceinline__ double m_erf(double v) { return erf(v); }
__device__ __forceinline__ float m_sin(float v) { return sinf(v); }
__device__ __forceinline__ double m_sin(double v) { return sin(v); }
__device__ __forceinline__ float m_cos(float v) { return cosf(v); }
__device__ __forceinline__ double m_cos(double v) { return cos(v); }
__device__ __forceinline__ float m_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double m_abs(double v) { return fabs(v); }
__device__ __forceinline__ float m_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double m_pow(double a, double b) { return pow(a, b); }
// A product that is never fused into a following add: the CPU build (no -march, so no FMA)
// rounds a*b before adding, and affine/add_ are cheap enough to match it bit for bit.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// ---- op functors -------------------------------------------------------------------------

template <typename C>
__device__ __forceinline__ C unary_apply(UnaryOp op, C v) {
  const C half = C(0.5), one = C(1);
  const C k_tanh = C(0.7978845608028654);  // sqrt(2/pi)
  const C c_tanh = C(0.044715);
  const C inv_sqrt2 = C(0.7071067811865476);
  switch (op) {
    case UnaryOp::neg: return -v;
    case UnaryOp::exp: return m_exp(v);
    case UnaryOp::log: return m_log(v);
    case UnaryOp::sqrt: return m_sqrt(v);
    case UnaryOp::rsqrt: return one / m_sqrt(v);
    case UnaryOp::tanh: return m_tanh(v);
    case UnaryOp::sigmoid: return one / (one + m_exp(-v));
    case UnaryOp::relu: return v > C(0) ? v : C(0);
    // Hendrycks & Gimpel (2016) tanh form, as v * sigmoid(2u) (see the CPU kernel).
    case UnaryOp::gelu_tanh: return v / (one + m_exp(C(-2) * k_tanh * (v + c_tanh * v * v * v)));
    case UnaryOp::gelu_erf: return half * v * (one + m_erf(v * inv_sqrt2));
    case UnaryOp::silu: return v / (one + m_exp(-v));
    case UnaryOp::abs: return m_abs(v);
    case UnaryOp::sign: return is_nan(v) ? v : C((v > C(0)) - (v < C(0)));
    case UnaryOp::square: return v * v;
    case UnaryOp::reciprocal: return one / v;
    case UnaryOp::sin: return m_sin(v);
    case UnaryOp::cos: return m_cos(v);
  }
  return v;
}

// gx = g * f'(.), with the derivative written in terms of y = f(x) (from_y) or of x.
template <typename C>
__device__ __forceinline__ C unary_grad(UnaryOp op, bool from_y, C v, C g) {
  const C half = C(0.5), one = C(1), two = C(2), zero = C(0);
  if (from_y) {
    const C y = v;
    switch (op) {
      case UnaryOp::exp: return g * y;
      case UnaryOp::sqrt: return g / (two * y);
      case UnaryOp::rsqrt: return -half * g * y * y * y;
      case UnaryOp::tanh: return g * (one - y * y);
      case UnaryOp::sigmoid: return g * y * (one - y);
      case UnaryOp::reciprocal: return -g * y * y;
      case UnaryOp::relu: return y > zero ? g : zero;
      default: return zero;  // unreachable: the host only sets from_y for the ops above
    }
  }
  const C x = v;
  const C k_tanh = C(0.7978845608028654);       // sqrt(2/pi)
  const C c_tanh = C(0.044715);
  const C inv_sqrt2 = C(0.7071067811865476);
  const C inv_sqrt2pi = C(0.3989422804014327);  // 1/sqrt(2 pi)
  switch (op) {
    case UnaryOp::neg: return -g;
    case UnaryOp::exp: return g * m_exp(x);
    case UnaryOp::log: return g / x;
    case UnaryOp::sqrt: return g / (two * m_sqrt(x));
    case UnaryOp::rsqrt: {
      const C r = one / m_sqrt(x);
      return -half * g * r * r * r;
    }
    case UnaryOp::tanh: {
      const C t = m_tanh(x);
      return g * (one - t * t);
    }
    case UnaryOp::sigmoid: {
      const C s = one / (one + m_exp(-x));
      return g * s * (one - s);
    }
    case UnaryOp::relu: return x > zero ? g : zero;
    case UnaryOp::gelu_tanh: {
      // d/dx x s(2u): s + 2 x s (1 - s) du/dx; 1 - s as e s where s is near 1 (e <= 1).
      const C e = m_exp(C(-2) * k_tanh * (x + c_tanh * x * x * x));
      const C s = one / (one + e);
      const C oms = e <= one ? e * s : one - s;
      const C du = k_tanh * (one + C(3) * c_tanh * x * x);
      return g * (s + two * x * s * oms * du);
    }
    case UnaryOp::gelu_erf:  // Phi(x) + x phi(x)
      return g * (half * (one + m_erf(x * inv_sqrt2)) + x * inv_sqrt2pi * m_exp(-half * x * x));
    case UnaryOp::silu: {
      const C s = one / (one + m_exp(-x));
      return g * s * (one + x * (one - s));
    }
    case UnaryOp::abs: return x > zero ? g : (x < zero ? -g : zero);
    case UnaryOp::sign: return zero;
    case UnaryOp::square: return two * x * g;
    case UnaryOp::reciprocal: return -g / (x * x);
    case UnaryOp::sin: return g * m_cos(x);
    case UnaryOp::cos: return -g * m_sin(x);
  }
  return zero;
}

template <typename T>
struct UnaryF {
  UnaryOp op;
  __device__ __forceinline__ T operator()(T v) const { return stc<T>(unary_apply(op, ldc(v))); }
};

template <typename T>
struct UnaryBwdF {
  UnaryOp op;
  bool from_y;
  __device__ __forceinline__ T operator()(T v, T g) const { return stc<T>(unary_grad(op, from_y, ldc(v), ldc(g))); }
};

// SwiGLU (kernels/ops.h): silu(g) * u, and its gradients as the silu and mul backwards
// compute them (two kernels, one per output, each a single pass).
template <typename T>
struct SwigluF {
  __device__ __forceinline__ T operator()(T g, T u) const {
    return stc<T>(unary_apply(UnaryOp::silu, ldc(g)) * ldc(u));
  }
};

template <typename T>
struct SwigluGateGradF {  // dgate = silu'(g) * (gy * u)
  __device__ __forceinline__ T operator()(T gy, T g, T u) const {
    using C = comp_t<T>;
    return stc<T>(unary_grad(UnaryOp::silu, false, ldc(g), C(ldc(gy) * ldc(u))));
  }
};

template <typename T>
struct SwigluUpGradF {  // dup = gy * silu(g)
  __device__ __forceinline__ T operator()(T gy, T g) const {
    return stc<T>(ldc(gy) * unary_apply(UnaryOp::silu, ldc(g)));
  }
};

enum class ScalarKind : uint8_t { pow_square, pow_identity, pow_sqrt, pow_general, affine, clamp };

template <typename T>
struct ScalarF {
  using C = comp_t<T>;
  ScalarKind kind;
  C a, b;
  __device__ __forceinline__ T operator()(T raw) const {
    const C v = ldc(raw);
    C r;
    switch (kind) {
      case ScalarKind::pow_square: r = v * v; break;
      case ScalarKind::pow_identity: r = v; break;
      case ScalarKind::pow_sqrt: r = m_sqrt(v); break;
      case ScalarKind::pow_general: r = m_pow(v, a); break;
      case ScalarKind::affine: r = mul_rn(v, a) + b; break;
      case ScalarKind::clamp: r = v < a ? a : (v > b ? b : v); break;  // NaN stays NaN
      default: r = v;
    }
    return stc<T>(r);
  }
};

template <typename T>
struct ArithF {
  using C = comp_t<T>;
  BinaryOp op;
  __device__ __forceinline__ T operator()(T ra, T rb) const {
    const C x = ldc(ra), y = ldc(rb);
    C r;
    switch (op) {
      case BinaryOp::add: r = C(x + y); break;
      case BinaryOp::sub: r = C(x - y); break;
      case BinaryOp::mul: r = C(x * y); break;
      case BinaryOp::maximum: r = (x > y || is_nan(x)) ? x : y; break;
      case BinaryOp::minimum: r = (x < y || is_nan(x)) ? x : y; break;
      case BinaryOp::div:
        if constexpr (is_float_v<T>) r = x / y;
        else r = C(0);  // rejected on the host
        break;
      case BinaryOp::pow:
        if constexpr (is_float_v<T>) r = m_pow(x, y);
        else r = C(0);  // rejected on the host
        break;
      default: r = C(0);  // comparisons go through CmpF
    }
    return stc<T>(r);
  }
};

template <typename T>
struct CmpF {
  BinaryOp op;
  __device__ __forceinline__ uint8_t operator()(T ra, T rb) const {
    const comp_t<T> x = ldc(ra), y = ldc(rb);
    switch (op) {
      case BinaryOp::eq: return x == y;
      case BinaryOp::ne: return x != y;
      case BinaryOp::lt: return x < y;
      case BinaryOp::le: return x <= y;
      case BinaryOp::gt: return x > y;
      case BinaryOp::ge: return x >= y;
      default: return 0;
    }
  }
};

// cond ? a : b, values moved as raw bits of their size.
template <typename Cond, typename V>
struct WhereF {
  __device__ __forceinline__ V operator()(Cond c, V a, V b) const {
    bool take_a;
    if constexpr (is_half_v<Cond>) take_a = ldc(c) != 0.0f;
    else take_a = c != Cond(0);
    return take_a ? a : b;
  }
};

// y + alpha * x; integers compute in their own type (wrapping), as on the CPU.
template <typename T>
struct AddF {
  using C = comp_t<T>;
  C alpha;
  bool unit;  // alpha == 1: a plain add
  __device__ __forceinline__ T operator()(T ry, T rx) const {
    const C y = ldc(ry), x = ldc(rx);
    if constexpr (is_float_v<T>) return stc<T>(unit ? y + x : y + mul_rn(alpha, x));
    else return C(y + alpha * x);
  }
};

template <typename T>
struct ScaleF {
  comp_t<T> s;
  __device__ __forceinline__ T operator()(T v) const { return stc<T>(ldc(v) * s); }
};

// ---- kernels -----------------------------------------------------------------------------

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Contiguous operands. No __restrict__: add_/scale_ write the tensor they read (same index).
template <int V, typename F, typename O, typename A>
__global__ void map1_contig_k(int64_t n, F f, O* out, const A* a) {
  const int64_t nv = n / V;
  LATHE_CUDA_GRID_STRIDE(j, nv) {
    const Vec<A, V> va = reinterpret_cast<const Vec<A, V>*>(a)[j];
    Vec<O, V> vo;
#pragma unroll
    for (int k = 0; k < V; ++k) vo.v[k] = f(va.v[k]);
    reinterpret_cast<Vec<O, V>*>(out)[j] = vo;
  }
  if constexpr (V > 1) {
    for (int64_t i = nv * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
      out[i] = f(a[i]);
  }
}

template <int V, typename F, typename O, typename A, typename B>
__global__ void map2_contig_k(int64_t n, F f, O* out, const A* a, const B* b) {
  const int64_t nv = n / V;
  LATHE_CUDA_GRID_STRIDE(j, nv) {
    const Vec<A, V> va = reinterpret_cast<const Vec<A, V>*>(a)[j];
    const Vec<B, V> vb = reinterpret_cast<const Vec<B, V>*>(b)[j];
    Vec<O, V> vo;
#pragma unroll
    for (int k = 0; k < V; ++k) vo.v[k] = f(va.v[k], vb.v[k]);
    reinterpret_cast<Vec<O, V>*>(out)[j] = vo;
  }
  if constexpr (V > 1) {
    for (int64_t i = nv * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
      out[i] = f(a[i], b[i]);
  }
}

template <int V, typename F, typename O, typename A, typename B, typename C>
__global__ void map3_contig_k(int64_t n, F f, O* out, const A* a, const B* b, const C* c) {
  const int64_t nv = n / V;
  LATHE_CUDA_GRID_STRIDE(j, nv) {
    const Vec<A, V> va = reinterpret_cast<const Vec<A, V>*>(a)[j];
    const Vec<B, V> vb = reinterpret_cast<const Vec<B, V>*>(b)[j];
    const Vec<C, V> vc = reinterpret_cast<const Vec<C, V>*>(c)[j];
    Vec<O, V> vo;
#pragma unroll
    for (int k = 0; k < V; ++k) vo.v[k] = f(va.v[k], vb.v[k], vc.v[k]);
    reinterpret_cast<Vec<O, V>*>(out)[j] = vo;
  }
  if constexpr (V > 1) {
    for (int64_t i = nv * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
      out[i] = f(a[i], b[i], c[i]);
  }
}

// Shared sizes, per-operand strides (operand 0 is the output).
template <int N>
struct MultiIdx {
  int nd;
  int64_t size[kMaxDims];
  int64_t stride[N][kMaxDims];
};

// Element offsets of every operand for row-major index `lin`, in index type I (uint32_t
// when the count fits). Dims are walked innermost first; the outermost needs no division.
template <typename I, int N>
__device__ __forceinline__ void offsets(const MultiIdx<N>& m, int64_t lin, int64_t (&off)[N]) {
  I i = static_cast<I>(lin);
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 1; --d) {
    if (d >= m.nd) continue;
    const I sz = static_cast<I>(m.size[d]);
    const I q = i / sz;
    const int64_t c = static_cast<int64_t>(i - q * sz);
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += c * m.stride[k][d];
    i = q;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] += static_cast<int64_t>(i) * m.stride[k][0];  // stride 0 when nd == 0
}

template <typename I, typename F, typename O, typename A>
__global__ void map1_strided_k(int64_t n, F f, MultiIdx<2> m, O* out, const A* a) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    int64_t off[2];
    offsets<I>(m, i, off);
    out[off[0]] = f(a[off[1]]);
  }
}

template <typename I, typename F, typename O, typename A, typename B>
__global__ void map2_strided_k(int64_t n, F f, MultiIdx<3> m, O* out, const A* a, const B* b) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    int64_t off[3];
    offsets<I>(m, i, off);
    out[off[0]] = f(a[off[1]], b[off[2]]);
  }
}

template <typename I, typename F, typename O, typename A, typename B, typename C>
__global__ void map3_strided_k(int64_t n, F f, MultiIdx<4> m, O* out, const A* a, const B* b, const C* c) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    int64_t off[4];
    offsets<I>(m, i, off);
    out[off[0]] = f(a[off[1]], b[off[2]], c[off[3]]);
  }
}

// ---- host launchers ----------------------------------------------------------------------

template <typename... Ts>
constexpr int vec_width() {
  size_t m = 1;
  ((m = sizeof(Ts) > m ? sizeof(Ts) : m), ...);
  return static_cast<int>(16 / m > 0 ? 16 / m : 1);
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <int N>
MultiIdx<N> multi_index(const Tensor* const* ts) {
  Indexer ix[N];
  make_indexers(ts[0]->shape(), ts, N, ix);
  MultiIdx<N> m{};
  m.nd = ix[0].nd;
  for (int d = 0; d < kMaxDims; ++d) {
    m.size[d] = ix[0].size[d];
    for (int k = 0; k < N; ++k) m.stride[k][d] = ix[k].stride[d];
  }
  return m;
}

inline bool all_contiguous(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (!t->is_contiguous()) return false;
  return true;
}

// out = f(a), out and a of one shape (out may be a strided view for in-place ops).
template <typename O, typename A, typename F>
void run_map1(const char* name, const F& f, const Tensor& out, const Tensor& a) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const int dev = out.device().index;
  set_device(dev);
  cudaStream_t s = stream(dev);
  O* po = ptr<O>(out);
  const A* pa = ptr<const A>(a);
  if (all_contiguous({&out, &a})) {
    constexpr int V = vec_width<O, A>();
    if (V > 1 && aligned_to(po, V * sizeof(O)) && aligned_to(pa, V * sizeof(A)))
      map1_contig_k<V><<<blocks_for(n / V), kThreads, 0, s>>>(n, f, po, pa);
    else
      map1_contig_k<1><<<blocks_for(n), kThreads, 0, s>>>(n, f, po, pa);
  } else {
    const Tensor* ts[2] = {&out, &a};
    const MultiIdx<2> m = multi_index<2>(ts);
    if (n <= int64_t(UINT32_MAX)) map1_strided_k<uint32_t><<<blocks_for(n), kThreads, 0, s>>>(n, f, m, po, pa);
    else map1_strided_k<uint64_t><<<blocks_for(n), kThreads, 0, s>>>(n, f, m, po, pa);
  }
  LATHE_CUDA_LAUNCH_CHECK(name);
}

template <typename O, typename A, typename B, typename F>
void run_map2(const char* name, const F& f, const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const int dev = out.device().index;
  set_device(dev);
  cudaStream_t s = stream(dev);
  O* po = ptr<O>(out);
  const A* pa = ptr<const A>(a);
  const B* pb = ptr<const B>(b);
  if (all_contiguous({&out, &a, &b})) {
    constexpr int V = vec_width<O, A, B>();
    if (V > 1 && aligned_to(po, V * sizeof(O)) && aligned_to(pa, V * sizeof(A)) && aligned_to(pb, V * sizeof(B)))
      map2_contig_k<V><<<blocks_for(n / V), kThreads, 0, s>>>(n, f, po, pa, pb);
    else
      map2_contig_k<1><<<blocks_for(n), kThreads, 0, s>>>(n, f, po, pa, pb);
  } else {
    const Tensor* ts[3] = {&out, &a, &b};
    const MultiIdx<3> m = multi_index<3>(ts);
    if (n <= int64_t(UINT32_MAX)) map2_strided_k<uint32_t><<<blocks_for(n), kThreads, 0, s>>>(n, f, m, po, pa, pb);
    else map2_strided_k<uint64_t><<<blocks_for(n), kThreads, 0, s>>>(n, f, m, po, pa, pb);
  }
  LATHE_CUDA_LAUNCH_CHECK(name);
}

template <typename O, typename A, typename B, typename C, typename F>
void run_map3(const char* name, const F& f, const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const int dev = out.device().index;
  set_device(dev);
  cudaStream_t s = stream(dev);
  O* po = ptr<O>(out);
  const A* pa = ptr<const A>(a);
  const B* pb = ptr<const B>(b);
  const C* pc = ptr<const C>(c);
  if (all_contiguous({&out, &a, &b, &c})) {
    constexpr int V = vec_width<O, A, B, C>();
    if (V > 1 && aligned_to(po, V * sizeof(O)) && aligned_to(pa, V * sizeof(A)) && aligned_to(pb, V * sizeof(B)) &&
        aligned_to(pc, V * sizeof(C)))
      map3_contig_k<V><<<blocks_for(n / V), kThreads, 0, s>>>(n, f, po, pa, pb, pc);
    else
      map3_contig_k<1><<<blocks_for(n), kThreads, 0, s>>>(n, f, po, pa, pb, pc);
  } else {
    const Tensor* ts[4] = {&out, &a, &b, &c};
    const MultiIdx<4> m = multi_index<4>(ts);
    if (n <= int64_t(UINT32_MAX))
      map3_strided_k<uint32_t><<<blocks_for(n), kThreads, 0, s>>>(n, f, m, po, pa, pb, pc);
    else
      map3_strided_k<uint64_t><<<blocks_for(n), kThreads, 0, s>>>(n, f, m, po, pa, pb, pc);
  }
  LATHE_CUDA_LAUNCH_CHECK(name);
}

bool is_compare(BinaryOp op) {
  return op == BinaryOp::eq || op == BinaryOp::ne || op == BinaryOp::lt || op == BinaryOp::le ||
         op == BinaryOp::gt || op == BinaryOp::ge;
}

template <typename T>
void scalar_map(const char* name, const Tensor& x, const Tensor& out, ScalarKind kind, double p0, double p1) {
  using C = comp_t<T>;
  run_map1<T, T>(name, ScalarF<T>{kind, C(p0), C(p1)}, out, x);
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  LATHE_CUDA_DISPATCH_FLOAT("unary", x.dtype(), T, run_map1<T, T>("unary", UnaryF<T>{op}, out, x));
}

void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) {
  // Same choice of rule and input as the CPU kernel.
  const bool y_rule = op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::tanh ||
                      op == UnaryOp::sigmoid || op == UnaryOp::reciprocal || op == UnaryOp::relu;
  const bool no_input = op == UnaryOp::neg || op == UnaryOp::sign;
  const bool from_y = y_rule && y.defined();
  const Tensor& in = from_y ? y : (x.defined() ? x : gy);
  LATHE_CHECK(from_y || x.defined() || no_input)
      << "unary_backward(" << unary_name(op) << "): needs the input x (or the output y)";
  LATHE_CUDA_DISPATCH_FLOAT("unary_backward", gy.dtype(), T,
                            run_map2<T, T, T>("unary_backward", UnaryBwdF<T>{op, from_y}, out, in, gy));
}

void pow_scalar(const Tensor& x, double p, const Tensor& out) {
  const ScalarKind kind = p == 2.0   ? ScalarKind::pow_square
                          : p == 1.0 ? ScalarKind::pow_identity
                          : p == 0.5 ? ScalarKind::pow_sqrt
                                     : ScalarKind::pow_general;
  LATHE_CUDA_DISPATCH_FLOAT("pow_scalar", x.dtype(), T, scalar_map<T>("pow_scalar", x, out, kind, p, 0.0));
}

void affine(const Tensor& x, double scale, double shift, const Tensor& out) {
  LATHE_CUDA_DISPATCH_FLOAT("affine", x.dtype(), T, scalar_map<T>("affine", x, out, ScalarKind::affine, scale, shift));
}

void clamp(const Tensor& x, double lo, double hi, const Tensor& out) {
  LATHE_CUDA_DISPATCH_FLOAT("clamp", x.dtype(), T, scalar_map<T>("clamp", x, out, ScalarKind::clamp, lo, hi));
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  LATHE_CUDA_DISPATCH_ALL(a.dtype(), T, {
    if (is_compare(op)) {
      run_map2<uint8_t, T, T>("binary", CmpF<T>{op}, out, a, b);
    } else {
      if constexpr (!is_float_v<T>) {
        LATHE_CHECK(op != BinaryOp::div && op != BinaryOp::pow)
            << "binary(" << binary_name(op) << "): no cuda kernel for integer dtype " << dtype_name(a.dtype());
      }
      run_map2<T, T, T>("binary", ArithF<T>{op}, out, a, b);
    }
  });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  LATHE_CUDA_DISPATCH_ALL(cond.dtype(), Cond, {
    switch (a.element_size()) {
      case 1: run_map3<uint8_t, Cond, uint8_t, uint8_t>("where", WhereF<Cond, uint8_t>{}, out, cond, a, b); break;
      case 2: run_map3<uint16_t, Cond, uint16_t, uint16_t>("where", WhereF<Cond, uint16_t>{}, out, cond, a, b); break;
      case 4: run_map3<uint32_t, Cond, uint32_t, uint32_t>("where", WhereF<Cond, uint32_t>{}, out, cond, a, b); break;
      case 8: run_map3<uint64_t, Cond, uint64_t, uint64_t>("where", WhereF<Cond, uint64_t>{}, out, cond, a, b); break;
      default: LATHE_FAIL() << "where: no cuda kernel for dtype " << dtype_name(a.dtype());
    }
  });
}

void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
  LATHE_CUDA_DISPATCH_FLOAT("swiglu", gate.dtype(), T, run_map2<T, T, T>("swiglu", SwigluF<T>{}, out, gate, up));
}

void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate, const Tensor& dup) {
  LATHE_CUDA_DISPATCH_FLOAT("swiglu_backward", gate.dtype(), T, {
    run_map3<T, T, T, T>("swiglu_backward", SwigluGateGradF<T>{}, dgate, gy, gate, up);
    run_map2<T, T, T>("swiglu_backward", SwigluUpGradF<T>{}, dup, gy, gate);
  });
}

void add_(const Tensor& y, const Tensor& x, double alpha) {
  LATHE_CUDA_DISPATCH_ALL(y.dtype(), T, {
    using C = comp_t<T>;
    if constexpr (is_float_v<T>) {
      run_map2<T, T, T>("add_", AddF<T>{C(alpha), alpha == 1.0}, y, y, x);
    } else {
      LATHE_CHECK(alpha == std::trunc(alpha))
          << "add_: alpha " << alpha << " is not an integer for dtype " << dtype_name(y.dtype());
      // Through int64 so a negative alpha wraps for unsigned dtypes as it does on x86 CPUs
      // (a direct double -> uint8 conversion saturates on the GPU).
      run_map2<T, T, T>("add_", AddF<T>{C(static_cast<int64_t>(alpha)), alpha == 1.0}, y, y, x);
    }
  });
}

void scale_(const Tensor& y, double s) {
  LATHE_CUDA_DISPATCH_FLOAT("scale_", y.dtype(), T, run_map1<T, T>("scale_", ScaleF<T>{comp_t<T>(s)}, y, y));
}

}  // namespace lathe::kernels::cuda
