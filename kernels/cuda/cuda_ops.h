// The CUDA kernels behind CudaBackend (cuda_backend.cu), one declaration per Backend method,
// grouped by the file that defines them. Same contracts as kernels/backend.h: outputs are
// allocated and contiguous, inputs may be strided unless the op layer made them contiguous.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels::cuda {

// copy.cu: copies, fills, transfers
void copy(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);
void copy_from_host(const Tensor& dst, const Tensor& host_src);
void copy_to_host(const Tensor& host_dst, const Tensor& src);
void synchronize(int device_index);

// elementwise.cu
void unary(UnaryOp op, const Tensor& x, const Tensor& out);
void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out);
void pow_scalar(const Tensor& x, double p, const Tensor& out);
void affine(const Tensor& x, double scale, double shift, const Tensor& out);
void clamp(const Tensor& x, double lo, double hi, const Tensor& out);
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);
void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out);
void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate, const Tensor& dup);
void add_(const Tensor& y, const Tensor& x, double alpha);
void scale_(const Tensor& y, double s);

// reduce.cu
void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out);

// matmul.cu (cuBLAS / cuBLASLt)
void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out);
// out += alpha * op(a) @ op(b) (cuBLAS beta = 1)
void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha, const Tensor& out);

// linear.cu (cuBLASLt with bias / GELU epilogues)
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out, const Tensor& pre);
// Calls of linear that cuBLASLt declined (no algorithm for the shape, layout or alignment),
// so that took matmul + separate kernels: lets tests check the fused path is really taken.
int64_t linear_declined_count();

// Paths written but not yet verified on a GPU are opt-in until a device run has checked them
// (tests/kernels/cuda/test_cuda_linear.cpp turns them on; scripts/device_check.sh runs it):
// the cuBLASLt epilogue GEMM of linear() (else: the GEMM, then bias and GELU kernels, each
// verified) and the multi-tensor AdamW (else: one adamw_step per tensor, verified).
// Environment: LATHE_CUDA_LT_EPILOGUE=1, LATHE_CUDA_MULTI_TENSOR_ADAMW=1.
bool linear_lt_enabled();
void set_linear_lt_enabled(bool on);
bool multi_tensor_adamw_enabled();
void set_multi_tensor_adamw_enabled(bool on);

// softmax.cu
void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out);
void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out);

// norm.cu
void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out);
void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                         const NormGrads& out);
void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out);
void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd, const NormGrads& out);

// index.cu
void embedding(const Tensor& w, const Tensor& ids, const Tensor& out);
void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out);
void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out);
void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out);
void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out);
void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out);
void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols, const Tensor& out);

// cross_entropy.cu
void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                   const CrossEntropyOut& out);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss,
                            const Tensor& count, int64_t ignore_index, double smoothing, const Tensor& out);

// rope.cu
void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out);

// attention.cu (flash-attention style: online softmax, no T x T matrix)
// window > 0 (causal only): the last `window` keys up to each query's causal limit.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window,
               const AttentionOut& out);
void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, int64_t window, const AttentionGrads& grads);

// linalg.cu (cuSOLVER; host-synchronising, for GaLore's basis refresh)
void svd(const Tensor& a, const SvdOut& out);
void qr_q(const Tensor& a, const Tensor& q);

// misc.cu
void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out);
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant);

// optim.cu: 8-bit blockwise states and SGD-SaI
void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed);
void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed,
                           const Tensor& out);
void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                     const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, AdamVariant variant, int64_t block);
void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                  double momentum, double weight_decay, bool first);

}  // namespace lathe::kernels::cuda
