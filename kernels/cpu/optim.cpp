// CPU optimizer kernels: OpenMP over rows (AdamW, SGD-SaI) or quantisation blocks (8-bit),
// the per-element math from kernels/optim_math.h so the CUDA kernels agree bit for bit.
#include "kernels/cpu/optim.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/blockwise8.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/optim_math.h"

namespace lathe::kernels::cpu {

namespace om = optim_math;
using detail::for_each_row;

namespace {

template <bool HF>
void adamw_t(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const om::AdamScalars& a) {
  const char* p0 = static_cast<const char*>(param.raw_data());
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  for_each_row<2>({&param, &grad}, [&](const std::array<char*, 2>& ptr, const std::array<int64_t, 2>& s, int64_t n) {
    const int64_t first = (ptr[0] - p0) / int64_t(sizeof(float));
    float* pp = reinterpret_cast<float*>(ptr[0]);
    float* mr = mp + first;
    float* vr = vp + first;
    if (s[1] == int64_t(sizeof(float))) {
      const float* g = reinterpret_cast<const float*>(ptr[1]);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) om::adam_element<HF>(pp[j], mr[j], vr[j], g[j], a);
    } else {
      for (int64_t j = 0; j < n; ++j)
        om::adam_element<HF>(pp[j], mr[j], vr[j], *reinterpret_cast<const float*>(ptr[1] + j * s[1]), a);
    }
  });
}

// pos (the number of map entries below x, optim_math::quant8_from_pos) through a table of
// buckets instead of eight dependent loads: the top 14 bits of x's f32 pattern (sign, exponent,
// 5 mantissa bits) select a bucket of values, start[] holds the number of entries below every
// value of the bucket, and a short forward scan (at most about 3 entries share a bucket) ends
// at the exact count. Same pos as the binary search by construction, so CPU and CUDA codes agree.
struct Quant8Lut {
  static constexpr int kShift = 18;
  std::vector<uint16_t> start;
  const float* table;
  explicit Quant8Lut(const float* t) : start(size_t(1) << (32 - kShift)), table(t) {
    for (uint32_t k = 0; k < start.size(); ++k) {
      // The smallest value of the bucket: its lowest pattern when positive, its highest
      // (largest magnitude) when negative. NaN buckets compare false everywhere: count 0.
      const uint32_t bits = (k << kShift) | ((k >> (31 - kShift)) ? ((1u << kShift) - 1) : 0u);
      float lo;
      std::memcpy(&lo, &bits, sizeof lo);
      int pos = 0;
      while (pos < 256 && t[pos] < lo) ++pos;
      start[k] = static_cast<uint16_t>(pos);
    }
  }
  int pos(float x) const {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    int p = start[bits >> kShift];
    while (p < 256 && table[p] < x) ++p;
    return p;
  }
  uint8_t encode(float x, float absmax, bool is_signed) const {
    const float y = om::quant8_scaled(x, absmax);
    const uint8_t c = om::quant8_from_pos(table, pos(y), y);
    return is_signed ? om::quant8_signfix(table, c, y) : c;
  }
};

const Quant8Lut& quant8_lut(bool is_signed) {
  static const Quant8Lut s(quant_map8(true).data());
  static const Quant8Lut u(quant_map8(false).data());
  return is_signed ? s : u;
}

// Blocks handed to one thread at a time: enough work per chunk (about 64K elements) that the
// OpenMP overhead stays small, and small tensors run on one thread.
int64_t blocks_per_chunk(int64_t block) { return std::max<int64_t>(1, 65536 / block); }

}  // namespace

// Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), with Adam's
// bias corrections; f32 parameters, gradients and state, computed in f32 (vectorized).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
  const om::AdamScalars a = om::adam_scalars(lr, beta1, beta2, eps, weight_decay, step);
  if (variant == AdamVariant::hf) adamw_t<true>(param, grad, m, v, a);
  else adamw_t<false>(param, grad, m, v, a);
}

void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed) {
  const Quant8Lut& lut = quant8_lut(is_signed);
  const float* xp = x.data<float>();
  uint8_t* cp = codes.data<uint8_t>();
  float* ap = absmax.data<float>();
  const int64_t n = x.numel(), nb = quant_blocks(n, block);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * block, hi = std::min(n, lo + block);
    float am = 0.0f;
    for (int64_t i = lo; i < hi; ++i) am = std::max(am, std::fabs(xp[i]));
    ap[b] = am;
    for (int64_t i = lo; i < hi; ++i) cp[i] = lut.encode(xp[i], am, is_signed);
  }
}

void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed,
                           const Tensor& out) {
  const float* table = quant_map8(is_signed).data();
  const uint8_t* cp = codes.data<uint8_t>();
  const float* ap = absmax.data<float>();
  float* op = out.data<float>();
  const int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) op[i] = om::quant8_decode(table, cp[i], ap[i / block]);
}

namespace {

// One quantisation block of the 8-bit Adam step (spec: bitsandbytes' blockwise kernel):
// dequantise, update the moments in f32 (zero them where g is not finite), the new absmax,
// the parameter from the unquantised moments, then requantise. ms, vs: scratch of `block`.
template <bool HF>
void adam8_block(float* p, const float* g, uint8_t* c1, float* a1, uint8_t* c2, float* a2, int64_t len,
                 const om::AdamScalars& a, const Quant8Lut& ls, const Quant8Lut& lu, float* ms, float* vs) {
  const float* qs = ls.table;
  const float* qu = lu.table;
  float am1 = 0.0f, am2 = 0.0f;
  const float old1 = *a1, old2 = *a2;
  for (int64_t j = 0; j < len; ++j) {
    const float gj = g[j];
    float m = 0.0f, v = 0.0f;
    if (om::finite(gj)) {
      m = om::quant8_decode(qs, c1[j], old1);
      v = om::quant8_decode(qu, c2[j], old2);
      om::adam_moments(m, v, gj, a);
      p[j] = om::adam_param<HF>(p[j], m, v, a);
    }
    ms[j] = m;
    vs[j] = v;
    am1 = std::max(am1, std::fabs(m));
    am2 = std::max(am2, std::fabs(v));
  }
  *a1 = am1;
  *a2 = am2;
  for (int64_t j = 0; j < len; ++j) {
    c1[j] = ls.encode(ms[j], am1, true);
    c2[j] = lu.encode(vs[j], am2, false);
  }
}

template <bool HF>
void adamw_8bit_t(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                  const Tensor& v_codes, const Tensor& v_absmax, const om::AdamScalars& a, int64_t block) {
  const Quant8Lut& ls = quant8_lut(true);
  const Quant8Lut& lu = quant8_lut(false);
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  uint8_t* c1 = m_codes.data<uint8_t>();
  uint8_t* c2 = v_codes.data<uint8_t>();
  float* a1 = m_absmax.data<float>();
  float* a2 = v_absmax.data<float>();
  const int64_t n = param.numel(), nb = quant_blocks(n, block);
  const int64_t chunk = blocks_per_chunk(block);
#pragma omp parallel if (nb > chunk)
  {
    std::vector<float> ms(static_cast<size_t>(block)), vs(static_cast<size_t>(block));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t lo = b * block, len = std::min(n - lo, block);
      adam8_block<HF>(p + lo, g + lo, c1 + lo, a1 + b, c2 + lo, a2 + b, len, a, ls, lu, ms.data(), vs.data());
    }
  }
}

}  // namespace

void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                     const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, AdamVariant variant, int64_t block) {
  const om::AdamScalars a = om::adam_scalars(lr, beta1, beta2, eps, weight_decay, step);
  if (variant == AdamVariant::hf) adamw_8bit_t<true>(param, grad, m_codes, m_absmax, v_codes, v_absmax, a, block);
  else adamw_8bit_t<false>(param, grad, m_codes, m_absmax, v_codes, v_absmax, a, block);
}

void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                  double momentum, double weight_decay, bool first) {
  const om::SaiScalars s = om::sai_scalars(lr, momentum, weight_decay);
  const float neg = -om::fmul(static_cast<float>(lr), scale.to(DType::f32).contiguous().data<float>()[0]);
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* b = buf.defined() ? buf.data<float>() : nullptr;
  const int64_t n = param.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) om::sgd_sai_element(p[i], b ? b + i : nullptr, g[i], first, neg, s);
}

}  // namespace lathe::kernels::cpu
