// Op definitions for the softmax family, norms, embeddings, cross-entropy, rope and
// attention (declared in kernels/ops.h): input checks that name the op, the shapes and
// dtypes; output shapes and allocation; then the kernel of the inputs' device.
//
// Statistics saved for a backward (norm mean/rstd, log-sum-exps) are f64 for f64 inputs
// and f32 otherwise, so bf16/f16 models keep them at full f32 precision.
#include <cmath>
#include <sstream>
#include <vector>

#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

namespace {

DType stat_dtype(DType dt) { return dt == DType::f64 ? DType::f64 : DType::f32; }

std::string desc(const Tensor& t) {
  std::ostringstream os;
  os << t.shape_str() << " " << dtype_name(t.dtype()) << " on " << t.device().str();
  return os.str();
}

void check_defined(const char* op, const char* name, const Tensor& t) {
  LATHE_CHECK(t.defined()) << op << ": " << name << " is an undefined tensor";
}

void check_floating(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  LATHE_CHECK(is_floating(t.dtype())) << op << ": " << name << " must have a floating dtype, got " << desc(t);
}

void check_index(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  LATHE_CHECK(t.dtype() == DType::i64 || t.dtype() == DType::i32)
      << op << ": " << name << " must be i64 or i32, got " << desc(t);
}

void check_device(const char* op, const char* an, const Tensor& a, const char* bn, const Tensor& b) {
  LATHE_CHECK(a.device() == b.device()) << op << ": " << an << " is on " << a.device().str() << " but " << bn
                                        << " is on " << b.device().str();
}

void check_same(const char* op, const char* an, const Tensor& a, const char* bn, const Tensor& b) {
  LATHE_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype())
      << op << ": " << an << " " << desc(a) << " and " << bn << " " << desc(b) << " must match in shape and dtype";
  check_device(op, an, a, bn, b);
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& want) {
  LATHE_CHECK(t.shape() == want) << op << ": " << name << " must have shape " << shape_str(want) << ", got "
                                 << desc(t);
}

int64_t norm_axis(const char* op, const Tensor& x, int64_t axis) {
  const int64_t n = x.dim();
  LATHE_CHECK(n >= 1) << op << ": x must have at least one dim, got shape " << x.shape_str();
  LATHE_CHECK(axis >= -n && axis < n) << op << ": axis " << axis << " out of range for x of shape "
                                      << x.shape_str();
  return axis < 0 ? axis + n : axis;
}

Tensor softmax_impl(const char* op, const Tensor& x, int64_t axis, bool log) {
  check_floating(op, "x", x);
  const int64_t ax = norm_axis(op, x, axis);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) backend(x.device()).softmax(x.contiguous(), ax, log, out);
  return out;
}

Tensor softmax_backward_impl(const char* op, const Tensor& y, const Tensor& gy, int64_t axis, bool log) {
  check_floating(op, "y", y);
  check_defined(op, "gy", gy);
  check_same(op, "y", y, "gy", gy);
  const int64_t ax = norm_axis(op, y, axis);
  Tensor out = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (y.numel() > 0) backend(y.device()).softmax_backward(y.contiguous(), gy.contiguous(), ax, log, out);
  return out;
}

// Checks x (floating, last dim C > 0) and the optional [C] parameter p; returns C.
int64_t check_norm_x(const char* op, const Tensor& x) {
  check_floating(op, "x", x);
  LATHE_CHECK(x.dim() >= 1 && x.size(-1) > 0)
      << op << ": x must have at least one dim and a non-empty last dim, got " << desc(x);
  return x.size(-1);
}

void check_norm_param(const char* op, const char* name, const Tensor& p, const Tensor& x) {
  if (!p.defined()) return;
  check_floating(op, name, p);
  LATHE_CHECK(p.dim() == 1 && p.size(0) == x.size(-1))
      << op << ": " << name << " must have shape [" << x.size(-1) << "] (the last dim of x " << x.shape_str()
      << "), got " << p.shape_str();
  check_device(op, "x", x, name, p);
}

void check_norm_stat(const char* op, const char* name, const Tensor& s, const Tensor& x) {
  check_defined(op, name, s);
  const int64_t rows = x.numel() / x.size(-1);
  LATHE_CHECK(s.dim() == 1 && s.size(0) == rows && s.dtype() == stat_dtype(x.dtype()))
      << op << ": " << name << " must be [" << rows << "] " << dtype_name(stat_dtype(x.dtype()))
      << " for x of shape " << x.shape_str() << ", got " << desc(s);
  check_device(op, "x", x, name, s);
}

NormGrads alloc_norm_grads(const Tensor& x, const Tensor& weight, bool need_dweight, bool has_bias) {
  NormGrads g;
  const int64_t C = x.size(-1);
  g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (weight.defined() && need_dweight) g.dweight = Tensor::empty({C}, weight.dtype(), x.device());
  if (has_bias) g.dbias = Tensor::empty({C}, weight.defined() ? weight.dtype() : x.dtype(), x.device());
  return g;
}

void check_cross_entropy_inputs(const char* op, const Tensor& logits, const Tensor& targets,
                                double label_smoothing) {
  check_floating(op, "logits", logits);
  check_index(op, "targets", targets);
  LATHE_CHECK(logits.dim() == 2 && logits.size(1) > 0)
      << op << ": logits must be [N, V] with V > 0, got " << desc(logits);
  LATHE_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0))
      << op << ": targets must be [" << logits.size(0) << "] for logits " << logits.shape_str() << ", got "
      << desc(targets);
  check_device(op, "logits", logits, "targets", targets);
  LATHE_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0)
      << op << ": label_smoothing must be in [0, 1], got " << label_smoothing;
}

void check_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                            bool causal, int64_t window) {
  LATHE_CHECK(window >= 0) << op << ": window must be >= 0 (0 = none), got " << window;
  LATHE_CHECK(window == 0 || causal) << op << ": a sliding window (" << window << ") needs causal attention";
  check_floating(op, "q", q);
  check_defined(op, "k", k);
  check_defined(op, "v", v);
  LATHE_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4)
      << op << ": q [B, H, T, D], k and v [B, Hkv, S, D] must be 4-D, got q " << q.shape_str() << ", k "
      << k.shape_str() << ", v " << v.shape_str();
  LATHE_CHECK(k.shape() == v.shape()) << op << ": k " << k.shape_str() << " and v " << v.shape_str()
                                      << " must have the same shape";
  LATHE_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3))
      << op << ": q " << q.shape_str() << " and k " << k.shape_str() << " must share batch (dim 0) and head size (dim 3)";
  LATHE_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0)
      << op << ": the query heads (" << q.size(1) << ", q " << q.shape_str()
      << ") must be a multiple of the kv heads (" << k.size(1) << ", k " << k.shape_str() << ")";
  LATHE_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype())
      << op << ": q, k, v must share a dtype, got " << dtype_name(q.dtype()) << ", " << dtype_name(k.dtype())
      << ", " << dtype_name(v.dtype());
  check_device(op, "q", q, "k", k);
  check_device(op, "q", q, "v", v);
  LATHE_CHECK(std::isfinite(scale)) << op << ": scale must be finite, got " << scale;
}

}  // namespace

// ---- softmax family -----------------------------------------------------------------------

Tensor softmax(const Tensor& x, int64_t axis) { return softmax_impl("softmax", x, axis, false); }
Tensor log_softmax(const Tensor& x, int64_t axis) { return softmax_impl("log_softmax", x, axis, true); }

Tensor softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis) {
  return softmax_backward_impl("softmax_backward", y, gy, axis, false);
}
Tensor log_softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis) {
  return softmax_backward_impl("log_softmax_backward", y, gy, axis, true);
}

// ---- normalization ------------------------------------------------------------------------

NormOut layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layer_norm";
  const int64_t C = check_norm_x(op, x);
  check_norm_param(op, "weight", weight, x);
  check_norm_param(op, "bias", bias, x);
  LATHE_CHECK(eps >= 0.0 && std::isfinite(eps)) << op << ": eps must be finite and >= 0, got " << eps;
  const int64_t rows = x.numel() / C;
  NormOut out;
  out.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  out.mean = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  out.rstd = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  if (rows > 0) {
    backend(x.device()).layer_norm(x.contiguous(), weight.defined() ? weight.contiguous() : Tensor(),
                                   bias.defined() ? bias.contiguous() : Tensor(), eps, out);
  }
  return out;
}

NormGrads layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                              const Tensor& rstd, bool has_bias, bool need_dweight) {
  const char* op = "layer_norm_backward";
  check_norm_x(op, x);
  check_defined(op, "gy", gy);
  check_same(op, "gy", gy, "x", x);
  check_norm_param(op, "weight", weight, x);
  check_norm_stat(op, "mean", mean, x);
  check_norm_stat(op, "rstd", rstd, x);
  NormGrads g = alloc_norm_grads(x, weight, need_dweight, has_bias);
  if (x.numel() > 0) {
    backend(x.device()).layer_norm_backward(gy.contiguous(), x.contiguous(),
                                            weight.defined() ? weight.contiguous() : Tensor(), mean.contiguous(),
                                            rstd.contiguous(), g);
  } else {
    if (g.dweight.defined()) g.dweight.zero_();
    if (g.dbias.defined()) g.dbias.zero_();
  }
  return g;
}

NormOut rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const char* op = "rms_norm";
  const int64_t C = check_norm_x(op, x);
  check_norm_param(op, "weight", weight, x);
  LATHE_CHECK(eps >= 0.0 && std::isfinite(eps)) << op << ": eps must be finite and >= 0, got " << eps;
  const int64_t rows = x.numel() / C;
  NormOut out;
  out.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  out.rstd = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  if (rows > 0) {
    backend(x.device()).rms_norm(x.contiguous(), weight.defined() ? weight.contiguous() : Tensor(), eps, out);
  }
  return out;
}

NormGrads rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                            bool need_dweight) {
  const char* op = "rms_norm_backward";
  check_norm_x(op, x);
  check_defined(op, "gy", gy);
  check_same(op, "gy", gy, "x", x);
  check_norm_param(op, "weight", weight, x);
  check_norm_stat(op, "rstd", rstd, x);
  NormGrads g = alloc_norm_grads(x, weight, need_dweight, false);
  if (x.numel() > 0) {
    backend(x.device()).rms_norm_backward(gy.contiguous(), x.contiguous(),
                                          weight.defined() ? weight.contiguous() : Tensor(), rstd.contiguous(), g);
  } else if (g.dweight.defined()) {
    g.dweight.zero_();
  }
  return g;
}

// ---- embeddings ---------------------------------------------------------------------------

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding";
  check_defined(op, "weight", weight);
  check_index(op, "ids", ids);
  LATHE_CHECK(weight.dim() == 2) << op << ": weight must be [V, C], got " << desc(weight);
  check_device(op, "weight", weight, "ids", ids);
  Shape shape = ids.shape();
  shape.push_back(weight.size(1));
  Tensor out = Tensor::empty(shape, weight.dtype(), weight.device());
  if (ids.numel() > 0) backend(weight.device()).embedding(weight.contiguous(), ids.contiguous(), out);
  return out;
}

Tensor embedding_backward(const Tensor& gy, const Tensor& ids, int64_t num_rows) {
  const char* op = "embedding_backward";
  check_floating(op, "gy", gy);
  check_index(op, "ids", ids);
  check_device(op, "gy", gy, "ids", ids);
  LATHE_CHECK(num_rows >= 0) << op << ": num_rows must be >= 0, got " << num_rows;
  Shape want = ids.shape();
  LATHE_CHECK(gy.dim() == ids.dim() + 1) << op << ": gy must be [*ids.shape, C] with ids " << ids.shape_str()
                                         << ", got gy " << gy.shape_str();
  want.push_back(gy.size(-1));
  check_shape(op, "gy", gy, want);
  const int64_t C = gy.size(-1);
  Tensor out = Tensor::empty({num_rows, C}, gy.dtype(), gy.device());
  if (ids.numel() > 0 || num_rows > 0) backend(gy.device()).embedding_backward(gy.contiguous(), ids.contiguous(), out);
  return out;
}

// ---- cross-entropy ------------------------------------------------------------------------

CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                              double label_smoothing) {
  const char* op = "cross_entropy";
  check_cross_entropy_inputs(op, logits, targets, label_smoothing);
  CrossEntropyOut out;
  const DType sd = stat_dtype(logits.dtype());
  out.loss = Tensor::empty({}, sd, logits.device());
  out.lse = Tensor::empty({logits.size(0)}, sd, logits.device());
  out.count = Tensor::empty({}, DType::i64, logits.device());
  if (logits.size(0) == 0) {
    out.loss.zero_();
    out.count.zero_();
    return out;
  }
  backend(logits.device()).cross_entropy(logits.contiguous(), targets.contiguous(), ignore_index, label_smoothing,
                                         out);
  return out;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              const Tensor& grad_loss, const Tensor& count, int64_t ignore_index,
                              double label_smoothing) {
  const char* op = "cross_entropy_backward";
  check_cross_entropy_inputs(op, logits, targets, label_smoothing);
  check_defined(op, "lse", lse);
  LATHE_CHECK(lse.dim() == 1 && lse.size(0) == logits.size(0) && lse.dtype() == stat_dtype(logits.dtype()))
      << op << ": lse must be [" << logits.size(0) << "] " << dtype_name(stat_dtype(logits.dtype()))
      << " for logits " << desc(logits) << ", got " << desc(lse);
  check_device(op, "logits", logits, "lse", lse);
  check_defined(op, "grad_loss", grad_loss);
  check_defined(op, "count", count);
  LATHE_CHECK(grad_loss.numel() == 1 && is_floating(grad_loss.dtype()))
      << op << ": grad_loss must be a one-element floating tensor, got " << desc(grad_loss);
  LATHE_CHECK(count.numel() == 1 && count.dtype() == DType::i64)
      << op << ": count must be a one-element i64 tensor, got " << desc(count);
  check_device(op, "logits", logits, "grad_loss", grad_loss);
  check_device(op, "logits", logits, "count", count);
  Tensor out = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  if (logits.size(0) > 0) {
    backend(logits.device()).cross_entropy_backward(
        logits.contiguous(), targets.contiguous(), lse.contiguous(),
        grad_loss.reshape({}).to(stat_dtype(logits.dtype())).contiguous(), count.reshape({}), ignore_index,
        label_smoothing, out);
  }
  return out;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double grad_loss,
                              const Tensor& count, int64_t ignore_index, double label_smoothing) {
  return cross_entropy_backward(logits, targets, lse,
                                Tensor::scalar(grad_loss, stat_dtype(logits.dtype()), logits.device()), count,
                                ignore_index, label_smoothing);
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double grad_loss,
                              int64_t count, int64_t ignore_index, double label_smoothing) {
  LATHE_CHECK(count >= 0) << "cross_entropy_backward: count must be >= 0, got " << count;
  return cross_entropy_backward(logits, targets, lse, grad_loss,
                                Tensor::scalar(static_cast<double>(count), DType::i64, logits.device()),
                                ignore_index, label_smoothing);
}

// ---- rope ---------------------------------------------------------------------------------

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse) {
  const char* op = "rope";
  check_floating(op, "x", x);
  check_floating(op, "cos", cos);
  check_floating(op, "sin", sin);
  LATHE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0)
      << op << ": x must be [B, H, T, D] with an even D, got " << desc(x);
  const Shape table = {x.size(2), x.size(3) / 2};
  check_shape(op, "cos", cos, table);
  check_shape(op, "sin", sin, table);
  check_device(op, "x", x, "cos", cos);
  check_device(op, "x", x, "sin", sin);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) backend(x.device()).rope(x.contiguous(), cos.contiguous(), sin.contiguous(), inverse, out);
  return out;
}

void rope_tables(int64_t T, int64_t D, double base, int64_t start, DType dt, Tensor& cos, Tensor& sin) {
  const char* op = "rope_tables";
  LATHE_CHECK(D > 0 && D % 2 == 0) << op << ": D must be positive and even, got " << D;
  LATHE_CHECK(base > 0.0 && std::isfinite(base)) << op << ": base must be finite and > 0, got " << base;
  const int64_t half = D / 2;
  std::vector<double> theta(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) theta[i] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
  rope_tables(T, theta, start, dt, cos, sin);
}

void rope_tables(int64_t T, const std::vector<double>& inv_freq, int64_t start, DType dt, Tensor& cos, Tensor& sin) {
  const char* op = "rope_tables";
  LATHE_CHECK(T >= 0) << op << ": T must be >= 0, got " << T;
  LATHE_CHECK(!inv_freq.empty()) << op << ": inv_freq must hold D/2 >= 1 frequencies, got none";
  for (size_t i = 0; i < inv_freq.size(); ++i)
    LATHE_CHECK(std::isfinite(inv_freq[i])) << op << ": inv_freq[" << i << "] is " << inv_freq[i] << ", not finite";
  LATHE_CHECK(is_floating(dt)) << op << ": dtype must be floating, got " << dtype_name(dt);
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  Tensor c = Tensor::empty({T, half}, DType::f64);
  Tensor s = Tensor::empty({T, half}, DType::f64);
  double* cp = c.data<double>();
  double* sp = s.data<double>();
  // Angles in double: for long contexts pos * theta is large and f32 would lose the phase.
  for (int64_t t = 0; t < T; ++t) {
    const double pos = static_cast<double>(start + t);
    for (int64_t i = 0; i < half; ++i) {
      cp[t * half + i] = std::cos(pos * inv_freq[i]);
      sp[t * half + i] = std::sin(pos * inv_freq[i]);
    }
  }
  cos = c.to(dt);
  sin = s.to(dt);
}

// ---- attention ----------------------------------------------------------------------------

namespace {
// The CPU kernels address every [B, H, T, D] operand and result through its strides (unit
// head dim): the heads of a [B, T, H * D] projection, a transposed view, are read in place,
// and results are laid out as the input they belong to, so an output in [B, T, H, D] order
// merges its heads back with a view (bench/README.md section 18). The CUDA kernels take
// and give contiguous tensors.
bool strided_attention(const Tensor& t) { return t.device().is_cpu(); }
Tensor attention_operand(const Tensor& t) {
  return strided_attention(t) && (t.stride(3) == 1 || t.size(3) <= 1) ? t : t.contiguous();
}
// Empty, of t's shape, in [B, T, H, D] memory order when t is in that order (CPU only).
Tensor empty_heads_like(const Tensor& t) {
  if (strided_attention(t) && t.size(1) > 1 && t.size(2) > 1 && t.stride(1) < t.stride(2))
    return Tensor::empty({t.size(0), t.size(2), t.size(1), t.size(3)}, t.dtype(), t.device()).transpose(1, 2);
  return Tensor::empty(t.shape(), t.dtype(), t.device());
}
}  // namespace

AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                       int64_t window) {
  const char* op = "attention";
  check_attention_inputs(op, q, k, v, scale, causal, window);
  AttentionOut out;
  out.out = empty_heads_like(q);
  out.lse = Tensor::empty({q.size(0), q.size(1), q.size(2)}, stat_dtype(q.dtype()), q.device());
  if (out.lse.numel() > 0) {
    backend(q.device()).attention(attention_operand(q), attention_operand(k), attention_operand(v), causal, scale,
                                  window, out);
  }
  return out;
}

AttentionGrads attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, bool causal, double scale,
                                  int64_t window) {
  const char* op = "attention_backward";
  check_attention_inputs(op, q, k, v, scale, causal, window);
  check_defined(op, "gout", gout);
  check_defined(op, "out", out);
  check_same(op, "gout", gout, "q", q);
  check_same(op, "out", out, "q", q);
  check_defined(op, "lse", lse);
  const Shape lse_shape = {q.size(0), q.size(1), q.size(2)};
  LATHE_CHECK(lse.shape() == lse_shape && lse.dtype() == stat_dtype(q.dtype()))
      << op << ": lse must be " << shape_str(lse_shape) << " " << dtype_name(stat_dtype(q.dtype()))
      << " for q " << q.shape_str() << ", got " << desc(lse);
  check_device(op, "q", q, "lse", lse);
  AttentionGrads g;
  g.dq = empty_heads_like(q);
  g.dk = empty_heads_like(k);
  g.dv = empty_heads_like(v);
  if (q.numel() > 0 && k.numel() > 0) {
    backend(q.device()).attention_backward(attention_operand(gout), attention_operand(q), attention_operand(k),
                                           attention_operand(v), attention_operand(out), lse.contiguous(), causal,
                                           scale, window, g);
  } else {
    g.dq.zero_();
    g.dk.zero_();
    g.dv.zero_();
  }
  return g;
}

}  // namespace lathe::kernels
