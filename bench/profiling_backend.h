// A Backend that forwards every call to another one and times it: the device is
// synchronised before and after each call, so the figures are per-op wall times (the
// profiled run is slower than a real one; use it for where the time goes, not for totals).
// Used by bench_cuda's op breakdown; install with kernels::register_backend.
#pragma once

#include <chrono>
#include <map>
#include <string>

#include "kernels/backend.h"
#include "kernels/device.h"

namespace lathe::bench {

using namespace lathe::kernels;

class ProfilingBackend final : public Backend {
 public:
  ProfilingBackend(Backend& inner, Device dev) : inner_(inner), dev_(dev) {}
  const char* name() const override { return inner_.name(); }
  void synchronize(int device_index) override { inner_.synchronize(device_index); }

  struct Stat {
    double seconds = 0;
    int64_t calls = 0;
  };
  const std::map<std::string, Stat>& stats() const { return stats_; }
  void reset() { stats_.clear(); }

  void copy(const Tensor& dst, const Tensor& src) override {
    Timer t(*this, "copy");
    inner_.copy(dst, src);
  }
  void fill(const Tensor& dst, double value) override {
    Timer t(*this, "fill");
    inner_.fill(dst, value);
  }
  void copy_from_host(const Tensor& dst, const Tensor& host_src) override {
    Timer t(*this, "copy_from_host");
    inner_.copy_from_host(dst, host_src);
  }
  void copy_to_host(const Tensor& host_dst, const Tensor& src) override {
    Timer t(*this, "copy_to_host");
    inner_.copy_to_host(host_dst, src);
  }
  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override {
    Timer t(*this, std::string("unary:") + unary_name(op));
    inner_.unary(op, x, out);
  }
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out) override {
    Timer t(*this, std::string("unary_backward:") + unary_name(op));
    inner_.unary_backward(op, x, y, gy, out);
  }
  void pow_scalar(const Tensor& x, double p, const Tensor& out) override {
    Timer t(*this, "pow_scalar");
    inner_.pow_scalar(x, p, out);
  }
  void affine(const Tensor& x, double scale, double shift, const Tensor& out) override {
    Timer t(*this, "affine");
    inner_.affine(x, scale, shift, out);
  }
  void clamp(const Tensor& x, double lo, double hi, const Tensor& out) override {
    Timer t(*this, "clamp");
    inner_.clamp(x, lo, hi, out);
  }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override {
    Timer t(*this, std::string("binary:") + binary_name(op));
    inner_.binary(op, a, b, out);
  }
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override {
    Timer t(*this, "where");
    inner_.where(cond, a, b, out);
  }
  void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    Timer t(*this, "swiglu");
    inner_.swiglu(gate, up, out);
  }
  void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate,
                       const Tensor& dup) override {
    Timer t(*this, "swiglu_backward");
    inner_.swiglu_backward(gy, gate, up, dgate, dup);
  }
  void add_(const Tensor& y, const Tensor& x, double alpha) override {
    Timer t(*this, "add_");
    inner_.add_(y, x, alpha);
  }
  void scale_(const Tensor& y, double s) override {
    Timer t(*this, "scale_");
    inner_.scale_(y, s);
  }
  void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out) override {
    Timer t(*this, "reduce");
    inner_.reduce(op, x, axes, correction, out);
  }
  void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out) override {
    Timer t(*this, "matmul");
    inner_.matmul(a, b, trans_a, trans_b, out);
  }
  void matmul_acc(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, double alpha,
                  const Tensor& out) override {
    Timer t(*this, "matmul_acc");
    inner_.matmul_acc(a, b, trans_a, trans_b, alpha, out);
  }
  void svd(const Tensor& a, const SvdOut& out) override {
    Timer t(*this, "svd");
    inner_.svd(a, out);
  }
  void qr_q(const Tensor& a, const Tensor& q) override {
    Timer t(*this, "qr_q");
    inner_.qr_q(a, q);
  }
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
              const Tensor& pre) override {
    Timer t(*this, std::string("linear:") + activation_name(act));
    inner_.linear(x, w, bias, act, out, pre);
  }
  void linear_act_backward(Activation act, const Tensor& pre, const Tensor& dy, const Tensor& g,
                           const Tensor& db) override {
    Timer t(*this, std::string("linear_act_backward:") + activation_name(act));
    inner_.linear_act_backward(act, pre, dy, g, db);
  }
  void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out) override {
    Timer t(*this, "softmax");
    inner_.softmax(x, axis, log, out);
  }
  void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out) override {
    Timer t(*this, "softmax_backward");
    inner_.softmax_backward(y, gy, axis, log, out);
  }
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out) override {
    Timer t(*this, "layer_norm");
    inner_.layer_norm(x, w, b, eps, out);
  }
  void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const NormGrads& out) override {
    // Counted apart: the calls that also sum the weight/bias gradients (a frozen norm does not).
    if (out.dweight.defined() || out.dbias.defined()) ++stats_["layer_norm_backward (param grads)"].calls;
    Timer t(*this, "layer_norm_backward");
    inner_.layer_norm_backward(gy, x, w, mean, rstd, out);
  }
  void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out) override {
    Timer t(*this, "rms_norm");
    inner_.rms_norm(x, w, eps, out);
  }
  void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd, const NormGrads& out) override {
    // Counted apart: the calls that also sum the weight/bias gradients (a frozen norm does not).
    if (out.dweight.defined() || out.dbias.defined()) ++stats_["rms_norm_backward (param grads)"].calls;
    Timer t(*this, "rms_norm_backward");
    inner_.rms_norm_backward(gy, x, w, rstd, out);
  }
  void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) override {
    Timer t(*this, "embedding");
    inner_.embedding(w, ids, out);
  }
  void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) override {
    Timer t(*this, "embedding_backward");
    inner_.embedding_backward(gy, ids, out);
  }
  void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) override {
    Timer t(*this, "gather");
    inner_.gather(x, axis, index, out);
  }
  void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) override {
    Timer t(*this, "scatter_add");
    inner_.scatter_add(axis, index, src, out);
  }
  void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out) override {
    Timer t(*this, "index_select");
    inner_.index_select(x, axis, index, out);
  }
  void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out) override {
    Timer t(*this, "index_add");
    inner_.index_add(axis, index, src, out);
  }
  void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols,
                         const Tensor& out) override {
    Timer t(*this, "sparse_delta_grad");
    inner_.sparse_delta_grad(x, dy, rows, cols, out);
  }
  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing, const CrossEntropyOut& out) override {
    Timer t(*this, "cross_entropy");
    inner_.cross_entropy(logits, targets, ignore_index, smoothing, out);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss, const Tensor& count, int64_t ignore_index, double smoothing, const Tensor& out) override {
    Timer t(*this, "cross_entropy_backward");
    inner_.cross_entropy_backward(logits, targets, lse, grad_loss, count, ignore_index, smoothing, out);
  }
  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) override {
    Timer t(*this, "rope");
    inner_.rope(x, cos, sin, inverse, out);
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window, const AttentionOut& out) override {
    Timer t(*this, "attention");
    inner_.attention(q, k, v, causal, scale, window, out);
  }
  void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, bool causal, double scale, int64_t window, const AttentionGrads& grads) override {
    Timer t(*this, "attention_backward");
    inner_.attention_backward(gout, q, k, v, out, lse, causal, scale, window, grads);
  }
  void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) override {
    Timer t(*this, "dropout");
    inner_.dropout(x, p, seed, offset, out);
  }
  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) override {
    Timer t(*this, "adamw_step");
    inner_.adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, variant);
  }
  void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) override {
    Timer t(*this, "adamw_step_multi");
    inner_.adamw_step_multi(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, step, variant);
  }
  void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed) override {
    Timer t(*this, "quantize_blockwise8");
    inner_.quantize_blockwise8(x, codes, absmax, block, is_signed);
  }
  void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed, const Tensor& out) override {
    Timer t(*this, "dequantize_blockwise8");
    inner_.dequantize_blockwise8(codes, absmax, block, is_signed, out);
  }
  void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant, int64_t block) override {
    Timer t(*this, "adamw_step_8bit");
    inner_.adamw_step_8bit(param, grad, m_codes, m_absmax, v_codes, v_absmax, lr, beta1, beta2, eps, weight_decay, step, variant, block);
  }
  void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr, double momentum, double weight_decay, bool first) override {
    Timer t(*this, "sgd_sai_step");
    inner_.sgd_sai_step(param, grad, buf, scale, lr, momentum, weight_decay, first);
  }

 private:
  struct Timer {
    Timer(ProfilingBackend& b, std::string op) : b_(b), op_(std::move(op)) {
      kernels::synchronize(b_.dev_);
      t0_ = std::chrono::steady_clock::now();
    }
    ~Timer() {
      kernels::synchronize(b_.dev_);
      Stat& s = b_.stats_[op_];
      s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
      s.calls += 1;
    }
    ProfilingBackend& b_;
    std::string op_;
    std::chrono::steady_clock::time_point t0_;
  };
  Backend& inner_;
  Device dev_;
  std::map<std::string, Stat> stats_;
};

}  // namespace lathe::bench
