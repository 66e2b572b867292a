// Neural-network ops whose backward is a fused kernel (softmax, norms, embedding,
// cross-entropy, RoPE, attention) and dropout.
#include "autograd/function.h"
#include "autograd/ops.h"
#include "autograd/ops_util.h"

namespace lathe::autograd {

using namespace detail;

Tensor softmax(const Tensor& x, int64_t axis) {
  Tensor y = kernels::softmax(x, axis);
  Tensor ys = saved(y);
  return record("softmax", y, {x}, [ys, axis](const Grads& g, const Needs&) -> Grads {
    return {kernels::softmax_backward(ys, g[0], axis)};
  });
}

Tensor log_softmax(const Tensor& x, int64_t axis) {
  Tensor y = kernels::log_softmax(x, axis);
  Tensor ys = saved(y);
  return record("log_softmax", y, {x}, [ys, axis](const Grads& g, const Needs&) -> Grads {
    return {kernels::log_softmax_backward(ys, g[0], axis)};
  });
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  kernels::NormOut o = kernels::layer_norm(x, weight, bias, eps);
  Tensor xs = saved(x), ws = saved(weight), mean = o.mean, rstd = o.rstd;
  bool has_bias = bias.defined();
  return record("layer_norm", o.y, {x, weight, bias},
                [xs, ws, mean, rstd, has_bias](const Grads& g, const Needs& need) -> Grads {
                  // A frozen weight or bias gets no column sum (dx is always computed).
                  kernels::NormGrads r =
                      kernels::layer_norm_backward(g[0], xs, ws, mean, rstd, has_bias && need[2], need[1]);
                  return {r.dx, r.dweight, r.dbias};
                });
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  kernels::NormOut o = kernels::rms_norm(x, weight, eps);
  Tensor xs = saved(x), ws = saved(weight), rstd = o.rstd;
  return record("rms_norm", o.y, {x, weight}, [xs, ws, rstd](const Grads& g, const Needs& need) -> Grads {
    kernels::NormGrads r = kernels::rms_norm_backward(g[0], xs, ws, rstd, need[1]);
    return {r.dx, r.dweight};
  });
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  Tensor y = kernels::embedding(weight, ids);
  Tensor is = saved(ids);
  int64_t rows = weight.size(0);
  return record("embedding", y, {weight, ids}, [is, rows](const Grads& g, const Needs&) -> Grads {
    return {kernels::embedding_backward(g[0], is, rows), Tensor()};
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double label_smoothing) {
  kernels::CrossEntropyOut o = kernels::cross_entropy(logits, targets, ignore_index, label_smoothing);
  Tensor ls = saved(logits), ts = saved(targets), lse = o.lse, count = o.count;
  // The loss stays f32 for bf16/f16 logits (it is logged and compared across steps).
  return record("cross_entropy", o.loss, {logits, targets},
                [ls, ts, lse, count, ignore_index, label_smoothing](const Grads& g, const Needs&) -> Grads {
                  // The loss is a scalar: its upstream gradient is a 0-d tensor that stays on
                  // the device (no host sync on the training step).
                  return {kernels::cross_entropy_backward(ls, ts, lse, g[0], count, ignore_index, label_smoothing),
                          Tensor()};
                });
}

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  LATHE_CHECK(!any_requires_grad({cos, sin}))
      << "rope: the cos/sin tables require grad, but rope does not differentiate them; detach them";
  Tensor y = kernels::rope(x, cos, sin, false);
  Tensor cs = saved(cos), ss = saved(sin);
  // A rotation's adjoint is the rotation by -theta.
  return record("rope", y, {x}, [cs, ss](const Grads& g, const Needs&) -> Grads {
    return {kernels::rope(g[0], cs, ss, /*inverse=*/true)};
  });
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window) {
  kernels::AttentionOut o = kernels::attention(q, k, v, causal, scale, window);
  Tensor qs = saved(q), ks = saved(k), vs = saved(v), os = saved(o.out), lse = o.lse;
  return record("attention", o.out, {q, k, v},
                [qs, ks, vs, os, lse, causal, scale, window](const Grads& g, const Needs&) -> Grads {
                  kernels::AttentionGrads r =
                      kernels::attention_backward(g[0], qs, ks, vs, os, lse, causal, scale, window);
                  return {r.dq, r.dk, r.dv};
                });
}

Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) {
  LATHE_CHECK(p >= 0.0 && p < 1.0) << "dropout: p must be in [0, 1), got " << p;
  if (!training || p == 0.0) return x;
  kernels::DropoutOut o = kernels::dropout(x, p, gen);
  Tensor mask = o.mask;
  double keep_scale = 1.0 / (1.0 - p);
  return record("dropout", o.y, {x}, [mask, keep_scale](const Grads& g, const Needs&) -> Grads {
    return {kernels::affine(kmul(g[0], mask.to(g[0].dtype())), keep_scale, 0.0)};
  });
}

}  // namespace lathe::autograd
