// Rotary position embeddings (Su et al., "RoFormer", 2021; Hugging Face rotate_half
// layout) and scaled dot-product attention with grouped-query heads (Ainslie et al.,
// "GQA", 2023).
//
// Attention works one query row at a time with a scratch row of S scores per thread, so
// no [B, H, T, S] score or probability tensor is ever allocated. The forward saves the
// log-sum-exp of each row; the backward recomputes the probabilities from it, as in
// FlashAttention (Dao et al., 2022, Alg. 2 and 4):
//   P = exp(scale * Q K^T - lse), dV = P^T dO, dP = dO V^T, D_i = rowsum(dO * O),
//   dS = P * (dP - D_i), dQ = scale * dS K, dK = scale * dS^T Q.
// Rows whose causal window is empty (T > S) give a zero output and lse = -inf.
// bf16/f16 inputs are converted to f32 once per call; everything computes in f32 or f64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/nn.h"

namespace lathe::kernels::cpu {

using nn_detail::acc_dtype;
using nn_detail::acc_t;
using nn_detail::load;
using nn_detail::store;

namespace {

// ---- rope --------------------------------------------------------------------------------

template <typename T>
void rope_kernel(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) {
  using A = acc_t<T>;
  const int64_t T_ = x.size(2), D = x.size(3), half = D / 2;
  const int64_t rows = x.numel() / std::max<int64_t>(D, 1);
  const T* xp = x.data<T>();
  T* op = out.data<T>();
  const A* cp = cos.data<A>();
  const A* sp = sin.data<A>();
  const A sign = inverse ? A(-1) : A(1);  // rotating by -theta flips the sine
#pragma omp parallel for schedule(static) if (rows * D > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r % T_;
    const T* xr = xp + r * D;
    T* orow = op + r * D;
    const A* c = cp + t * half;
    const A* s = sp + t * half;
    for (int64_t i = 0; i < half; ++i) {
      const A a = load(xr[i]), b = load(xr[i + half]), si = sign * s[i];
      orow[i] = store<T>(a * c[i] - b * si);
      orow[i + half] = store<T>(b * c[i] + a * si);
    }
  }
}

// ---- attention ---------------------------------------------------------------------------

template <typename A>
inline A dot(const A* a, const A* b, int64_t n) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename A>
inline void axpy(A alpha, const A* x, A* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

struct Dims {
  int64_t B, H, Hkv, T, S, D;
  // Keys a query row may see: all of them, or s <= t + (S - T) when causal.
  int64_t keys(bool causal, int64_t t) const { return causal ? std::clamp<int64_t>(t + (S - T) + 1, 0, S) : S; }
  // Offset (in elements) of the k/v head that query row block (b, h) reads.
  int64_t kv_base(int64_t b, int64_t h) const { return ((b * Hkv + h / (H / Hkv)) * S) * D; }
};

template <typename A>
void attention_forward(const Dims& d, const A* q, const A* k, const A* v, A* o, A* lse, bool causal, A scale) {
  const int64_t rows = d.B * d.H * d.T, D = d.D;
  // Small problems (as in tests and decoding) stay on one thread.
#pragma omp parallel if (rows * d.S * D > 32768)
  {
    std::vector<A> p(static_cast<size_t>(std::max<int64_t>(d.S, 1)));
    // Interleaved chunks of rows: causal rows grow in cost with t, so contiguous halves would
    // leave one thread with the long rows; chunks of 16 keep k/v of a head hot in cache.
#pragma omp for schedule(static, 16)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = r % d.T, bh = r / d.T, b = bh / d.H, h = bh % d.H;
      const A* qr = q + r * D;
      const A* kb = k + d.kv_base(b, h);
      const A* vb = v + d.kv_base(b, h);
      A* orow = o + r * D;
      std::fill(orow, orow + D, A(0));
      const int64_t n = d.keys(causal, t);
      if (n == 0) {
        lse[r] = -std::numeric_limits<A>::infinity();
        continue;
      }
      A m = -std::numeric_limits<A>::infinity();
      for (int64_t s = 0; s < n; ++s) {
        p[s] = scale * dot(qr, kb + s * D, D);
        m = std::max(m, p[s]);
      }
      A l = 0;
      for (int64_t s = 0; s < n; ++s) {
        p[s] = std::exp(p[s] - m);
        l += p[s];
      }
      for (int64_t s = 0; s < n; ++s) axpy(p[s], vb + s * D, orow, D);
      const A inv = A(1) / l;
      for (int64_t i = 0; i < D; ++i) orow[i] *= inv;
      lse[r] = m + std::log(l);
    }
  }
}

// dkh/dvh: [B, H, S, D] per-query-head gradients (zeroed); the caller sums each group.
template <typename A>
void attention_backward_heads(const Dims& d, const A* go, const A* q, const A* k, const A* v, const A* o,
                              const A* lse, bool causal, A scale, A* dq, A* dkh, A* dvh) {
  const int64_t D = d.D;
#pragma omp parallel if (d.B * d.H * d.T * d.S * D > 32768)
  {
    std::vector<A> p(static_cast<size_t>(std::max<int64_t>(d.S, 1))), ds(p.size());
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H;
      const A* kb = k + d.kv_base(b, h);
      const A* vb = v + d.kv_base(b, h);
      A* dkb = dkh + bh * d.S * D;
      A* dvb = dvh + bh * d.S * D;
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t r = bh * d.T + t;
        const A* qr = q + r * D;
        const A* gr = go + r * D;
        A* dqr = dq + r * D;
        std::fill(dqr, dqr + D, A(0));
        const int64_t n = d.keys(causal, t);
        if (n == 0) continue;
        const A Di = dot(gr, o + r * D, D);
        for (int64_t s = 0; s < n; ++s) {
          p[s] = std::exp(scale * dot(qr, kb + s * D, D) - lse[r]);
          ds[s] = p[s] * (dot(gr, vb + s * D, D) - Di);
        }
        for (int64_t s = 0; s < n; ++s) {
          axpy(scale * ds[s], kb + s * D, dqr, D);
          axpy(scale * ds[s], qr, dkb + s * D, D);
          axpy(p[s], gr, dvb + s * D, D);
        }
      }
    }
  }
}

// Sums the per-query-head gradients of each group of H/Hkv heads, in head order.
template <typename A>
void sum_groups(const Dims& d, const A* src, A* dst) {
  const int64_t G = d.H / d.Hkv, SD = d.S * d.D;
#pragma omp parallel for schedule(static) if (d.B * d.H * SD > 65536)
  for (int64_t bk = 0; bk < d.B * d.Hkv; ++bk) {
    const int64_t b = bk / d.Hkv, hk = bk % d.Hkv;
    A* o = dst + bk * SD;
    std::fill(o, o + SD, A(0));
    for (int64_t g = 0; g < G; ++g) {
      const A* s = src + ((b * d.H) + hk * G + g) * SD;
      for (int64_t i = 0; i < SD; ++i) o[i] += s[i];
    }
  }
}

Dims dims_of(const Tensor& q, const Tensor& k) {
  return Dims{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

// `t` in the compute dtype, or a scratch tensor of that dtype when t is lower precision.
Tensor acc_target(const Tensor& t, DType acc) {
  return t.dtype() == acc && t.is_contiguous() ? t : Tensor::empty(t.shape(), acc, Device::cpu());
}
void finish(const Tensor& scratch, const Tensor& dst) {
  if (!scratch.is_same(dst)) dst.copy_(scratch);
}

template <typename A>
void attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                    const AttentionOut& out) {
  const DType acc = dtype_of<A>::value;
  Tensor qa = q.to(acc).contiguous(), ka = k.to(acc).contiguous(), va = v.to(acc).contiguous();
  Tensor oa = acc_target(out.out, acc), la = acc_target(out.lse, acc);
  attention_forward<A>(dims_of(q, k), qa.data<A>(), ka.data<A>(), va.data<A>(), oa.data<A>(), la.data<A>(), causal,
                       static_cast<A>(scale));
  finish(oa, out.out);
  finish(la, out.lse);
}

template <typename A>
void attention_backward_impl(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, bool causal, double scale,
                             const AttentionGrads& grads) {
  const DType acc = dtype_of<A>::value;
  const Dims d = dims_of(q, k);
  auto in = [&](const Tensor& t) { return t.to(acc).contiguous(); };
  Tensor ga = in(gout), qa = in(q), ka = in(k), va = in(v), oa = in(out), la = in(lse);
  Tensor dq = acc_target(grads.dq, acc);
  const bool grouped = d.H != d.Hkv;
  // Without grouping each kv head has one query head: write its gradient in place.
  Tensor dkh = grouped ? Tensor::zeros({d.B, d.H, d.S, d.D}, acc) : acc_target(grads.dk, acc);
  Tensor dvh = grouped ? Tensor::zeros({d.B, d.H, d.S, d.D}, acc) : acc_target(grads.dv, acc);
  if (!grouped) {
    dkh.zero_();
    dvh.zero_();
  }
  attention_backward_heads<A>(d, ga.data<A>(), qa.data<A>(), ka.data<A>(), va.data<A>(), oa.data<A>(),
                              la.data<A>(), causal, static_cast<A>(scale), dq.data<A>(), dkh.data<A>(),
                              dvh.data<A>());
  finish(dq, grads.dq);
  if (grouped) {
    Tensor dk = acc_target(grads.dk, acc), dv = acc_target(grads.dv, acc);
    sum_groups<A>(d, dkh.data<A>(), dk.data<A>());
    sum_groups<A>(d, dvh.data<A>(), dv.data<A>());
    finish(dk, grads.dk);
    finish(dv, grads.dv);
  } else {
    finish(dkh, grads.dk);
    finish(dvh, grads.dv);
  }
}

}  // namespace

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) {
  const DType acc = acc_dtype(x.dtype());
  Tensor xc = x.contiguous(), cc = cos.to(acc).contiguous(), sc = sin.to(acc).contiguous();
  LATHE_NN_DISPATCH_FLOAT("rope", x.dtype(), T, rope_kernel<T>(xc, cc, sc, inverse, out));
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
               const AttentionOut& out) {
  LATHE_CHECK(is_floating(q.dtype())) << "attention: expected a floating dtype, got " << dtype_name(q.dtype());
  if (q.dtype() == DType::f64) {
    attention_impl<double>(q, k, v, causal, scale, out);
  } else {
    attention_impl<float>(q, k, v, causal, scale, out);
  }
}

void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, const AttentionGrads& grads) {
  LATHE_CHECK(is_floating(q.dtype())) << "attention_backward: expected a floating dtype, got "
                                      << dtype_name(q.dtype());
  if (q.dtype() == DType::f64) {
    attention_backward_impl<double>(gout, q, k, v, out, lse, causal, scale, grads);
  } else {
    attention_backward_impl<float>(gout, q, k, v, out, lse, causal, scale, grads);
  }
}

}  // namespace lathe::kernels::cpu
