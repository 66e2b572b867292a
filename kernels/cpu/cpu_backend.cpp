// The CPU backend: forwards each Backend method to the OpenMP/BLAS kernels in
// kernels/cpu/*.cpp. Elementwise, reductions, matmul and indexing are declared in
// cpu/elementwise.h; softmax, norms, losses and attention in cpu/nn.h.
#include "kernels/backend.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"
#include "kernels/cpu/linalg.h"
#include "kernels/cpu/nn.h"
#include "kernels/cpu/optim.h"

namespace lathe::kernels {

namespace {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }

  // ---- copies and fills: core's own CPU implementation (core/tensor.cpp) ----
  void copy(const Tensor& dst, const Tensor& src) override { copy_strided_cpu(dst, src); }
  void fill(const Tensor& dst, double value) override { device_ops(DeviceType::cpu).fill(dst, value); }
  void copy_from_host(const Tensor& dst, const Tensor& src) override { copy_strided_cpu(dst, src); }
  void copy_to_host(const Tensor& dst, const Tensor& src) override { copy_strided_cpu(dst, src); }
  void synchronize(int) override {}

  // ---- elementwise, reductions, matmul, indexing, dropout, adamw (cpu/elementwise.h) ----
  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override { cpu::unary(op, x, out); }
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) override {
    cpu::unary_backward(op, x, y, gy, out);
  }
  void pow_scalar(const Tensor& x, double p, const Tensor& out) override { cpu::pow_scalar(x, p, out); }
  void affine(const Tensor& x, double scale, double shift, const Tensor& out) override {
    cpu::affine(x, scale, shift, out);
  }
  void clamp(const Tensor& x, double lo, double hi, const Tensor& out) override { cpu::clamp(x, lo, hi, out); }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override {
    cpu::binary(op, a, b, out);
  }
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override {
    cpu::where(cond, a, b, out);
  }
  void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) override { cpu::swiglu(gate, up, out); }
  void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate,
                       const Tensor& dup) override {
    cpu::swiglu_backward(gy, gate, up, dgate, dup);
  }
  void add_(const Tensor& y, const Tensor& x, double alpha) override { cpu::add_(y, x, alpha); }
  void scale_(const Tensor& y, double s) override { cpu::scale_(y, s); }
  void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction,
              const Tensor& out) override {
    cpu::reduce(op, x, axes, correction, out);
  }
  void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out) override {
    cpu::matmul(a, b, trans_a, trans_b, out);
  }
  void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha,
                  const Tensor& out) override {
    cpu::matmul_acc(a, b, trans_a, trans_b, alpha, out);
  }
  void svd(const Tensor& a, const SvdOut& out) override { cpu::svd(a, out); }
  void qr_q(const Tensor& a, const Tensor& q) override { cpu::qr_q(a, q); }
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
              const Tensor& pre) override {
    cpu::linear(x, w, bias, act, out, pre);
  }
  void linear_act_backward(Activation act, const Tensor& pre, const Tensor& dy, const Tensor& g,
                           const Tensor& db) override {
    cpu::linear_act_backward(act, pre, dy, g, db);
  }
  void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) override {
    cpu::gather(x, axis, index, out);
  }
  void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) override {
    cpu::scatter_add(axis, index, src, out);
  }
  void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) override {
    cpu::index_select(x, axis, index, out);
  }
  void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) override {
    cpu::index_add(axis, index, src, out);
  }
  void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols,
                         const Tensor& out) override {
    cpu::sparse_delta_grad(x, dy, rows, cols, out);
  }
  void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) override {
    cpu::dropout(x, p, seed, offset, out);
  }
  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) override {
    cpu::adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, variant);
  }
  void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) override {
    cpu::adamw_step_multi(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, step, variant);
  }
  void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block,
                           bool is_signed) override {
    cpu::quantize_blockwise8(x, codes, absmax, block, is_signed);
  }
  void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed,
                             const Tensor& out) override {
    cpu::dequantize_blockwise8(codes, absmax, block, is_signed, out);
  }
  void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                       const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                       double weight_decay, int64_t step, AdamVariant variant, int64_t block) override {
    cpu::adamw_step_8bit(param, grad, m_codes, m_absmax, v_codes, v_absmax, lr, beta1, beta2, eps, weight_decay, step,
                         variant, block);
  }
  void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                    double momentum, double weight_decay, bool first) override {
    cpu::sgd_sai_step(param, grad, buf, scale, lr, momentum, weight_decay, first);
  }

  // ---- softmax, norms, embeddings, cross-entropy, rope, attention (cpu/nn.h) ----
  void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) override {
    cpu::softmax(x, axis, log, out);
  }
  void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) override {
    cpu::softmax_backward(y, gy, axis, log, out);
  }
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) override {
    cpu::layer_norm(x, w, b, eps, out);
  }
  void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& rstd, const NormGrads& out) override {
    cpu::layer_norm_backward(gy, x, w, mean, rstd, out);
  }
  void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) override {
    cpu::rms_norm(x, w, eps, out);
  }
  void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                         const NormGrads& out) override {
    cpu::rms_norm_backward(gy, x, w, rstd, out);
  }
  void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) override { cpu::embedding(w, ids, out); }
  void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) override {
    cpu::embedding_backward(gy, ids, out);
  }
  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                     const CrossEntropyOut& out) override {
    cpu::cross_entropy(logits, targets, ignore_index, smoothing, out);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss,
                              const Tensor& count, int64_t ignore_index, double smoothing, const Tensor& out) override {
    cpu::cross_entropy_backward(logits, targets, lse, grad_loss, count, ignore_index, smoothing, out);
  }
  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) override {
    cpu::rope(x, cos, sin, inverse, out);
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window,
                 const AttentionOut& out) override {
    cpu::attention(q, k, v, causal, scale, window, out);
  }
  void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse, bool causal, double scale, int64_t window,
                          const AttentionGrads& grads) override {
    cpu::attention_backward(gout, q, k, v, out, lse, causal, scale, window, grads);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace lathe::kernels
