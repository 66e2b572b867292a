// Branch-free float exp for loops the compiler vectorizes (libm's expf is an opaque call,
// so a loop around it stays scalar: ~5-10 ns per element instead of ~0.5).
//
// exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 (Cody-Waite: ln 2 split in a
// part with few mantissa bits, so n * kLn2Hi is exact, and a small correction),
// |r| <= ln 2 / 2 (about); e^r by its Taylor series to r^7 (truncation error
// r^8 / 8! < 5.3e-9 relative, well below half an ulp), evaluated by Horner; 2^n applied as two exact power-of-two
// factors so results that are subnormal (x down to about -103.3) round once and n = 128
// (x up to 88.72) does not overflow the exponent field. Max error over a dense sweep of the
// domain is checked by tests/kernels/test_vmath.cpp (a few ulp).
// Special values: exp(-inf) = 0, exp(+inf) = +inf, exp(NaN) = NaN, overflow -> +inf.
//
// Only float: double keeps libm (the f64 paths are the ones gradient checks rely on).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lathe::kernels::cpu::vmath {

inline float exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;       // 0x3F317200: 15 significant bits
  constexpr float kLn2Lo = 1.42860676533018708e-06f;  // ln 2 - kLn2Hi
  constexpr float kRound = 12582912.0f;               // 1.5 * 2^23: adding it rounds to an integer
  // |x| clamped to 104 (exp(-104) rounds to 0, exp(104) overflows to +inf; n stays within
  // [-151, 151]), on the bits: a float comparison would keep GCC from vectorizing the loop
  // (it may trap on NaN), integer ones do not. NaN (|bits| above +inf's) passes unchanged.
  int32_t ix;
  std::memcpy(&ix, &x, sizeof ix);
  const int32_t ax = ix & 0x7FFFFFFF;
  const int32_t cl = (ax > 0x42D00000 && ax <= 0x7F800000) ? 0x42D00000 : ax;  // 104.0f
  ix = (ix & int32_t(0x80000000u)) | cl;
  std::memcpy(&x, &ix, sizeof x);
  const float t = x * kLog2e + kRound;
  const float nf = t - kRound;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int32_t n = tb - 0x4B400000;  // bits of kRound: t's low mantissa bits hold n
  const float r = (x - nf * kLn2Hi) - nf * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t n1 = n >> 1, n2 = n - n1;
  const int32_t b1 = ((n1 + 127) & 0xFF) << 23, b2 = ((n2 + 127) & 0xFF) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  return (p * s1) * s2;
}

// exp for the compute type C of a kernel: the vectorizable one for float, libm for double.
template <typename C>
inline C exp_of(C x) {
  if constexpr (sizeof(C) == sizeof(float)) return vmath::exp(x);
  else return std::exp(x);
}

// x's sign bit clear ? a : b, as a bit blend: a float comparison or std::signbit select
// keeps GCC from vectorizing a loop (it may trap on NaN); integer masks do not.
template <typename C>
inline C sign_select(C x, C a, C b) {
  using I = std::conditional_t<sizeof(C) == 4, int32_t, int64_t>;
  I xi, ai, bi;
  std::memcpy(&xi, &x, sizeof xi);
  std::memcpy(&ai, &a, sizeof ai);
  std::memcpy(&bi, &b, sizeof bi);
  const I neg = xi >> (8 * sizeof(I) - 1);  // all ones when the sign bit is set
  const I r = (ai & ~neg) | (bi & neg);
  C out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

// 1 / (1 + exp(-x)) in C (NaN stays NaN; exp overflow gives the exact limit 0).
template <typename C>
inline C sigmoid(C x) {
  return C(1) / (C(1) + exp_of<C>(-x));
}

// GELU, tanh form: 0.5 v (1 + tanh u), u = sqrt(2/pi) (v + 0.044715 v^3), evaluated as
// v * sigmoid(2u) = v / (1 + exp(-2u)) since (1 + tanh u) / 2 = sigmoid(2u): one exp
// instead of tanh (~6x faster), and no cancellation in 1 + tanh u for v < 0. The unary op
// and the fused linear's epilogue both call this, so their results agree bit for bit.
template <typename C>
inline C gelu_tanh(C v) {
  const C k_tanh = C(0.7978845608028654);  // sqrt(2/pi)
  const C c_tanh = C(0.044715);
  return v / (C(1) + exp_of<C>(C(-2) * k_tanh * (v + c_tanh * v * v * v)));
}

// g * d/dx gelu_tanh(x): with s = sigmoid(2u), u = k (x + c x^3) (the forward's form),
// s + 2 x s (1 - s) du/dx, du/dx = k (1 + 3 c x^2). 1 - s = e s is exact-ish where s is
// near 1 (e <= 1, i.e. x >= 0); elsewhere 1 - s has no cancellation and e s could be
// inf * 0. The sign bit decides (sign_select, which keeps the loop vectorizable). The unary
// backward and the fused linear backward both call this, so they agree bit for bit.
template <typename C>
inline C gelu_tanh_backward(C x, C g) {
  const C k_tanh = C(0.7978845608028654), c_tanh = C(0.044715), one = C(1), two = C(2);
  const C e = exp_of<C>(C(-2) * k_tanh * (x + c_tanh * x * x * x));
  const C s = one / (one + e);
  const C oms = sign_select(x, e * s, one - s);
  const C du = k_tanh * (one + C(3) * c_tanh * x * x);
  return g * (s + two * x * s * oms * du);
}

}  // namespace lathe::kernels::cpu::vmath
