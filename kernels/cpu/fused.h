// CPU kernels of the fused ops (kernels/cpu/fused.cpp): the linear layer with its bias and
// activation, and AdamW over a list of tensors. On the CPU they are compositions of the
// other kernels, so their results are bit-identical to the separate ops.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels::cpu {

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
            const Tensor& pre);
// g = dy * act'(pre) (gelu_tanh only); db, when defined ([N], contiguous), the sum of g over
// every dim but the last, with the bits of sum_to_shape (one pass for f32/f64).
void linear_act_backward(Activation act, const Tensor& pre, const Tensor& dy, const Tensor& g, const Tensor& db);
void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant);

}  // namespace lathe::kernels::cpu
