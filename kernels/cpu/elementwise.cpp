// CPU elementwise kernels: unary maps and their derivatives, scalar maps, broadcast
// binary ops, where, and the in-place add_/scale_. All run through detail::for_each_row,
// which coalesces dims and hands each kernel rows with byte strides; rows whose operands
// are all unit-stride take a plain indexed loop the compiler can vectorize.
#include <cmath>
#include <type_traits>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/vmath.h"

namespace lathe::kernels::cpu {

using detail::comp_t;
using detail::for_each_row;
using detail::ld;
using detail::st;

namespace {

template <typename C>
inline bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return std::isnan(v);
  else return false;
}

// out[i] = f(x[i]); f maps comp_t<T> -> comp_t<T>.
// `row`, when given, computes a unit-stride row (o = f(a) elementwise, the same bits).
template <typename T, typename F>
void map1(const Tensor& x, const Tensor& out, F f, void (*row)(const T*, T*, int64_t) = nullptr) {
  for_each_row<2>({&out, &x}, [&](const std::array<char*, 2>& p, const std::array<int64_t, 2>& s, int64_t n) {
    constexpr int64_t E = sizeof(T);
    if (s[0] == E && s[1] == E) {
      T* o = reinterpret_cast<T*>(p[0]);
      const T* a = reinterpret_cast<const T*>(p[1]);
      if (row) return row(a, o, n);
      for (int64_t i = 0; i < n; ++i) o[i] = st<T>(f(ld(a[i])));
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * s[0]) = st<T>(f(ld(*reinterpret_cast<const T*>(p[1] + i * s[1]))));
    }
  });
}

// out[i] = f(a[i], b[i]); f takes two comp_t<T> and returns the stored O value.
// `row`, when given, computes a row whose operands are all unit-stride (the same bits).
template <typename O, typename T, typename F>
void map2(const Tensor& a, const Tensor& b, const Tensor& out, F f,
          void (*row)(const T*, const T*, O*, int64_t) = nullptr) {
  for_each_row<3>({&out, &a, &b}, [&](const std::array<char*, 3>& p, const std::array<int64_t, 3>& s, int64_t n) {
    constexpr int64_t E = sizeof(T);
    O* o = reinterpret_cast<O*>(p[0]);
    if (s[0] == int64_t(sizeof(O)) && s[1] == E && s[2] == E) {
      const T* x = reinterpret_cast<const T*>(p[1]);
      const T* y = reinterpret_cast<const T*>(p[2]);
      if (row) return row(x, y, o, n);
      for (int64_t i = 0; i < n; ++i) o[i] = f(ld(x[i]), ld(y[i]));
    } else if (s[0] == int64_t(sizeof(O)) && s[1] == E && s[2] == 0) {  // row op scalar
      const T* x = reinterpret_cast<const T*>(p[1]);
      const comp_t<T> y = ld(*reinterpret_cast<const T*>(p[2]));
      for (int64_t i = 0; i < n; ++i) o[i] = f(ld(x[i]), y);
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<O*>(p[0] + i * s[0]) =
            f(ld(*reinterpret_cast<const T*>(p[1] + i * s[1])), ld(*reinterpret_cast<const T*>(p[2] + i * s[2])));
    }
  });
}

[[noreturn]] void unsupported(const char* op, DType dt) {
  LATHE_FAIL() << op << ": no cpu kernel for dtype " << dtype_name(dt);
  throw;  // unreachable
}

// ---- unary ------------------------------------------------------------------------------------

// The transcendental unary ops of the models (SiLU, sigmoid, exp, GELU), each formula
// written once: the generic loops and the f32 rows below both call these, so every dtype,
// layout and instruction-set level computes the same expression.
template <typename C>
inline C sigmoid_of(C v) {
  return C(1) / (C(1) + vmath::exp_of<C>(-v));
}
template <typename C>
inline C silu_of(C v) {
  return v / (C(1) + vmath::exp_of<C>(-v));
}
template <typename C>
inline C sigmoid_backward_of(C x, C g) {
  const C s = sigmoid_of<C>(x);
  return g * s * (C(1) - s);
}
template <typename C>
inline C silu_backward_of(C x, C g) {
  const C s = sigmoid_of<C>(x);
  return g * s * (C(1) + x * (C(1) - s));
}

// Their f32 unit-stride rows at the CPU's best vector width (kernels/cpu/isa.h; the same
// bits at every level).
#define LATHE_UNARY_ROW(name, expr)                                                                  \
  __attribute__((always_inline)) inline void name##_body(const float* a, float* o, int64_t n) {    \
    for (int64_t i = 0; i < n; ++i) o[i] = expr(a[i]);                                             \
  }                                                                                                  \
  LATHE_ISA_ROW(name, (const float* a, float* o, int64_t n), (a, o, n), name##_body)
#define LATHE_UNARY_BACKWARD_ROW(name, expr)                                                                   \
  __attribute__((always_inline)) inline void name##_body(const float* x, const float* g, float* o, int64_t n) { \
    for (int64_t i = 0; i < n; ++i) o[i] = expr(x[i], g[i]);                                                 \
  }                                                                                                            \
  LATHE_ISA_ROW(name, (const float* x, const float* g, float* o, int64_t n), (x, g, o, n), name##_body)
LATHE_UNARY_ROW(exp_row, vmath::exp_of<float>)
LATHE_UNARY_ROW(sigmoid_row, sigmoid_of<float>)
LATHE_UNARY_ROW(silu_row, silu_of<float>)
LATHE_UNARY_ROW(gelu_tanh_row, vmath::gelu_tanh<float>)
LATHE_UNARY_BACKWARD_ROW(sigmoid_backward_row, sigmoid_backward_of<float>)
LATHE_UNARY_BACKWARD_ROW(silu_backward_row, silu_backward_of<float>)
LATHE_UNARY_BACKWARD_ROW(gelu_tanh_backward_row, vmath::gelu_tanh_backward<float>)
#undef LATHE_UNARY_ROW
#undef LATHE_UNARY_BACKWARD_ROW

// The f32 row of op, or nullptr (the generic loop) for other ops and dtypes.
template <typename T>
void (*unary_row(UnaryOp op))(const T*, T*, int64_t) {
  if constexpr (std::is_same_v<T, float>) {
    switch (op) {
      case UnaryOp::exp: return exp_row;
      case UnaryOp::sigmoid: return sigmoid_row;
      case UnaryOp::silu: return silu_row;
      case UnaryOp::gelu_tanh: return gelu_tanh_row;
      default: return nullptr;
    }
  }
  (void)op;
  return nullptr;
}
template <typename T>
void (*unary_backward_row(UnaryOp op))(const T*, const T*, T*, int64_t) {
  if constexpr (std::is_same_v<T, float>) {
    switch (op) {
      case UnaryOp::sigmoid: return sigmoid_backward_row;
      case UnaryOp::silu: return silu_backward_row;
      case UnaryOp::gelu_tanh: return gelu_tanh_backward_row;
      default: return nullptr;
    }
  }
  (void)op;
  return nullptr;
}

template <typename T>
void unary_t(UnaryOp op, const Tensor& x, const Tensor& out) {
  using C = comp_t<T>;
  const C half = C(0.5), one = C(1);
  const C inv_sqrt2 = C(0.7071067811865476);
  switch (op) {
    case UnaryOp::neg: return map1<T>(x, out, [](C v) { return -v; });
    case UnaryOp::exp: return map1<T>(x, out, [](C v) { return vmath::exp_of<C>(v); }, unary_row<T>(op));
    case UnaryOp::log: return map1<T>(x, out, [](C v) { return std::log(v); });
    case UnaryOp::sqrt: return map1<T>(x, out, [](C v) { return std::sqrt(v); });
    case UnaryOp::rsqrt: return map1<T>(x, out, [=](C v) { return one / std::sqrt(v); });
    case UnaryOp::tanh: return map1<T>(x, out, [](C v) { return std::tanh(v); });
    case UnaryOp::sigmoid: return map1<T>(x, out, [](C v) { return sigmoid_of<C>(v); }, unary_row<T>(op));
    case UnaryOp::relu: return map1<T>(x, out, [](C v) { return v > C(0) ? v : C(0); });
    case UnaryOp::gelu_tanh:  // Hendrycks & Gimpel (2016), tanh approximation (vmath.h)
      return map1<T>(x, out, [](C v) { return vmath::gelu_tanh<C>(v); }, unary_row<T>(op));
    case UnaryOp::gelu_erf: return map1<T>(x, out, [=](C v) { return half * v * (one + std::erf(v * inv_sqrt2)); });
    case UnaryOp::silu: return map1<T>(x, out, [](C v) { return silu_of<C>(v); }, unary_row<T>(op));
    case UnaryOp::abs: return map1<T>(x, out, [](C v) { return std::abs(v); });
    case UnaryOp::sign:
      return map1<T>(x, out, [](C v) { return is_nan(v) ? v : C((v > C(0)) - (v < C(0))); });
    case UnaryOp::square: return map1<T>(x, out, [](C v) { return v * v; });
    case UnaryOp::reciprocal: return map1<T>(x, out, [=](C v) { return one / v; });
    case UnaryOp::sin: return map1<T>(x, out, [](C v) { return std::sin(v); });
    case UnaryOp::cos: return map1<T>(x, out, [](C v) { return std::cos(v); });
  }
}

// gx = gy * f'(.) with the derivative written in terms of y = f(x) (from_y) or x.
template <typename T>
void unary_backward_t(UnaryOp op, const Tensor& in, bool from_y, const Tensor& gy, const Tensor& out) {
  using C = comp_t<T>;
  const C half = C(0.5), one = C(1), two = C(2), zero = C(0);
  auto go = [&](auto f) { map2<T, T>(in, gy, out, [f](C v, C g) { return st<T>(f(v, g)); }); };
  // With the op's f32 row for unit-stride rows (the same formula, kernels/cpu/isa.h).
  auto go_row = [&](auto f) {
    map2<T, T>(in, gy, out, [f](C v, C g) { return st<T>(f(v, g)); }, unary_backward_row<T>(op));
  };
  if (from_y) {
    switch (op) {
      case UnaryOp::exp: return go([](C y, C g) { return g * y; });
      case UnaryOp::sqrt: return go([=](C y, C g) { return g / (two * y); });
      case UnaryOp::rsqrt: return go([=](C y, C g) { return -half * g * y * y * y; });
      case UnaryOp::tanh: return go([=](C y, C g) { return g * (one - y * y); });
      case UnaryOp::sigmoid: return go([=](C y, C g) { return g * y * (one - y); });
      case UnaryOp::reciprocal: return go([](C y, C g) { return -g * y * y; });
      case UnaryOp::relu: return go([=](C y, C g) { return y > zero ? g : zero; });
      default: LATHE_FAIL() << "unary_backward(" << unary_name(op) << "): no rule in terms of the output";
    }
  }
  const C inv_sqrt2 = C(0.7071067811865476);
  const C inv_sqrt2pi = C(0.3989422804014327);  // 1/sqrt(2 pi)
  switch (op) {
    case UnaryOp::neg: return go([](C, C g) { return -g; });
    case UnaryOp::exp: return go([](C x, C g) { return g * vmath::exp_of<C>(x); });
    case UnaryOp::log: return go([](C x, C g) { return g / x; });
    case UnaryOp::sqrt: return go([=](C x, C g) { return g / (two * std::sqrt(x)); });
    case UnaryOp::rsqrt:
      return go([=](C x, C g) {
        C r = one / std::sqrt(x);
        return -half * g * r * r * r;
      });
    case UnaryOp::tanh:
      return go([=](C x, C g) {
        C t = std::tanh(x);
        return g * (one - t * t);
      });
    case UnaryOp::sigmoid: return go_row([](C x, C g) { return sigmoid_backward_of<C>(x, g); });
    case UnaryOp::relu: return go([=](C x, C g) { return x > zero ? g : zero; });
    case UnaryOp::gelu_tanh: return go_row([](C x, C g) { return vmath::gelu_tanh_backward<C>(x, g); });
    case UnaryOp::gelu_erf:
      // Phi(x) + x phi(x)
      return go([=](C x, C g) {
        return g * (half * (one + std::erf(x * inv_sqrt2)) + x * inv_sqrt2pi * std::exp(-half * x * x));
      });
    case UnaryOp::silu: return go_row([](C x, C g) { return silu_backward_of<C>(x, g); });
    case UnaryOp::abs: return go([=](C x, C g) { return x > zero ? g : (x < zero ? -g : zero); });
    case UnaryOp::sign: return go([=](C, C) { return zero; });
    case UnaryOp::square: return go([=](C x, C g) { return two * x * g; });
    case UnaryOp::reciprocal: return go([](C x, C g) { return -g / (x * x); });
    case UnaryOp::sin: return go([](C x, C g) { return g * std::cos(x); });
    case UnaryOp::cos: return go([](C x, C g) { return -g * std::sin(x); });
  }
}

// ---- swiglu -------------------------------------------------------------------------------------

// silu(g) * u, and its two gradients, with silu's own formulas: the same bits as the
// unary silu then the binary mul (and their backwards) in f32 and f64.
template <typename C>
inline C swiglu_of(C g, C u) {
  return silu_of<C>(g) * u;
}

__attribute__((always_inline)) inline void swiglu_body(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = swiglu_of<float>(g[i], u[i]);
}
LATHE_ISA_ROW(swiglu_row, (const float* g, const float* u, float* o, int64_t n), (g, u, o, n), swiglu_body)

// One element of the backward: dgate = silu'(g) * (gy * u), dup = gy * silu(g).
template <typename C>
inline void swiglu_backward_of(C gy, C g, C u, C& dg, C& du) {
  du = gy * silu_of<C>(g);
  dg = silu_backward_of<C>(g, gy * u);
}

__attribute__((always_inline)) inline void swiglu_backward_body(const float* gy, const float* g, const float* u,
                                                                float* dg, float* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) swiglu_backward_of<float>(gy[i], g[i], u[i], dg[i], du[i]);
}
LATHE_ISA_ROW(swiglu_backward_row,
              (const float* gy, const float* g, const float* u, float* dg, float* du, int64_t n),
              (gy, g, u, dg, du, n), swiglu_backward_body)

template <typename T>
void swiglu_t(const Tensor& gate, const Tensor& up, const Tensor& out) {
  using C = comp_t<T>;
  void (*row)(const T*, const T*, T*, int64_t) = nullptr;
  if constexpr (std::is_same_v<T, float>) row = swiglu_row;
  map2<T, T>(gate, up, out, [](C g, C u) { return st<T>(swiglu_of<C>(g, u)); }, row);
}

template <typename T>
void swiglu_backward_t(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate,
                       const Tensor& dup) {
  using C = comp_t<T>;
  for_each_row<5>({&dgate, &dup, &gy, &gate, &up},
                  [&](const std::array<char*, 5>& p, const std::array<int64_t, 5>& s, int64_t n) {
                    constexpr int64_t E = sizeof(T);
                    auto at = [&](int k, int64_t i) { return reinterpret_cast<T*>(p[k] + i * s[k]); };
                    if (s[0] == E && s[1] == E && s[2] == E && s[3] == E && s[4] == E) {
                      if constexpr (std::is_same_v<T, float>)
                        return swiglu_backward_row(at(2, 0), at(3, 0), at(4, 0), at(0, 0), at(1, 0), n);
                    }
                    for (int64_t i = 0; i < n; ++i) {
                      C dg, du;
                      swiglu_backward_of<C>(ld(*at(2, i)), ld(*at(3, i)), ld(*at(4, i)), dg, du);
                      *at(0, i) = st<T>(dg);
                      *at(1, i) = st<T>(du);
                    }
                  });
}

// ---- binary -------------------------------------------------------------------------------------

template <typename T>
void binary_t(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  using C = comp_t<T>;
  auto arith = [&](auto f) { map2<T, T>(a, b, out, [f](C x, C y) { return st<T>(f(x, y)); }); };
  auto cmp = [&](auto f) { map2<uint8_t, T>(a, b, out, [f](C x, C y) { return static_cast<uint8_t>(f(x, y)); }); };
  switch (op) {
    case BinaryOp::add: return arith([](C x, C y) { return C(x + y); });
    case BinaryOp::sub: return arith([](C x, C y) { return C(x - y); });
    case BinaryOp::mul: return arith([](C x, C y) { return C(x * y); });
    case BinaryOp::maximum: return arith([](C x, C y) { return (x > y || is_nan(x)) ? x : y; });
    case BinaryOp::minimum: return arith([](C x, C y) { return (x < y || is_nan(x)) ? x : y; });
    case BinaryOp::eq: return cmp([](C x, C y) { return x == y; });
    case BinaryOp::ne: return cmp([](C x, C y) { return x != y; });
    case BinaryOp::lt: return cmp([](C x, C y) { return x < y; });
    case BinaryOp::le: return cmp([](C x, C y) { return x <= y; });
    case BinaryOp::gt: return cmp([](C x, C y) { return x > y; });
    case BinaryOp::ge: return cmp([](C x, C y) { return x >= y; });
    case BinaryOp::div:
    case BinaryOp::pow:
      if constexpr (detail::is_float_v<T>) {
        if (op == BinaryOp::div) return arith([](C x, C y) { return x / y; });
        return arith([](C x, C y) { return std::pow(x, y); });
      } else {
        LATHE_FAIL() << "binary(" << binary_name(op) << "): no cpu kernel for integer dtype "
                     << dtype_name(a.dtype());
      }
  }
}

template <typename T>
void scalar_map_float(const char* op, const Tensor& x, const Tensor& out, double p0, double p1, int which) {
  using C = comp_t<T>;
  const C a = C(p0), b = C(p1);
  switch (which) {
    case 0:  // pow
      if (p0 == 2.0) return map1<T>(x, out, [](C v) { return v * v; });
      if (p0 == 1.0) return map1<T>(x, out, [](C v) { return v; });
      if (p0 == 0.5) return map1<T>(x, out, [](C v) { return std::sqrt(v); });
      return map1<T>(x, out, [=](C v) { return std::pow(v, a); });
    case 1:  // affine
      return map1<T>(x, out, [=](C v) { return v * a + b; });
    case 2:  // clamp (NaN stays NaN)
      return map1<T>(x, out, [=](C v) { return v < a ? a : (v > b ? b : v); });
  }
  (void)op;
}

template <typename T>
void dispatch_float(const char* op, DType dt, T&& body) {
  switch (dt) {
    case DType::f64: body(double{}); break;
    case DType::f32: body(float{}); break;
    case DType::bf16: body(bf16_t{}); break;
    case DType::f16: body(f16_t{}); break;
    default: unsupported(op, dt);
  }
}

template <typename T>
void dispatch_numeric(const char* op, DType dt, T&& body) {
  switch (dt) {
    case DType::i64: body(int64_t{}); break;
    case DType::i32: body(int32_t{}); break;
    case DType::u8: body(uint8_t{}); break;
    case DType::i8: body(int8_t{}); break;
    default: dispatch_float(op, dt, body);
  }
}

template <typename Cond, typename V>
void where_t(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  for_each_row<4>({&out, &cond, &a, &b},
                  [&](const std::array<char*, 4>& p, const std::array<int64_t, 4>& s, int64_t n) {
                    for (int64_t i = 0; i < n; ++i) {
                      Cond c = *reinterpret_cast<const Cond*>(p[1] + i * s[1]);
                      bool take_a;
                      if constexpr (detail::is_half_v<Cond>) take_a = to_f32(c) != 0.0f;
                      else take_a = c != Cond(0);
                      *reinterpret_cast<V*>(p[0] + i * s[0]) =
                          *reinterpret_cast<const V*>(p[take_a ? 2 : 3] + i * s[take_a ? 2 : 3]);
                    }
                  });
}

template <typename Cond>
void where_by_size(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (a.element_size()) {
    case 1: return where_t<Cond, uint8_t>(cond, a, b, out);
    case 2: return where_t<Cond, uint16_t>(cond, a, b, out);
    case 4: return where_t<Cond, uint32_t>(cond, a, b, out);
    case 8: return where_t<Cond, uint64_t>(cond, a, b, out);
    default: unsupported("where", a.dtype());
  }
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  dispatch_float("unary", x.dtype(), [&](auto tag) { unary_t<decltype(tag)>(op, x, out); });
}

void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) {
  bool y_rule = op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::tanh ||
                op == UnaryOp::sigmoid || op == UnaryOp::reciprocal || op == UnaryOp::relu;
  bool no_input = op == UnaryOp::neg || op == UnaryOp::sign;
  bool from_y = y_rule && y.defined();
  const Tensor& in = from_y ? y : (x.defined() ? x : gy);
  LATHE_CHECK(from_y || x.defined() || no_input)
      << "unary_backward(" << unary_name(op) << "): needs the input x (or the output y)";
  dispatch_float("unary_backward", gy.dtype(),
                 [&](auto tag) { unary_backward_t<decltype(tag)>(op, in, from_y, gy, out); });
}

void pow_scalar(const Tensor& x, double p, const Tensor& out) {
  dispatch_float("pow_scalar", x.dtype(),
                 [&](auto tag) { scalar_map_float<decltype(tag)>("pow_scalar", x, out, p, 0.0, 0); });
}

void affine(const Tensor& x, double scale, double shift, const Tensor& out) {
  dispatch_float("affine", x.dtype(),
                 [&](auto tag) { scalar_map_float<decltype(tag)>("affine", x, out, scale, shift, 1); });
}

void clamp(const Tensor& x, double lo, double hi, const Tensor& out) {
  dispatch_float("clamp", x.dtype(), [&](auto tag) { scalar_map_float<decltype(tag)>("clamp", x, out, lo, hi, 2); });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_numeric("binary", a.dtype(), [&](auto tag) { binary_t<decltype(tag)>(op, a, b, out); });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_numeric("where", cond.dtype(), [&](auto tag) { where_by_size<decltype(tag)>(cond, a, b, out); });
}

void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
  dispatch_float("swiglu", gate.dtype(), [&](auto tag) { swiglu_t<decltype(tag)>(gate, up, out); });
}

void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate, const Tensor& dup) {
  dispatch_float("swiglu_backward", gate.dtype(),
                 [&](auto tag) { swiglu_backward_t<decltype(tag)>(gy, gate, up, dgate, dup); });
}

void add_(const Tensor& y, const Tensor& x, double alpha) {
  dispatch_numeric("add_", y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = comp_t<T>;
    if constexpr (detail::is_float_v<T>) {
      const C al = C(alpha);
      if (alpha == 1.0) map2<T, T>(y, x, y, [](C a, C b) { return st<T>(a + b); });
      else map2<T, T>(y, x, y, [al](C a, C b) { return st<T>(a + al * b); });
    } else {
      LATHE_CHECK(alpha == std::trunc(alpha)) << "add_: alpha " << alpha << " is not an integer for dtype "
                                              << dtype_name(y.dtype());
      const C al = C(alpha);
      map2<T, T>(y, x, y, [al](C a, C b) { return C(a + al * b); });
    }
  });
}

void scale_(const Tensor& y, double s) {
  dispatch_float("scale_", y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = comp_t<T>;
    const C sc = C(s);
    map1<T>(y, y, [sc](C v) { return v * sc; });
  });
}

}  // namespace lathe::kernels::cpu
