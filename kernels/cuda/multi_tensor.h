// Multi-tensor CUDA kernels (kernels/cuda/misc.cu): one launch updates many tensors, so an
// optimizer step over a model's ~100s of parameters costs a few launches, not hundreds.
// Not part of the Backend table; callers that know they are on CUDA use it directly.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels::cuda {

// AdamW over lists of tensors, element for element the math of adamw_step (and so of the
// CPU's kernels/cpu/misc.cpp: double arithmetic, f32 stores, bit-identical results).
// params, ms, vs: contiguous f32 on one CUDA device; grads: contiguous f32 or bf16 (a bf16
// grad is widened exactly); the four lists have one length and matching numels. Empty
// tensors are skipped. Launches ceil(tensors / 48) kernels on the device's compute stream;
// no host synchronisation.
void adamw_multi_tensor(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step,
                        AdamVariant variant = AdamVariant::torch);

}  // namespace lathe::kernels::cuda
