// CPU kernels of the optimizer ops (kernels/cpu/optim.cpp): AdamW in both variants, the 8-bit
// blockwise states and SGD-SaI. The element math is kernels/optim_math.h, shared with CUDA.
#pragma once

#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels::cpu {

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant);
void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed);
void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed,
                           const Tensor& out);
void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                     const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, AdamVariant variant, int64_t block);
void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                  double momentum, double weight_decay, bool first);

}  // namespace lathe::kernels::cpu
