// The per-device kernel table. kernels/ops.cpp (and its siblings) validate inputs,
// allocate outputs and call these; each device implements them (kernels/cpu,
// kernels/cuda). Every method is pure virtual, and the backends are `final`: a backend
// that lacks a kernel does not compile (tests/kernels/incomplete_backend.cpp proves it).
// Copies, fills and host<->device transfers are part of the same table (core's
// DeviceOps, which Backend extends), so Tensor::copy_/to/fill_ dispatch through it too.
// A kernel may still reject a dtype it does not support with unsupported(), which names
// the op, device and dtype.
//
// Outputs are passed in already allocated and contiguous; inputs may be strided.
#pragma once

#include <string>
#include <vector>

#include "core/device_ops.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels {

class Backend : public DeviceOps {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // elementwise
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out) = 0;
  virtual void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) = 0;
  virtual void pow_scalar(const Tensor& x, double p, const Tensor& out) = 0;
  virtual void affine(const Tensor& x, double scale, double shift, const Tensor& out) = 0;
  virtual void clamp(const Tensor& x, double lo, double hi, const Tensor& out) = 0;
  // a and b are already expanded to out's shape (stride-0 dims where broadcast).
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out = silu(gate) * up; dgate, dup = swiglu's gradients (all of gy's shape, outputs contiguous).
  virtual void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  virtual void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate,
                               const Tensor& dup) = 0;
  virtual void add_(const Tensor& y, const Tensor& x, double alpha) = 0;
  virtual void scale_(const Tensor& y, double s) = 0;

  // reductions: axes are normalized, sorted and unique; out has keepdim shape.
  virtual void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction,
                      const Tensor& out) = 0;

  // out [..., M, N] = op(a) @ op(b); batch dims of a and b already broadcast to out's.
  virtual void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out) = 0;
  // out [..., M, N] += alpha * op(a) @ op(b) (out contiguous, shapes as matmul's).
  virtual void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha,
                          const Tensor& out) = 0;
  // out [..., N] = act(x [..., K] @ w^T + bias); x has >= 2 dims, w is [N, K], bias [N] or
  // undefined, all one dtype and device, any of them strided. pre (out's shape) is defined
  // when the caller wants the pre-activation (only with an activation); then it is written too.
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
                      const Tensor& pre) = 0;
  // The activation's part of linear's backward: g = dy * act'(pre) (act != none; pre and dy
  // of g's shape) and, when db is defined ([N]), the bias gradient: g summed over every dim
  // but the last, as sum_to_shape would (the CPU does both in one pass).
  virtual void linear_act_backward(Activation act, const Tensor& pre, const Tensor& dy, const Tensor& g,
                                   const Tensor& db) = 0;

  virtual void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) = 0;
  virtual void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) = 0;

  virtual void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) = 0;
  virtual void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                                   const Tensor& rstd, const NormGrads& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) = 0;
  virtual void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                                 const NormGrads& out) = 0;

  virtual void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) = 0;
  virtual void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) = 0;
  virtual void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) = 0;
  // out already holds a copy of x
  virtual void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) = 0;
  virtual void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) = 0;
  // out already holds a copy of x
  virtual void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) = 0;
  // x [T, in], dy [T, out] contiguous, one float dtype; rows, cols contiguous i64 [k]; out [k]
  virtual void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols,
                                 const Tensor& out) = 0;

  virtual void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                             const CrossEntropyOut& out) = 0;
  // grad_loss: 0-d stat dtype; count: 0-d i64 (both on the device)
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                      const Tensor& grad_loss, const Tensor& count, int64_t ignore_index,
                                      double smoothing, const Tensor& out) = 0;

  virtual void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) = 0;
  // window: 0 = every causal key; > 0 = the last `window` keys up to the causal limit
  // (sliding-window attention; only with causal, checked by the op layer). On the CPU the
  // [B, H, T, D] operands and results (out.out, grads) may be strided with a unit last dim
  // (kernels/ops_nn.cpp); other backends get them contiguous.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                         int64_t window, const AttentionOut& out) = 0;
  virtual void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, bool causal, double scale, int64_t window,
                                  const AttentionGrads& grads) = 0;

  // dense linear algebra (checked by the op layer: a contiguous 2-D f32/f64, outputs
  // contiguous of a's dtype; qr_q has m >= k)
  virtual void svd(const Tensor& a, const SvdOut& out) = 0;
  virtual void qr_q(const Tensor& a, const Tensor& q) = 0;

  // element i kept when uniform(gen seed, offset + i) >= p
  virtual void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) = 0;

  virtual void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr,
                          double beta1, double beta2, double eps, double weight_decay, int64_t step,
                          AdamVariant variant) = 0;
  // adamw_step over lists (checked by the op layer: one device, matching shapes, params/m/v
  // contiguous f32, grads contiguous f32 or bf16); empty tensors are skipped.
  virtual void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                                const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) = 0;
  // 8-bit blockwise states (checked by the op layer: contiguous, sizes match, block valid, numel > 0)
  virtual void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block,
                                   bool is_signed) = 0;
  virtual void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed,
                                     const Tensor& out) = 0;
  virtual void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                               const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2,
                               double eps, double weight_decay, int64_t step, AdamVariant variant, int64_t block) = 0;
  // buf undefined without momentum; scale 0-d f32 on the device; grad contiguous f32
  virtual void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale,
                            double lr, double momentum, double weight_decay, bool first) = 0;

 protected:
  [[noreturn]] void unsupported(const char* op, const Tensor& t) const;
};

// The backend for a device type (the CPU one is always there; CUDA registers itself).
Backend& backend(Device d);
void register_backend(DeviceType d, Backend* b);

}  // namespace lathe::kernels
