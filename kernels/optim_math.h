// The per-element math of the optimizer kernels, written once for the CPU (kernels/cpu/optim.cpp)
// and CUDA (kernels/cuda/optim.cu) so that both round every operation the same way and agree
// bit for bit: on the device each operation is a correctly rounded intrinsic (no FMA
// contraction), on the host the compiler runs in ISO C++ mode (no contraction either).
//
// Pieces:
//   AdamScalars, adam_element<HF>   AdamW in the torch form and in the HF (GaLore/Fira) form
//   quant8_nearest, quant8_signfix  the nearest-code search of the 8-bit blockwise states
//   sgd_sai_element                 SGD-SaI's momentum and scaled step
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LATHE_OM_HD __host__ __device__ __forceinline__
#define LATHE_OM_UNROLL _Pragma("unroll")
#else
#define LATHE_OM_HD inline
#define LATHE_OM_UNROLL _Pragma("GCC unroll 8")
#endif

namespace lathe::kernels::optim_math {

LATHE_OM_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
LATHE_OM_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
LATHE_OM_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
LATHE_OM_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
LATHE_OM_HD float fsqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
LATHE_OM_HD bool finite(float a) {
#if defined(__CUDA_ARCH__)
  return isfinite(a);
#else
  return std::isfinite(a);
#endif
}

// ---- AdamW ------------------------------------------------------------------------------------

// Hyper-parameters rounded to f32 once on the host (bias corrections and the HF step size in
// double first), shared by both devices.
struct AdamScalars {
  float lr, beta1, beta2, omb1, omb2, eps, wd, bc1, bc2;
  float step_size;  // HF: lr * sqrt(bc2) / bc1
  float lr_wd;      // HF: lr * weight_decay
};

inline AdamScalars adam_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamScalars a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(beta1);
  a.beta2 = static_cast<float>(beta2);
  a.omb1 = static_cast<float>(1.0 - beta1);
  a.omb2 = static_cast<float>(1.0 - beta2);
  a.eps = static_cast<float>(eps);
  a.wd = static_cast<float>(weight_decay);
  a.bc1 = static_cast<float>(bc1);
  a.bc2 = static_cast<float>(bc2);
  a.step_size = static_cast<float>(lr * std::sqrt(bc2) / bc1);
  a.lr_wd = static_cast<float>(lr * weight_decay);
  return a;
}

// m' = b1 m + (1 - b1) g;  v' = b2 v + ((1 - b2) g) g
LATHE_OM_HD void adam_moments(float& m, float& v, float g, const AdamScalars& a) {
  m = fadd(fmul(a.beta1, m), fmul(a.omb1, g));
  v = fadd(fmul(a.beta2, v), fmul(fmul(a.omb2, g), g));
}

// The parameter update from the new moments.
//  torch (torch.optim.AdamW): p' = p - lr ((m / bc1) / (sqrt(v / bc2) + eps) + wd p)
//    decay on the un-updated p, eps outside the bias correction.
//  HF (transformers' AdamW, GaLore, Fira): p1 = p - (lr sqrt(bc2) / bc1) (m / (sqrt(v) + eps));
//    p' = p1 - (lr wd) p1, decay after the update on the updated weight.
template <bool HF>
LATHE_OM_HD float adam_param(float p, float m, float v, const AdamScalars& a) {
  if constexpr (HF) {
    const float p1 = fsub(p, fmul(a.step_size, fdiv(m, fadd(fsqrt(v), a.eps))));
    return fsub(p1, fmul(a.lr_wd, p1));
  } else {
    const float denom = fadd(fsqrt(fdiv(v, a.bc2)), a.eps);
    return fsub(p, fmul(a.lr, fadd(fdiv(fdiv(m, a.bc1), denom), fmul(a.wd, p))));
  }
}

template <bool HF>
LATHE_OM_HD void adam_element(float& p, float& m, float& v, float g, const AdamScalars& a) {
  adam_moments(m, v, g, a);
  p = adam_param<HF>(p, m, v, a);
}

// ---- 8-bit blockwise states (bitsandbytes' dynamic quantisation) -------------------------------

// The code of x (x in [-1, 1] after the block scaling) is the index of the nearest entry of the
// sorted 256-entry table. Both searches below first find pos = the number of entries below x,
// so table[pos - 1] < x <= table[pos]; then the midpoint decides, a value exactly at the
// midpoint taking the higher index. Out-of-range values clamp; NaN (never produced:
// non-finite gradients zero the state) gives 0.
LATHE_OM_HD uint8_t quant8_from_pos(const float* table, int pos, float x) {
  if (pos == 0) return 0;
  if (pos == 256) return 255;
  const float midpoint = fmul(fadd(table[pos - 1], table[pos]), 0.5f);
  return static_cast<uint8_t>(x >= midpoint ? pos : pos - 1);
}

// pos by a branch-free binary search (the GPU's, from shared memory): the codes of neighbouring
// elements are unrelated, so a branchy search would mispredict about half its eight steps.
// The CPU finds the same pos faster through a bucket table (kernels/cpu/optim.cpp).
LATHE_OM_HD uint8_t quant8_nearest(const float* table, float x) {
  int pos = 0;
  LATHE_OM_UNROLL
  for (int step = 128; step >= 1; step >>= 1) pos += table[pos + step - 1] < x ? step : 0;
  return quant8_from_pos(table, pos, x);
}

// x / absmax, 0 for an all-zero block (whose codes are then the zero entry).
LATHE_OM_HD float quant8_scaled(float x, float absmax) { return absmax > 0.0f ? fdiv(x, absmax) : 0.0f; }

// For the signed map (the first moment): a code whose value has the other sign than x moves one
// step toward x's sign (bitsandbytes' rule; 0 counts as positive, so only a negative x that
// rounded to the zero code moves, to the smallest negative code). Keeps sign(m) through the
// round trip, so the update direction of tiny moments is never flipped.
LATHE_OM_HD uint8_t quant8_signfix(const float* table, uint8_t c, float x) {
  const bool code_neg = table[c] < 0.0f;
  const bool x_neg = x < 0.0f;
  if (code_neg == x_neg) return c;
  return static_cast<uint8_t>(x_neg ? c - 1 : c + 1);
}

// Code of x within a block of absolute maximum absmax (codes of an all-zero block: the zero
// entry, through x / absmax taken as 0).
LATHE_OM_HD uint8_t quant8_encode(const float* table, float x, float absmax, bool is_signed) {
  const float y = quant8_scaled(x, absmax);
  const uint8_t c = quant8_nearest(table, y);
  return is_signed ? quant8_signfix(table, c, y) : c;
}

LATHE_OM_HD float quant8_decode(const float* table, uint8_t c, float absmax) { return fmul(table[c], absmax); }

// ---- SGD-SaI ----------------------------------------------------------------------------------

// SGD-SaI (Xu et al., "No More Adam: Learning Rate Scaling at Initialization is All You Need",
// 2024), the released code's step: b = g on the first step, else b = mu b + (1 - mu) g (no
// buffer with mu = 0: b = g); p' = p (1 - lr wd) - (lr s) b, s the tensor's (scaled) g-SNR.
struct SaiScalars {
  float momentum, omm, decay_factor;  // mu, 1 - mu, 1 - lr wd
};
inline SaiScalars sai_scalars(double lr, double momentum, double weight_decay) {
  return SaiScalars{static_cast<float>(momentum), static_cast<float>(1.0 - momentum),
                    static_cast<float>(1.0 - lr * weight_decay)};
}
// neg_lr_scale = -(lr * s) in f32; buf == nullptr when there is no momentum buffer.
LATHE_OM_HD void sgd_sai_element(float& p, float* buf, float g, bool first, float neg_lr_scale, const SaiScalars& a) {
  float d = g;
  if (buf) {
    d = first ? g : fadd(fmul(a.momentum, *buf), fmul(a.omm, g));
    *buf = d;
  }
  p = fadd(fmul(p, a.decay_factor), fmul(neg_lr_scale, d));
}

}  // namespace lathe::kernels::optim_math
