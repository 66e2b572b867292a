// The reference loops of the kernel tests, in one place: plain double-precision loops over
// logical indices, written from the formulas and independent of the kernels' code paths.
// They read CPU tensors (inputs are drawn on the CPU; the per-device tests compare the
// device's result, brought back, with these).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace lathe::kernel_test {

// ---- elementwise ----------------------------------------------------------------------------

// Index into a tensor of shape `s` broadcast to the index space of `idx`.
inline std::vector<int64_t> bcast_idx(const std::vector<int64_t>& idx, const Shape& s) {
  std::vector<int64_t> r(s.size());
  size_t lead = idx.size() - s.size();
  for (size_t i = 0; i < s.size(); ++i) r[i] = s[i] == 1 ? 0 : idx[i + lead];
  return r;
}

inline double ref_unary(kernels::UnaryOp op, double x) {
  using kernels::UnaryOp;
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    case UnaryOp::sqrt: return std::sqrt(x);
    case UnaryOp::rsqrt: return 1.0 / std::sqrt(x);
    case UnaryOp::tanh: return std::tanh(x);
    case UnaryOp::sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case UnaryOp::relu: return x > 0 ? x : 0.0;
    case UnaryOp::gelu_tanh: {
      const double k = std::sqrt(2.0 / M_PI);
      return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
    }
    case UnaryOp::gelu_erf: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case UnaryOp::silu: return x / (1.0 + std::exp(-x));
    case UnaryOp::abs: return std::abs(x);
    case UnaryOp::sign: return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
    case UnaryOp::square: return x * x;
    case UnaryOp::reciprocal: return 1.0 / x;
    case UnaryOp::sin: return std::sin(x);
    case UnaryOp::cos: return std::cos(x);
  }
  return 0;
}

inline double ref_binary(kernels::BinaryOp op, double a, double b) {
  using kernels::BinaryOp;
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::maximum: return std::max(a, b);
    case BinaryOp::minimum: return std::min(a, b);
    case BinaryOp::pow: return std::pow(a, b);
    case BinaryOp::eq: return a == b;
    case BinaryOp::ne: return a != b;
    case BinaryOp::lt: return a < b;
    case BinaryOp::le: return a <= b;
    case BinaryOp::gt: return a > b;
    case BinaryOp::ge: return a >= b;
  }
  return 0;
}

// ---- reductions -----------------------------------------------------------------------------

// Walks the reduced sub-box of x for the output at keepdim index `oi` (axes normalised).
inline double ref_reduce(kernels::ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes,
                         const std::vector<int64_t>& oi, int64_t correction) {
  using kernels::ReduceOp;
  Shape sub(x.dim(), 1);
  for (int64_t a : axes) sub[a] = x.size(a);
  std::vector<double> vals;
  for_each_index(sub, [&](const std::vector<int64_t>& r) {
    std::vector<int64_t> i = oi;
    for (int64_t a : axes) i[a] = r[a];
    vals.push_back(x.at(i));
  });
  double n = static_cast<double>(vals.size());
  switch (op) {
    case ReduceOp::sum: {
      double s = 0;
      for (double v : vals) s += v;
      return s;
    }
    case ReduceOp::mean: {
      double s = 0;
      for (double v : vals) s += v;
      return s / n;
    }
    case ReduceOp::max: return *std::max_element(vals.begin(), vals.end());
    case ReduceOp::min: return *std::min_element(vals.begin(), vals.end());
    case ReduceOp::argmax: return static_cast<double>(std::max_element(vals.begin(), vals.end()) - vals.begin());
    case ReduceOp::var: {
      double m = 0;
      for (double v : vals) m += v;
      m /= n;
      double s = 0;
      for (double v : vals) s += (v - m) * (v - m);
      return s / (n - static_cast<double>(correction));
    }
    case ReduceOp::norm: {
      double s = 0;
      for (double v : vals) s += v * v;
      return std::sqrt(s);
    }
  }
  return 0;
}

// ---- matmul ---------------------------------------------------------------------------------

// op(a) @ op(b) for a, b of rank >= 2 with broadcast batch dims, as an f64 tensor.
inline Tensor naive_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "naive");
  const int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  const int64_t N = tb ? b.size(-2) : b.size(-1);
  Shape as = batch, bs = batch, os = batch;
  as.insert(as.end(), a.shape().end() - 2, a.shape().end());
  bs.insert(bs.end(), b.shape().end() - 2, b.shape().end());
  os.push_back(M);
  os.push_back(N);
  Tensor ae = a.expand(as), be = b.expand(bs);
  Tensor out = Tensor::zeros(os, DType::f64);
  const int64_t nb = shape_numel(batch);
  double* o = out.data<double>();
  for (int64_t bi = 0; bi < nb; ++bi) {
    std::vector<int64_t> idx(batch.size());
    int64_t rem = bi;
    for (int64_t d = static_cast<int64_t>(batch.size()) - 1; d >= 0; --d) {
      idx[d] = rem % batch[d];
      rem /= batch[d];
    }
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          std::vector<int64_t> ia = idx, ib = idx;
          ia.push_back(ta ? k : i);
          ia.push_back(ta ? i : k);
          ib.push_back(tb ? j : k);
          ib.push_back(tb ? k : j);
          acc += ae.at(ia) * be.at(ib);
        }
        o[(bi * M + i) * N + j] = acc;
      }
  }
  return out;
}

// ---- softmax --------------------------------------------------------------------------------

// Softmax (or log-softmax) of row-major values of `shape` along `axis`.
inline std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& shape, int64_t axis, bool log) {
  int64_t outer = 1, inner = 1, n = shape[axis];
  for (int64_t i = 0; i < axis; ++i) outer *= shape[i];
  for (size_t i = axis + 1; i < shape.size(); ++i) inner *= shape[i];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t in = 0; in < inner; ++in) {
      auto at = [&](int64_t j) { return (o * n + j) * inner + in; };
      double m = -INFINITY, s = 0;
      for (int64_t j = 0; j < n; ++j) m = std::max(m, x[at(j)]);
      for (int64_t j = 0; j < n; ++j) s += std::exp(x[at(j)] - m);
      for (int64_t j = 0; j < n; ++j) y[at(j)] = log ? x[at(j)] - m - std::log(s) : std::exp(x[at(j)] - m) / s;
    }
  return y;
}

// softmax_backward for row-major y, gy of [rows, n]: y * (gy - sum(gy * y)).
inline std::vector<double> ref_softmax_backward(const std::vector<double>& y, const std::vector<double>& gy,
                                                int64_t n) {
  std::vector<double> g(y.size());
  for (size_t r = 0; r < y.size() / n; ++r) {
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += gy[r * n + j] * y[r * n + j];
    for (int64_t j = 0; j < n; ++j) g[r * n + j] = y[r * n + j] * (gy[r * n + j] - s);
  }
  return g;
}

// ---- norms ----------------------------------------------------------------------------------

struct RefNorm {
  std::vector<double> y, mean, rstd;
};

// Row-wise layer (or RMS) norm over the last dim C of row-major x; w/b empty = no affine.
inline RefNorm ref_norm(bool layer, const std::vector<double>& x, int64_t C, const std::vector<double>& w,
                        const std::vector<double>& b, double eps) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  RefNorm r;
  r.y.resize(x.size());
  for (int64_t i = 0; i < rows; ++i) {
    double mu = 0, ms = 0;
    for (int64_t j = 0; j < C; ++j) mu += x[i * C + j] / C;
    if (!layer) mu = 0;
    for (int64_t j = 0; j < C; ++j) ms += (x[i * C + j] - mu) * (x[i * C + j] - mu) / C;
    const double rs = 1 / std::sqrt(ms + eps);
    r.mean.push_back(mu);
    r.rstd.push_back(rs);
    for (int64_t j = 0; j < C; ++j) {
      double v = (x[i * C + j] - mu) * rs;
      if (!w.empty()) v *= w[j];
      if (!b.empty()) v += b[j];
      r.y[i * C + j] = v;
    }
  }
  return r;
}

struct RefNormGrads {
  std::vector<double> dx, dw, db;
};

// layer_norm's gradients for row-major gy, x [rows, C] and weight w: dw = sum gy * xhat,
// db = sum gy, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = gy * w.
inline RefNormGrads ref_layer_norm_backward(const std::vector<double>& gy, const std::vector<double>& x, int64_t C,
                                            const std::vector<double>& w, double eps) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  RefNorm r = ref_norm(true, x, C, {}, {}, eps);  // y without affine = xhat
  RefNormGrads g;
  g.dw.assign(C, 0.0);
  g.db.assign(C, 0.0);
  g.dx.resize(x.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < C; ++j) {
      g.dw[j] += gy[i * C + j] * r.y[i * C + j];
      g.db[j] += gy[i * C + j];
    }
  for (int64_t i = 0; i < rows; ++i) {
    double a = 0, bb = 0;
    for (int64_t j = 0; j < C; ++j) {
      a += gy[i * C + j] * w[j] / C;
      bb += gy[i * C + j] * w[j] * r.y[i * C + j] / C;
    }
    for (int64_t j = 0; j < C; ++j) g.dx[i * C + j] = r.rstd[i] * (gy[i * C + j] * w[j] - a - r.y[i * C + j] * bb);
  }
  return g;
}

// ---- cross-entropy --------------------------------------------------------------------------

struct RefCE {
  double loss = 0;
  std::vector<double> lse;
  int64_t count = 0;
};

// loss_i = (1-eps)(lse - x_t) + eps (lse - mean_j x_j), mean over the rows not ignored.
inline RefCE ref_ce(const std::vector<double>& x, int64_t V, const std::vector<int64_t>& t, int64_t ignore,
                    double eps) {
  RefCE r;
  double total = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    double m = -INFINITY, s = 0, mean = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, x[i * V + j]);
    for (int64_t j = 0; j < V; ++j) {
      s += std::exp(x[i * V + j] - m);
      mean += x[i * V + j] / V;
    }
    const double lse = m + std::log(s);
    r.lse.push_back(lse);
    if (t[i] == ignore) continue;
    total += (1 - eps) * (lse - x[i * V + t[i]]) + eps * (lse - mean);
    ++r.count;
  }
  r.loss = r.count ? total / r.count : 0.0;
  return r;
}

// d loss / d x scaled by grad_loss: grad_loss / count (softmax - (1-eps) onehot - eps/V); 0 on ignored rows.
inline std::vector<double> ref_ce_backward(const std::vector<double>& x, int64_t V, const std::vector<int64_t>& t,
                                           const RefCE& r, int64_t ignore, double eps, double grad_loss,
                                           double count) {
  std::vector<double> g(x.size(), 0.0);
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ignore) continue;
    for (int64_t j = 0; j < V; ++j)
      g[i * V + j] = grad_loss / count * (std::exp(x[i * V + j] - r.lse[i]) - (1 - eps) * (j == t[i]) - eps / V);
  }
  return g;
}

// ---- embedding and indexing -----------------------------------------------------------------

// out[i, :] = w[ids[i], :] for row-major w [V, C].
inline std::vector<double> ref_lookup(const std::vector<double>& w, int64_t C, const std::vector<int64_t>& ids) {
  std::vector<double> out;
  for (int64_t id : ids)
    for (int64_t j = 0; j < C; ++j) out.push_back(w[id * C + j]);
  return out;
}

// g[ids[i], :] += gy[i, :] for row-major gy [n, C]; g is [V, C].
inline std::vector<double> ref_embedding_backward(const std::vector<double>& gy, int64_t C,
                                                  const std::vector<int64_t>& ids, int64_t V) {
  std::vector<double> g(V * C, 0.0);
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < C; ++j) g[ids[i] * C + j] += gy[i * C + j];
  return g;
}

// gather: y[i] = x[i with i[axis] = index[i]], as f64 of index's shape.
inline Tensor ref_gather(const Tensor& x, int64_t axis, const Tensor& index) {
  Tensor want = Tensor::empty(index.shape(), DType::f64);
  double* w = want.data<double>();
  int64_t k = 0;
  for_each_index(index.shape(), [&](const std::vector<int64_t>& i) {
    std::vector<int64_t> src = i;
    src[axis] = static_cast<int64_t>(index.at(i));
    w[k++] = x.at(src);
  });
  return want;
}

// scatter_add: x (as f64) with src[i] added at i with i[axis] = index[i].
inline Tensor ref_scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src) {
  Tensor want = x.to(DType::f64).contiguous().clone();
  double* w = want.data<double>();
  for_each_index(src.shape(), [&](const std::vector<int64_t>& i) {
    std::vector<int64_t> dst = i;
    dst[axis] = static_cast<int64_t>(index.at(i));
    int64_t off = 0;
    for (int64_t d = 0; d < want.dim(); ++d) off += dst[d] * want.stride(d);
    w[off] += src.at(i);
  });
  return want;
}

// index_add: x (as f64) with src's slice j along axis added to slice index[j].
inline Tensor ref_index_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src) {
  Tensor want = x.to(DType::f64).contiguous().clone();
  double* w = want.data<double>();
  for_each_index(src.shape(), [&](const std::vector<int64_t>& i) {
    std::vector<int64_t> dst = i;
    dst[axis] = static_cast<int64_t>(index.at({i[axis]}));
    int64_t off = 0;
    for (int64_t d = 0; d < want.dim(); ++d) off += dst[d] * want.stride(d);
    w[off] += src.at(i);
  });
  return want;
}

// ---- rope and attention ---------------------------------------------------------------------

// rope on row-major x [.., T, D] (rows ordered with t fastest-but-one) with tables c, s [T, D/2].
inline std::vector<double> ref_rope(const std::vector<double>& x, int64_t T, int64_t D, const std::vector<double>& c,
                                    const std::vector<double>& s) {
  std::vector<double> y(x.size());
  const int64_t rows = static_cast<int64_t>(x.size()) / D, h = D / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r % T;
    for (int64_t i = 0; i < h; ++i) {
      const double a = x[r * D + i], b = x[r * D + i + h];
      y[r * D + i] = a * c[t * h + i] - b * s[t * h + i];
      y[r * D + i + h] = b * c[t * h + i] + a * s[t * h + i];
    }
  }
  return y;
}

struct RefAttention {
  std::vector<double> out, lse;
};

// Whether query t (of T) sees key j (of S): causal keeps j <= t + (S - T), and a sliding
// window > 0 (transformers' Mistral rule) also drops j <= t + (S - T) - window.
inline bool ref_attention_masked(bool causal, int64_t window, int64_t t, int64_t j, int64_t T, int64_t S) {
  if (!causal) return false;
  return j > t + (S - T) || (window > 0 && j <= t + (S - T) - window);
}

// Head h reads kv head h / (H / Hkv); keys as ref_attention_masked says; rows with no key
// give out 0 and lse -inf.
inline RefAttention ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                                  int64_t window = 0) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  auto vq = vec(q), vk = vec(k), vv = vec(v);
  RefAttention r;
  r.out.assign(vq.size(), 0.0);
  r.lse.assign(B * H * T, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t hk = h / (H / Hkv), row = (b * H + h) * T + t;
        std::vector<double> sc;
        std::vector<int64_t> keys;
        for (int64_t j = 0; j < S; ++j) {
          if (ref_attention_masked(causal, window, t, j, T, S)) continue;
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += vq[row * D + i] * vk[((b * Hkv + hk) * S + j) * D + i];
          sc.push_back(scale * d);
          keys.push_back(j);
        }
        if (sc.empty()) {
          r.lse[row] = -INFINITY;
          continue;
        }
        const double m = *std::max_element(sc.begin(), sc.end());
        double l = 0;
        for (double x : sc) l += std::exp(x - m);
        r.lse[row] = m + std::log(l);
        for (size_t j = 0; j < sc.size(); ++j)
          for (int64_t i = 0; i < D; ++i)
            r.out[row * D + i] += std::exp(sc[j] - r.lse[row]) * vv[((b * Hkv + hk) * S + keys[j]) * D + i];
      }
  return r;
}

struct RefAttentionGrads {
  std::vector<double> dq, dk, dv;
};

// Gradients by the textbook formulas on full [T, S] matrices (independent of a kernel's
// row-at-a-time recomputation).
inline RefAttentionGrads ref_attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                                                bool causal, double scale, int64_t window = 0) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  auto vq = vec(q), vk = vec(k), vv = vec(v), vg = vec(gout);
  auto masked = [&](int64_t t, int64_t s) { return ref_attention_masked(causal, window, t, s, T, S); };
  RefAttentionGrads g;
  g.dq.assign(vq.size(), 0.0);
  g.dk.assign(vk.size(), 0.0);
  g.dv.assign(vv.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / (H / Hkv);
      const double* Q = &vq[(b * H + h) * T * D];
      const double* G = &vg[(b * H + h) * T * D];
      const double* K = &vk[(b * Hkv + hk) * S * D];
      const double* V = &vv[(b * Hkv + hk) * S * D];
      std::vector<double> P(T * S, 0.0), dP(T * S, 0.0);
      for (int64_t t = 0; t < T; ++t) {  // P = softmax(scale Q K^T) with the mask
        double m = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          if (masked(t, s)) continue;
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += Q[t * D + i] * K[s * D + i];
          P[t * S + s] = scale * d;
          m = std::max(m, scale * d);
        }
        double l = 0;
        for (int64_t s = 0; s < S; ++s)
          if (!masked(t, s)) l += (P[t * S + s] = std::exp(P[t * S + s] - m));
        for (int64_t s = 0; s < S; ++s) P[t * S + s] = masked(t, s) ? 0.0 : P[t * S + s] / l;
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t s = 0; s < S; ++s) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += G[t * D + i] * V[s * D + i];
          dP[t * S + s] = d;
        }
      for (int64_t t = 0; t < T; ++t) {
        double rowdot = 0;  // sum_s P dP
        for (int64_t s = 0; s < S; ++s) rowdot += P[t * S + s] * dP[t * S + s];
        for (int64_t s = 0; s < S; ++s) {
          const double dS = P[t * S + s] * (dP[t * S + s] - rowdot);
          for (int64_t i = 0; i < D; ++i) {
            g.dq[((b * H + h) * T + t) * D + i] += scale * dS * K[s * D + i];
            g.dk[((b * Hkv + hk) * S + s) * D + i] += scale * dS * Q[t * D + i];
            g.dv[((b * Hkv + hk) * S + s) * D + i] += P[t * S + s] * G[t * D + i];
          }
        }
      }
    }
  return g;
}

// ---- optimizer --------------------------------------------------------------------------------

// One AdamW step on double copies of param, m, v (decoupled weight decay, bias-corrected moments).
inline void ref_adamw_step(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                           const std::vector<double>& g, double lr, double b1, double b2, double eps, double wd,
                           int64_t step) {
  const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  for (size_t i = 0; i < p.size(); ++i) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    p[i] -= lr * ((m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps) + wd * p[i]);
  }
}

}  // namespace lathe::kernel_test
