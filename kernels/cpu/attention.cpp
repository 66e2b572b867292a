// Rotary position embeddings (Su et al., "RoFormer", 2021; Hugging Face rotate_half
// layout) and scaled dot-product attention with grouped-query heads (Ainslie et al.,
// "GQA", 2023).
//
// Attention works on tiles of 64 query rows x 64 keys whose products are BLAS GEMMs, with
// an online softmax (FlashAttention-2, Dao, 2023), so no [B, H, T, S] score or probability
// tensor is ever allocated and the work runs at matmul speed. The forward saves the
// log-sum-exp of each row; the backward recomputes the probabilities from it
// (Dao et al., 2022, Alg. 2 and 4):
//   P = exp(scale * Q K^T - lse), dV = P^T dO, dP = dO V^T, D_i = rowsum(dO * O),
//   dS = P * (dP - D_i), dQ = scale * dS K, dK = scale * dS^T Q.
// Rows whose causal window is empty (T > S) give a zero output and lse = -inf.
// A sliding window (Mistral: Jiang et al., "Mistral 7B", 2023) keeps, of a row's causal
// keys, only the last `window`; key blocks wholly before the first row's window are skipped
// like those past the last row's causal limit, and inside a block each row masks both ends.
// bf16/f16 inputs are converted to f32 once per call; everything computes in f32 or f64.
// Every [B, H, T, D] operand and result is addressed through its own strides (the head dim
// must be unit-stride): the tile GEMMs take the row stride as their leading dimension, so
// the heads of a [B, T, H * D] projection (a transposed view) are read in place and the
// output can be written in the [B, T, H, D] order the out-projection reads, no copies.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/nn.h"
#include "kernels/cpu/partials.h"
#include "kernels/cpu/vmath.h"

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

// Query and key block sizes. Fixed (never derived from the thread count), so every sum
// runs in the same order for any number of threads. 64 x 64 f32 score tiles (16 KiB) stay
// in L1/L2 next to the 64-row q/k/v slices they come from.
constexpr int64_t kBq = 64, kBk = 64;

// Leading dims are at least 1 (BLAS rejects 0, which a head dim of 0 would give).
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, a, int(std::max<int64_t>(lda, 1)), b, int(std::max<int64_t>(ldb, 1)), beta, c,
              int(std::max<int64_t>(ldc, 1)));
}
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* a, int64_t lda,
                 const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, a, int(std::max<int64_t>(lda, 1)), b, int(std::max<int64_t>(ldb, 1)), beta, c,
              int(std::max<int64_t>(ldc, 1)));
}

template <typename A>
inline A dot(const A* a, const A* b, int64_t n) {
  return partials::sum<A>(n, [a, b](int64_t i) { return a[i] * b[i]; });
}

// The tile GEMMs run inside OpenMP regions, one per thread: OpenBLAS must not start its own
// workers for them (the pthreads build would put 2 x threads on the cores, and results
// could depend on how it splits a product). Serial BLAS for the scope of one attention
// call, then restored. OpenBLAS's OpenMP build also sets OpenMP's count from
// openblas_set_num_threads, so the OpenMP count is restored explicitly too.
class SerialBlas {
 public:
  SerialBlas() : omp_(omp_get_max_threads()), blas_(openblas_get_num_threads()) {
    if (blas_ != 1) openblas_set_num_threads(1);
  }
  ~SerialBlas() {
    if (blas_ != 1) openblas_set_num_threads(blas_);
    omp_set_num_threads(omp_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;
  int threads() const { return omp_; }

 private:
  int omp_, blas_;
};

// Where element (b, h, t, 0) of a [B, H, T, D] operand lies: b * sb + h * sh + t * st.
struct Lay {
  int64_t sb, sh, st;
  int64_t at(int64_t b, int64_t h, int64_t t) const { return b * sb + h * sh + t * st; }
};
Lay lay_of(const Tensor& t) { return Lay{t.stride(0), t.stride(1), t.stride(2)}; }

struct Dims {
  int64_t B, H, Hkv, T, S, D;
  bool causal = false;
  int64_t window = 0;  // 0 = none
  // Keys a query row may see are first(t) <= s < keys(t): all of them, s <= t + (S - T)
  // when causal, and of those only the last `window` with a sliding window.
  int64_t keys(int64_t t) const { return causal ? std::clamp<int64_t>(t + (S - T) + 1, 0, S) : S; }
  int64_t first(int64_t t) const { return window > 0 ? std::max<int64_t>(keys(t) - window, 0) : 0; }
  // The k/v head that query head h reads.
  int64_t kv_head(int64_t h) const { return h / (H / Hkv); }
  int64_t q_blocks() const { return (T + kBq - 1) / kBq; }
};

// The softmax part of one forward tile (the FlashAttention-2 online update), row by row:
// sc holds the nq x nk scaled scores of key block s0 (row stride kBk) and becomes the
// unnormalized probabilities; m / l are the rows' running max and sum, and each output
// row (stride ost) is rescaled when its max grows.
template <typename A>
__attribute__((always_inline)) inline void forward_rows(const Dims& d, A* sc, int64_t nq, int64_t nk, int64_t t0,
                                                        int64_t s0, A* m, A* l, A* ob, int64_t ost) {
  const int64_t D = d.D;
  for (int64_t i = 0; i < nq; ++i) {
    A* p = sc + i * kBk;
    // This row's visible keys of the block: [lo, lim).
    const int64_t lim = std::clamp<int64_t>(d.keys(t0 + i) - s0, 0, nk);
    const int64_t lo = std::clamp<int64_t>(d.first(t0 + i) - s0, 0, lim);
    if (lim == lo) {  // every key of this block is masked for this row
      std::fill(p, p + nk, A(0));
      continue;
    }
    const A mx = std::max(m[i], partials::max<A>(lim - lo, [p, lo](int64_t j) { return p[lo + j]; }));
    const A corr = vmath::exp_of<A>(m[i] - mx);  // 0 on the row's first visible block
#pragma omp simd
    for (int64_t j = lo; j < lim; ++j) p[j] = vmath::exp_of<A>(p[j] - mx);
    std::fill(p, p + lo, A(0));
    std::fill(p + lim, p + nk, A(0));
    l[i] = l[i] * corr + partials::sum<A>(lim - lo, [p, lo](int64_t j) { return p[lo + j]; });
    if (corr != A(1)) {
      A* orow = ob + i * ost;
      for (int64_t c = 0; c < D; ++c) orow[c] *= corr;
    }
    m[i] = mx;
  }
}

// The elementwise part of one backward tile: p holds scale Q K^T and becomes P =
// exp(p - lse); dp holds dO V^T and becomes dS = P (dP - D_i); masked entries are 0.
template <typename A>
__attribute__((always_inline)) inline void backward_rows(const Dims& d, A* p, A* dp, int64_t nq, int64_t nk,
                                                         int64_t t0, int64_t s0, const A* lb, const A* di) {
  for (int64_t i = 0; i < nq; ++i) {
    A* pr = p + i * kBk;
    A* dr = dp + i * kBk;
    const int64_t hi = d.keys(t0 + i), first = d.first(t0 + i);
    const int64_t lim = std::clamp<int64_t>(hi - s0, 0, nk);
    const int64_t lo = std::clamp<int64_t>(first - s0, 0, lim);
    const A li = lb[i], dii = di[i];
#pragma omp simd
    for (int64_t j = lo; j < lim; ++j) {
      pr[j] = vmath::exp_of<A>(pr[j] - li);
      dr[j] = pr[j] * (dr[j] - dii);
    }
    std::fill(pr, pr + lo, A(0));
    std::fill(dr, dr + lo, A(0));
    std::fill(pr + lim, pr + nk, A(0));
    std::fill(dr + lim, dr + nk, A(0));
    // A row with one visible key has P = 1 and O = v, so dS = dO.v - dO.O is exactly
    // 0; the two dots are summed in different orders here, so say so explicitly.
    if (hi - first == 1 && first >= s0 && first < s0 + nk) dr[first - s0] = A(0);
  }
}

// The f32 rows at the CPU's best vector width (kernels/cpu/isa.h; same bits at every level).
LATHE_ISA_ROW(forward_rows_f32,
              (const Dims& d, float* sc, int64_t nq, int64_t nk, int64_t t0, int64_t s0, float* m, float* l,
               float* ob, int64_t ost),
              (d, sc, nq, nk, t0, s0, m, l, ob, ost), forward_rows<float>)
LATHE_ISA_ROW(backward_rows_f32,
              (const Dims& d, float* p, float* dp, int64_t nq, int64_t nk, int64_t t0, int64_t s0, const float* lb,
               const float* di),
              (d, p, dp, nq, nk, t0, s0, lb, di), backward_rows<float>)

template <typename A>
void forward_rows_best(const Dims& d, A* sc, int64_t nq, int64_t nk, int64_t t0, int64_t s0, A* m, A* l, A* ob,
                       int64_t ost) {
  if constexpr (std::is_same_v<A, float>) return forward_rows_f32(d, sc, nq, nk, t0, s0, m, l, ob, ost);
  forward_rows<A>(d, sc, nq, nk, t0, s0, m, l, ob, ost);
}
template <typename A>
void backward_rows_best(const Dims& d, A* p, A* dp, int64_t nq, int64_t nk, int64_t t0, int64_t s0, const A* lb,
                        const A* di) {
  if constexpr (std::is_same_v<A, float>) return backward_rows_f32(d, p, dp, nq, nk, t0, s0, lb, di);
  backward_rows<A>(d, p, dp, nq, nk, t0, s0, lb, di);
}

// FlashAttention-2 forward (Dao, 2023, Alg. 1) on the CPU: for each (b, h, query block) the
// score tile of each key block is one GEMM (Q_i K_j^T), the running max / sum are updated
// row by row (online softmax), and O_i += P_ij V_j is a second GEMM. Key blocks past the
// causal limit of the block's last row are skipped; inside the diagonal block the scores
// past each row's limit get probability 0.
template <typename A>
void attention_forward(const Dims& d, const A* q, Lay ql, const A* k, Lay kl, const A* v, Lay vl, A* o, Lay ol,
                       A* lse, A scale) {
  const int64_t D = d.D, nqb = d.q_blocks(), tasks = d.B * d.H * nqb;
  const A ninf = -std::numeric_limits<A>::infinity();
  SerialBlas serial;
  // Small problems (as in tests and decoding) stay on one thread.
#pragma omp parallel num_threads(serial.threads()) if (d.B * d.H * d.T * d.S * D > 32768 && tasks > 1)
  {
    std::vector<A> sc(static_cast<size_t>(kBq * kBk)), m(kBq), l(kBq);
    // Interleaved tasks: causal blocks grow in cost with their position, so contiguous
    // ranges would leave one thread with the long ones.
#pragma omp for schedule(static, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bh = task / nqb, t0 = (task % nqb) * kBq, b = bh / d.H, h = bh % d.H;
      const int64_t nq = std::min(kBq, d.T - t0);
      const A* qb = q + ql.at(b, h, t0);
      const A* kb = k + kl.at(b, d.kv_head(h), 0);
      const A* vb = v + vl.at(b, d.kv_head(h), 0);
      A* ob = o + ol.at(b, h, t0);
      A* lb = lse + bh * d.T + t0;
      for (int64_t i = 0; i < nq; ++i) std::fill(ob + i * ol.st, ob + i * ol.st + D, A(0));
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), A(0));
      // The block's last row has the highest causal limit, its first row the lowest window
      // start; key blocks (on the fixed kBk grid) outside [kmin, kmax) are never computed.
      const int64_t kmax = d.keys(t0 + nq - 1), kmin = d.first(t0) / kBk * kBk;
      for (int64_t s0 = kmin; s0 < kmax; s0 += kBk) {
        const int64_t nk = std::min(kBk, kmax - s0);
        gemm(false, true, nq, nk, D, scale, qb, ql.st, kb + s0 * kl.st, kl.st, A(0), sc.data(), kBk);
        forward_rows_best<A>(d, sc.data(), nq, nk, t0, s0, m.data(), l.data(), ob, ol.st);
        gemm(false, false, nq, D, nk, A(1), sc.data(), kBk, vb + s0 * vl.st, vl.st, A(1), ob, ol.st);
      }
      for (int64_t i = 0; i < nq; ++i) {
        A* orow = ob + i * ol.st;
        if (l[i] == A(0)) {  // no visible key: zero output, lse = -inf
          std::fill(orow, orow + D, A(0));
          lb[i] = ninf;
          continue;
        }
        const A inv = A(1) / l[i];
        for (int64_t c = 0; c < D; ++c) orow[c] *= inv;
        lb[i] = m[i] + std::log(l[i]);
      }
    }
  }
}

// FlashAttention-2 backward (Alg. 2) per (b, h): for each query block and each visible key
// block, P = exp(scale Q K^T - lse) and dP = dO V^T are GEMMs, dS = P (dP - D_i), and
// dV += P^T dO, dQ += scale dS K, dK += scale dS^T Q are GEMMs accumulating into the
// outputs. A task owns a whole head so dK/dV sum over the query blocks in a fixed order.
// dkh/dvh: [B, H, S, D] per-query-head gradients; the caller sums each group. dq, dkh and
// dvh are zeroed here (each task owns its head's rows).
template <typename A>
struct BwdArgs {
  const A *go, *q, *k, *v, *o, *lse;
  Lay gol, ql, kl, vl, ol;
  A *dq, *dkh, *dvh;
  Lay dql, dkl, dvl;
};

template <typename A>
void attention_backward_heads(const Dims& d, const BwdArgs<A>& x, A scale) {
  const int64_t D = d.D, BH = d.B * d.H;
  SerialBlas serial;
#pragma omp parallel num_threads(serial.threads()) if (BH * d.T * d.S * D > 32768 && BH > 1)
  {
    std::vector<A> p(static_cast<size_t>(kBq * kBk)), dp(p.size()), di(kBq);
#pragma omp for schedule(static, 1)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H, hk = d.kv_head(h);
      const Lay &ql = x.ql, &kl = x.kl, &vl = x.vl, &gl = x.gol, &dql = x.dql, &dkl = x.dkl, &dvl = x.dvl;
      const A* kb = x.k + kl.at(b, hk, 0);
      const A* vb = x.v + vl.at(b, hk, 0);
      A* dkb = x.dkh + dkl.at(b, h, 0);
      A* dvb = x.dvh + dvl.at(b, h, 0);
      for (int64_t t = 0; t < d.T; ++t) std::fill(x.dq + dql.at(b, h, t), x.dq + dql.at(b, h, t) + D, A(0));
      for (int64_t s = 0; s < d.S; ++s) {
        std::fill(dkb + s * dkl.st, dkb + s * dkl.st + D, A(0));
        std::fill(dvb + s * dvl.st, dvb + s * dvl.st + D, A(0));
      }
      for (int64_t t0 = 0; t0 < d.T; t0 += kBq) {
        const int64_t nq = std::min(kBq, d.T - t0);
        const A* qb = x.q + ql.at(b, h, t0);
        const A* gb = x.go + gl.at(b, h, t0);
        const A* ob = x.o + x.ol.at(b, h, t0);
        const A* lb = x.lse + bh * d.T + t0;
        A* dqb = x.dq + dql.at(b, h, t0);
        for (int64_t i = 0; i < nq; ++i) di[i] = dot(gb + i * gl.st, ob + i * x.ol.st, D);
        const int64_t kmax = d.keys(t0 + nq - 1), kmin = d.first(t0) / kBk * kBk;  // as in the forward
        for (int64_t s0 = kmin; s0 < kmax; s0 += kBk) {
          const int64_t nk = std::min(kBk, kmax - s0);
          gemm(false, true, nq, nk, D, scale, qb, ql.st, kb + s0 * kl.st, kl.st, A(0), p.data(), kBk);
          gemm(false, true, nq, nk, D, A(1), gb, gl.st, vb + s0 * vl.st, vl.st, A(0), dp.data(), kBk);
          backward_rows_best<A>(d, p.data(), dp.data(), nq, nk, t0, s0, lb, di.data());
          gemm(true, false, nk, D, nq, A(1), p.data(), kBk, gb, gl.st, A(1), dvb + s0 * dvl.st, dvl.st);
          gemm(false, false, nq, D, nk, scale, dp.data(), kBk, kb + s0 * kl.st, kl.st, A(1), dqb, dql.st);
          gemm(true, false, nk, D, nq, scale, dp.data(), kBk, qb, ql.st, A(1), dkb + s0 * dkl.st, dkl.st);
        }
      }
    }
  }
}

// Sums the per-query-head gradients (contiguous [B, H, S, D]) of each group of H/Hkv heads,
// in head order, into dst (laid out as `dl`).
template <typename A>
void sum_groups(const Dims& d, const A* src, A* dst, Lay dl) {
  const int64_t G = d.H / d.Hkv, SD = d.S * d.D, D = d.D;
#pragma omp parallel for schedule(static) if (d.B * d.H * SD > 65536)
  for (int64_t bk = 0; bk < d.B * d.Hkv; ++bk) {
    const int64_t b = bk / d.Hkv, hk = bk % d.Hkv;
    for (int64_t s = 0; s < d.S; ++s) {
      A* o = dst + dl.at(b, hk, s);
      std::fill(o, o + D, A(0));
      for (int64_t g = 0; g < G; ++g) {
        const A* r = src + ((b * d.H) + hk * G + g) * SD + s * D;
        for (int64_t i = 0; i < D; ++i) o[i] += r[i];
      }
    }
  }
}

Dims dims_of(const Tensor& q, const Tensor& k, bool causal, int64_t window) {
  return Dims{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), causal, causal ? window : 0};
}

// A [B, H, T, D] tensor the kernels can address in place: unit-stride head dim.
bool addressable(const Tensor& t) { return t.dim() != 4 ? t.is_contiguous() : t.stride(3) == 1 || t.size(3) <= 1; }

// `t` in the compute dtype, or a scratch tensor of that dtype when t is lower precision.
Tensor acc_target(const Tensor& t, DType acc) {
  return t.dtype() == acc && addressable(t) ? t : Tensor::empty(t.shape(), acc, Device::cpu());
}
// An input in the compute dtype, copied only when it is not addressable.
Tensor acc_input(const Tensor& t, DType acc) {
  Tensor a = t.to(acc);
  return addressable(a) ? a : a.contiguous();
}
void finish(const Tensor& scratch, const Tensor& dst) {
  if (!scratch.is_same(dst)) dst.copy_(scratch);
}

template <typename A>
void attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window,
                    const AttentionOut& out) {
  const DType acc = dtype_of<A>::value;
  Tensor qa = acc_input(q, acc), ka = acc_input(k, acc), va = acc_input(v, acc);
  Tensor oa = acc_target(out.out, acc), la = acc_target(out.lse, acc);
  attention_forward<A>(dims_of(q, k, causal, window), qa.data<A>(), lay_of(qa), ka.data<A>(), lay_of(ka),
                       va.data<A>(), lay_of(va), oa.data<A>(), lay_of(oa), la.data<A>(), static_cast<A>(scale));
  finish(oa, out.out);
  finish(la, out.lse);
}

template <typename A>
void attention_backward_impl(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, bool causal, double scale, int64_t window,
                             const AttentionGrads& grads) {
  const DType acc = dtype_of<A>::value;
  const Dims d = dims_of(q, k, causal, window);
  auto in = [&](const Tensor& t) { return acc_input(t, acc); };
  Tensor ga = in(gout), qa = in(q), ka = in(k), va = in(v), oa = in(out), la = lse.to(acc).contiguous();
  Tensor dq = acc_target(grads.dq, acc);
  const bool grouped = d.H != d.Hkv;
  // Without grouping each kv head has one query head: write its gradient in place.
  Tensor dkh = grouped ? Tensor::empty({d.B, d.H, d.S, d.D}, acc) : acc_target(grads.dk, acc);
  Tensor dvh = grouped ? Tensor::empty({d.B, d.H, d.S, d.D}, acc) : acc_target(grads.dv, acc);
  BwdArgs<A> x{ga.data<A>(), qa.data<A>(), ka.data<A>(), va.data<A>(), oa.data<A>(), la.data<A>(),
               lay_of(ga),   lay_of(qa),   lay_of(ka),   lay_of(va),   lay_of(oa),   dq.data<A>(),
               dkh.data<A>(), dvh.data<A>(), lay_of(dq),  lay_of(dkh),  lay_of(dvh)};
  attention_backward_heads<A>(d, x, static_cast<A>(scale));
  finish(dq, grads.dq);
  if (grouped) {
    Tensor dk = acc_target(grads.dk, acc), dv = acc_target(grads.dv, acc);
    sum_groups<A>(d, dkh.data<A>(), dk.data<A>(), lay_of(dk));
    sum_groups<A>(d, dvh.data<A>(), dv.data<A>(), lay_of(dv));
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

void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window,
               const AttentionOut& out) {
  LATHE_CHECK(is_floating(q.dtype())) << "attention: expected a floating dtype, got " << dtype_name(q.dtype());
  if (q.dtype() == DType::f64) {
    attention_impl<double>(q, k, v, causal, scale, window, out);
  } else {
    attention_impl<float>(q, k, v, causal, scale, window, out);
  }
}

void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, int64_t window, const AttentionGrads& grads) {
  LATHE_CHECK(is_floating(q.dtype())) << "attention_backward: expected a floating dtype, got "
                                      << dtype_name(q.dtype());
  if (q.dtype() == DType::f64) {
    attention_backward_impl<double>(gout, q, k, v, out, lse, causal, scale, window, grads);
  } else {
    attention_backward_impl<float>(gout, q, k, v, out, lse, causal, scale, window, grads);
  }
}

}  // namespace lathe::kernels::cpu
