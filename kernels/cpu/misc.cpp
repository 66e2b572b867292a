// CPU dropout (the optimizer kernels are in cpu/optim.cpp).
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

}  // namespace lathe::kernels::cpu
