#include "optim/blockwise8.h"

#include "kernels/blockwise8.h"

namespace lathe::optim {

namespace {
const char* const kKeys[4] = {"exp_avg_q8", "exp_avg_absmax", "exp_avg_sq_q8", "exp_avg_sq_absmax"};
}

StateMap init_moments8(const Shape& shape, Device dev, int64_t block, const std::string& prefix) {
  LATHE_CHECK(kernels::valid_quant_block(block))
      << "8-bit optimizer state: block size must be a power of two in [64, 4096], got " << block;
  const int64_t nb = kernels::quant_blocks(shape_numel(shape), block);
  return {{prefix + kKeys[0], Tensor::zeros(shape, DType::u8, dev)},
          {prefix + kKeys[1], Tensor::zeros({nb}, DType::f32, dev)},
          {prefix + kKeys[2], Tensor::zeros(shape, DType::u8, dev)},
          {prefix + kKeys[3], Tensor::zeros({nb}, DType::f32, dev)}};
}

bool has_moments8(const StateMap& state, const std::string& prefix) {
  for (const char* k : kKeys)
    if (!state.count(prefix + k)) return false;
  return true;
}

Moments8 moments8(const StateMap& state, const std::string& prefix) {
  auto get = [&](const char* k) {
    auto it = state.find(prefix + k);
    LATHE_CHECK(it != state.end()) << "8-bit optimizer state: missing '" << prefix << k << "'";
    return it->second;
  };
  return Moments8{get(kKeys[0]), get(kKeys[1]), get(kKeys[2]), get(kKeys[3])};
}

void adam_step8(const Tensor& param, const Tensor& grad, const StateMap& state, const std::string& prefix, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step,
                kernels::AdamVariant variant, int64_t block) {
  const Moments8 s = moments8(state, prefix);
  kernels::adamw_step_8bit(param, grad.to(DType::f32), s.m_codes, s.m_absmax, s.v_codes, s.v_absmax, lr, beta1, beta2,
                           eps, weight_decay, step, variant, block);
}

Tensor dequantize_m(const Moments8& s, int64_t block) {
  return kernels::dequantize_blockwise8(s.m_codes, s.m_absmax, block, true);
}
Tensor dequantize_v(const Moments8& s, int64_t block) {
  return kernels::dequantize_blockwise8(s.v_codes, s.v_absmax, block, false);
}

int64_t moments8_bytes(int64_t numel, int64_t block) { return 2 * numel + 8 * kernels::quant_blocks(numel, block); }

}  // namespace lathe::optim
