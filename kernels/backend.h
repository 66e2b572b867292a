// The per-device kernel table. kernels/ops.cpp (and its siblings) validate inputs,
// allocate outputs and call these; each device implements them (kernels/cpu,
// kernels/cuda). Every method has a default that throws "op 'x': no kernel for
// <device> / <dtype>", so a backend may implement a subset and the gap is a clear error.
//
// Outputs are passed in already allocated and contiguous; inputs may be strided.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // elementwise
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out) { missing("unary", x); }
  virtual void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) {
    missing("unary_backward", x);
  }
  virtual void pow_scalar(const Tensor& x, double p, const Tensor& out) { missing("pow_scalar", x); }
  virtual void affine(const Tensor& x, double scale, double shift, const Tensor& out) { missing("affine", x); }
  virtual void clamp(const Tensor& x, double lo, double hi, const Tensor& out) { missing("clamp", x); }
  // a and b are already expanded to out's shape (stride-0 dims where broadcast).
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) { missing("binary", a); }
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) { missing("where", a); }
  virtual void add_(const Tensor& y, const Tensor& x, double alpha) { missing("add_", y); }
  virtual void scale_(const Tensor& y, double s) { missing("scale_", y); }

  // reductions: axes are normalized, sorted and unique; out has keepdim shape.
  virtual void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction,
                      const Tensor& out) {
    missing("reduce", x);
  }

  // out [..., M, N] = op(a) @ op(b); batch dims of a and b already broadcast to out's.
  virtual void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out) {
    missing("matmul", a);
  }

  virtual void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) { missing("softmax", x); }
  virtual void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) {
    missing("softmax_backward", y);
  }

  virtual void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) {
    missing("layer_norm", x);
  }
  virtual void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                                   const Tensor& rstd, const NormGrads& out) {
    missing("layer_norm_backward", x);
  }
  virtual void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) { missing("rms_norm", x); }
  virtual void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                                 const NormGrads& out) {
    missing("rms_norm_backward", x);
  }

  virtual void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) { missing("embedding", w); }
  virtual void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) {
    missing("embedding_backward", gy);
  }
  virtual void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) { missing("gather", x); }
  // out already holds a copy of x
  virtual void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
    missing("scatter_add", src);
  }
  virtual void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) {
    missing("index_select", x);
  }
  // out already holds a copy of x
  virtual void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) {
    missing("index_add", src);
  }

  virtual void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                             const CrossEntropyOut& out) {
    missing("cross_entropy", logits);
  }
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                      double grad_loss, int64_t count, int64_t ignore_index, double smoothing,
                                      const Tensor& out) {
    missing("cross_entropy_backward", logits);
  }

  virtual void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) {
    missing("rope", x);
  }
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                         const AttentionOut& out) {
    missing("attention", q);
  }
  virtual void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, bool causal, double scale,
                                  const AttentionGrads& grads) {
    missing("attention_backward", q);
  }

  // element i kept when uniform(gen seed, offset + i) >= p
  virtual void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) {
    missing("dropout", x);
  }

  virtual void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr,
                          double beta1, double beta2, double eps, double weight_decay, int64_t step) {
    missing("adamw_step", param);
  }

 protected:
  [[noreturn]] void missing(const char* op, const Tensor& t) const;
};
#pragma GCC diagnostic pop

// The backend for a device type (the CPU one is always there; CUDA registers itself).
Backend& backend(Device d);
void register_backend(DeviceType d, Backend* b);

}  // namespace lathe::kernels
