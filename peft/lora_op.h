// The LoRA layer's forward and backward as one autograd op over one output buffer:
//
//   y = x W^T + s * (xa A^T [R^T]) B^T + b        (xa: the adapter's input; x itself without dropout)
//
// Forward starts y from the bias (no BLAS clearing of C), accumulates x W^T and then s h B^T
// into the same buffer (kernels::matmul_acc_, BLAS beta = 1: no [tokens, out] branch output,
// no separate add and no scale pass over it; the scale rides on the GEMM's alpha). Backward, when the adapter
// reads x itself, writes the two input gradients dY W and (s dY B [R]) A into one buffer (the
// second GEMM accumulates), instead of two [tokens, in] tensors summed by the engine. Only
// the gradients asked for are computed: a frozen W runs no weight-gradient GEMM, and an input
// that needs no gradient (the first layer's, under a frozen embedding) runs neither
// input-gradient GEMM.
#pragma once

#include "core/tensor.h"

namespace lathe::peft {

// x [..., in] (>= 2 dims), w [out, in], bias [out] or undefined, xa [..., in] or undefined
// (= x), a [r, in], b [out, r], rmat [r, r] or undefined (LoRA-XS / LoRA-SB's middle factor);
// all one floating dtype and device. Returns [..., out].
Tensor lora_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& xa, const Tensor& a,
                   const Tensor& b, const Tensor& rmat, double scale);

}  // namespace lathe::peft
