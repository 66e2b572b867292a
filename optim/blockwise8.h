// 8-bit blockwise Adam moments of one tensor, the state layout shared by AdamW (state_bits: 8)
// and the 8-bit moments of GaLore/Fira. Maps and kernels: kernels/blockwise8.h and
// kernels::quantize_blockwise8 / dequantize_blockwise8 / adamw_step_8bit (kernels/ops.h).
//
// A moment pair under a key prefix P (P = "" for AdamW) is four state tensors:
//   P + "exp_avg_q8"        u8, the tensor's shape: codes of m in the signed dynamic map
//   P + "exp_avg_absmax"    f32 [ceil(numel / block)]: max |m| per block
//   P + "exp_avg_sq_q8"     u8, the tensor's shape: codes of v in the unsigned dynamic map
//   P + "exp_avg_sq_absmax" f32 [ceil(numel / block)]
// All zeros at the start (the dequantised moments are 0, as bitsandbytes starts). They are
// plain tensors, so checkpoints store and restore them bit for bit.
#pragma once

#include <string>

#include "kernels/ops.h"
#include "optim/optimizer.h"

namespace lathe::optim {

struct Moments8 {
  Tensor m_codes, m_absmax, v_codes, v_absmax;
};

// Zeroed 8-bit moments for a tensor of `shape` on dev, as state entries under `prefix`.
StateMap init_moments8(const Shape& shape, Device dev, int64_t block, const std::string& prefix = "");
// True when `state` holds the four entries under prefix.
bool has_moments8(const StateMap& state, const std::string& prefix = "");
// The four entries under prefix (an error names the missing key).
Moments8 moments8(const StateMap& state, const std::string& prefix = "");
// One 8-bit AdamW step of param from grad with the moments under prefix
// (kernels::adamw_step_8bit). For GaLore: param may be a zero tensor of the projected shape,
// with lr = 1 and weight_decay = 0, to get the (negated, scaled) Adam direction.
void adam_step8(const Tensor& param, const Tensor& grad, const StateMap& state, const std::string& prefix, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step,
                kernels::AdamVariant variant, int64_t block);
// Dequantised f32 copies of m and v (tests, reports).
Tensor dequantize_m(const Moments8& s, int64_t block);
Tensor dequantize_v(const Moments8& s, int64_t block);
// State bytes of the pair for a tensor of numel elements: 2 numel + 8 ceil(numel / block).
int64_t moments8_bytes(int64_t numel, int64_t block);

}  // namespace lathe::optim
