// 8-bit blockwise quantisation of optimizer states, as bitsandbytes does it (Dettmers et al.,
// "8-bit Optimizers via Block-wise Quantization", ICLR 2022): a tensor is cut into blocks of
// `block` consecutive elements (256 by default, bitsandbytes >= 0.44); each block keeps its
// absolute maximum in f32 and each element the u8 index of the nearest entry of a fixed
// 256-entry "dynamic" map of x / absmax. The maps and the kernels that use them
// (kernels::quantize_blockwise8, dequantize_blockwise8, adamw_step_8bit in kernels/ops.h) are
// here and in kernels/ops.h; optim/blockwise8.h holds the optimizer-side state layout.
#pragma once

#include <array>
#include <cstdint>

namespace lathe::kernels {

// The dynamic quantisation maps (bitsandbytes' create_dynamic_map with 7 exponent bits),
// sorted ascending, built once on first use.
//  signed (first moment):  for i = 0..6 the 2^i midpoints of linspace(0.1, 1, 2^i + 1) times
//    10^(i-6), with both signs, plus 0 and 1: index 127 = 0, 255 = 1, 0 = -0.99296875 (no -1),
//    smallest magnitude 5.5e-7.
//  unsigned (second moment): the 2^(i+1) midpoints of linspace(0.1, 1, 2^(i+1) + 1) times
//    10^(i-6), plus 0 and 1: index 0 = 0, 1 = 3.25e-7, 254 = 0.996484375, 255 = 1.
// Values are computed in f32 the way torch computes them (linspace with its half-way split,
// midpoints and scaling in f32), so they equal bitsandbytes' tables.
const std::array<float, 256>& quant_map8(bool is_signed);

// Block sizes the kernels accept: powers of two from 64 to 4096.
bool valid_quant_block(int64_t block);
inline int64_t quant_blocks(int64_t numel, int64_t block) { return (numel + block - 1) / block; }

}  // namespace lathe::kernels
