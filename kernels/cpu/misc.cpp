// CPU dropout and fused AdamW.
#include <cmath>

#include "kernels/cpu/elementwise.h"

namespace lathe::kernels::cpu {

using detail::comp_t;
using detail::for_each_row;
using detail::ld;
using detail::st;

namespace {

// Element i (row-major position, read off the contiguous output) draws stream value
// seed:offset+i, so the mask is the same for any thread count or device.
template <typename T>
void dropout_t(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) {
  using C = comp_t<T>;
  const C scale = p >= 1.0 ? C(0) : C(1.0 / (1.0 - p));
  const std::array<uint32_t, 2> key = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const char* y0 = static_cast<const char*>(out.y.raw_data());
  for_each_row<3>({&out.y, &out.mask, &x}, [&](const std::array<char*, 3>& ptr, const std::array<int64_t, 3>& s,
                                                 int64_t n) {
    const uint64_t first = static_cast<uint64_t>((ptr[0] - y0) / int64_t(sizeof(T)));
    T* y = reinterpret_cast<T*>(ptr[0]);  // y and mask are contiguous: unit strides
    uint8_t* m = reinterpret_cast<uint8_t*>(ptr[1]);
    // One Philox block yields 4 consecutive stream values; this is Generator::at's
    // mapping (value i = word i % 4 of block i / 4), computed once per block.
    uint64_t cur = ~uint64_t(0);
    std::array<uint32_t, 4> blk{};
    for (int64_t j = 0; j < n; ++j) {
      const uint64_t idx = offset + first + static_cast<uint64_t>(j);
      if ((idx >> 2) != cur) {
        cur = idx >> 2;
        blk = philox4x32_10({static_cast<uint32_t>(cur), static_cast<uint32_t>(cur >> 32), 0u, 0u}, key);
      }
      bool keep = static_cast<double>(uint_to_unit_float(blk[idx & 3])) >= p;
      m[j] = keep ? 1 : 0;
      C v = ld(*reinterpret_cast<const T*>(ptr[2] + j * s[2]));
      y[j] = st<T>(keep ? C(v * scale) : C(0));
    }
  });
}

}  // namespace

void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) {
  LATHE_CHECK(out.y.is_contiguous() && out.mask.is_contiguous()) << "dropout: outputs must be contiguous";
  switch (x.dtype()) {
    case DType::f64: return dropout_t<double>(x, p, seed, offset, out);
    case DType::f32: return dropout_t<float>(x, p, seed, offset, out);
    case DType::bf16: return dropout_t<bf16_t>(x, p, seed, offset, out);
    case DType::f16: return dropout_t<f16_t>(x, p, seed, offset, out);
    default: LATHE_FAIL() << "dropout: no cpu kernel for dtype " << dtype_name(x.dtype());
  }
}

namespace {

// Hyper-parameters rounded to f32 once (the bias corrections computed in double first).
struct AdamF {
  float lr, beta1, beta2, omb1, omb2, eps, wd, bc1, bc2;
};

// One element, in f32 with each operation rounded once (ISO C++ mode: no FMA contraction),
// in the same order as the CUDA kernel (kernels/cuda/misc.cu), so both agree bit for bit.
inline void adamw_element(float& p, float& m, float& v, float g, const AdamF& a) {
  const float mi = a.beta1 * m + a.omb1 * g;
  const float vi = a.beta2 * v + (a.omb2 * g) * g;
  const float denom = std::sqrt(vi / a.bc2) + a.eps;
  const float upd = (mi / a.bc1) / denom + a.wd * p;
  m = mi;
  v = vi;
  p = p - a.lr * upd;
}

}  // namespace

// Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), with Adam's
// bias corrections; f32 parameters, gradients and state, computed in f32 (vectorized).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step) {
  const AdamF a{static_cast<float>(lr),
                static_cast<float>(beta1),
                static_cast<float>(beta2),
                static_cast<float>(1.0 - beta1),
                static_cast<float>(1.0 - beta2),
                static_cast<float>(eps),
                static_cast<float>(weight_decay),
                static_cast<float>(1.0 - std::pow(beta1, static_cast<double>(step))),
                static_cast<float>(1.0 - std::pow(beta2, static_cast<double>(step)))};
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
      for (int64_t j = 0; j < n; ++j) adamw_element(pp[j], mr[j], vr[j], g[j], a);
    } else {
      for (int64_t j = 0; j < n; ++j)
        adamw_element(pp[j], mr[j], vr[j], *reinterpret_cast<const float*>(ptr[1] + j * s[1]), a);
    }
  });
}

}  // namespace lathe::kernels::cpu
