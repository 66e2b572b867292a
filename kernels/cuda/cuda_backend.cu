// The CUDA backend: every Backend method forwards to a kernel in kernels/cuda/*.cu
// (declared in cuda_ops.h). `final` plus Backend's pure virtuals make a missing kernel a
// compile error.
#include "kernels/backend.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/multi_tensor.h"

namespace lathe::kernels {

namespace {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  // core's DeviceOps: copies, fills, transfers
  void copy(const Tensor& dst, const Tensor& src) override { cuda::copy(dst, src); }
  void fill(const Tensor& dst, double value) override { cuda::fill(dst, value); }
  void copy_from_host(const Tensor& dst, const Tensor& src) override { cuda::copy_from_host(dst, src); }
  void copy_to_host(const Tensor& dst, const Tensor& src) override { cuda::copy_to_host(dst, src); }
  void synchronize(int device_index) override { cuda::synchronize(device_index); }

  // ops
  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override { cuda::unary(op, x, out); }
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) override { cuda::unary_backward(op, x, y, gy, out); }
  void pow_scalar(const Tensor& x, double p, const Tensor& out) override { cuda::pow_scalar(x, p, out); }
  void affine(const Tensor& x, double scale, double shift, const Tensor& out) override { cuda::affine(x, scale, shift, out); }
  void clamp(const Tensor& x, double lo, double hi, const Tensor& out) override { cuda::clamp(x, lo, hi, out); }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override { cuda::binary(op, a, b, out); }
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override { cuda::where(cond, a, b, out); }
  void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) override { cuda::swiglu(gate, up, out); }
  void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate, const Tensor& dup) override { cuda::swiglu_backward(gy, gate, up, dgate, dup); }
  void add_(const Tensor& y, const Tensor& x, double alpha) override { cuda::add_(y, x, alpha); }
  void scale_(const Tensor& y, double s) override { cuda::scale_(y, s); }
  void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out) override { cuda::reduce(op, x, axes, correction, out); }
  void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out) override { cuda::matmul(a, b, trans_a, trans_b, out); }
  void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha, const Tensor& out) override { cuda::matmul_acc(a, b, trans_a, trans_b, alpha, out); }
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out, const Tensor& pre) override { cuda::linear(x, w, bias, act, out, pre); }
  // The two ops (unary backward, then the column sum): what linear_backward did before.
  void linear_act_backward(Activation act, const Tensor& pre, const Tensor& dy, const Tensor& g, const Tensor& db) override {
    LATHE_CHECK(act == Activation::gelu_tanh) << "linear_act_backward: no rule for " << activation_name(act);
    cuda::unary_backward(UnaryOp::gelu_tanh, pre, Tensor(), dy, g);
    if (!db.defined()) return;
    std::vector<int64_t> axes;
    Shape keep(static_cast<size_t>(g.dim()), 1);
    keep.back() = g.size(-1);
    for (int64_t i = 0; i + 1 < g.dim(); ++i) axes.push_back(i);
    cuda::reduce(ReduceOp::sum, g, axes, 0, db.view(keep));
  }
  void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) override { cuda::softmax(x, axis, log, out); }
  void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) override { cuda::softmax_backward(y, gy, axis, log, out); }
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) override { cuda::layer_norm(x, w, b, eps, out); }
  void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const NormGrads& out) override { cuda::layer_norm_backward(gy, x, w, mean, rstd, out); }
  void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) override { cuda::rms_norm(x, w, eps, out); }
  void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd, const NormGrads& out) override { cuda::rms_norm_backward(gy, x, w, rstd, out); }
  void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) override { cuda::embedding(w, ids, out); }
  void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) override { cuda::embedding_backward(gy, ids, out); }
  void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) override { cuda::gather(x, axis, index, out); }
  void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) override { cuda::scatter_add(axis, index, src, out); }
  void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) override { cuda::index_select(x, axis, index, out); }
  void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) override { cuda::index_add(axis, index, src, out); }
  void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols, const Tensor& out) override { cuda::sparse_delta_grad(x, dy, rows, cols, out); }
  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing, const CrossEntropyOut& out) override { cuda::cross_entropy(logits, targets, ignore_index, smoothing, out); }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss, const Tensor& count, int64_t ignore_index, double smoothing, const Tensor& out) override { cuda::cross_entropy_backward(logits, targets, lse, grad_loss, count, ignore_index, smoothing, out); }
  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) override { cuda::rope(x, cos, sin, inverse, out); }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window, const AttentionOut& out) override { cuda::attention(q, k, v, causal, scale, window, out); }
  void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, bool causal, double scale, int64_t window, const AttentionGrads& grads) override { cuda::attention_backward(gout, q, k, v, out, lse, causal, scale, window, grads); }
  void svd(const Tensor& a, const SvdOut& out) override { cuda::svd(a, out); }
  void qr_q(const Tensor& a, const Tensor& q) override { cuda::qr_q(a, q); }
  void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) override { cuda::dropout(x, p, seed, offset, out); }
  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) override { cuda::adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, variant); }
  void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) override {
    if (cuda::multi_tensor_adamw_enabled()) {
      cuda::adamw_multi_tensor(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, step, variant);
      return;
    }
    for (size_t i = 0; i < params.size(); ++i)
      cuda::adamw_step(params[i], grads[i].dtype() == DType::f32 ? grads[i] : grads[i].to(DType::f32), ms[i], vs[i],
                       lr, beta1, beta2, eps, weight_decay, step, variant);
  }
  void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed) override { cuda::quantize_blockwise8(x, codes, absmax, block, is_signed); }
  void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed, const Tensor& out) override { cuda::dequantize_blockwise8(codes, absmax, block, is_signed, out); }
  void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant, int64_t block) override {
    cuda::adamw_step_8bit(param, grad, m_codes, m_absmax, v_codes, v_absmax, lr, beta1, beta2, eps, weight_decay, step, variant, block);
  }
  void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr, double momentum, double weight_decay, bool first) override { cuda::sgd_sai_step(param, grad, buf, scale, lr, momentum, weight_decay, first); }
};

}  // namespace

Backend& cuda_backend() {
  static CudaBackend b;
  return b;
}

}  // namespace lathe::kernels
