// Fused softmax cross-entropy with ignore_index and label smoothing (Szegedy et al.,
// "Rethinking the Inception Architecture", 2016, sec. 7).
//
// The forward keeps only the per-row log-sum-exp; the backward rebuilds each probability
// as exp(x - lse), so a [N, V] probability tensor never exists (as llm.c's fused
// classifier). With eps the smoothing and t the target of row i:
//   loss_i = (1 - eps) * (lse_i - x_it) + eps * (lse_i - mean_j x_ij)
//   dloss/dx_ij = softmax_ij - (1 - eps) * [j == t] - eps / V
// and the reported loss (and its gradient) is the mean over the rows whose target is not
// ignore_index.
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

using nn_detail::acc_t;
using nn_detail::load;
using nn_detail::store;

namespace {

// targets as int64; a target outside [0, V) that is not ignore_index throws with its row.
std::vector<int64_t> read_targets(const char* op, const Tensor& targets, int64_t V, int64_t ignore_index) {
  Tensor t = targets.contiguous();
  const int64_t n = t.numel();
  std::vector<int64_t> out(static_cast<size_t>(n));
  if (t.dtype() == DType::i64) {
    const int64_t* p = t.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) out[i] = p[i];
  } else if (t.dtype() == DType::i32) {
    const int32_t* p = t.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) out[i] = p[i];
  } else {
    LATHE_FAIL() << op << ": targets must be i64 or i32, got " << dtype_name(t.dtype());
  }
  for (int64_t i = 0; i < n; ++i)
    LATHE_CHECK(out[i] == ignore_index || (out[i] >= 0 && out[i] < V))
        << op << ": target " << out[i] << " in row " << i << " is outside [0, " << V
        << ") and is not ignore_index (" << ignore_index << ")";
  return out;
}

// Row max m of x and s = sum of exp(x - m), the exps going through the buffer e (a plain
// loop vectorizes; then they are summed), each reduction in kParts partials combined in a
// fixed order (kernels/cpu/partials.h).
template <typename T>
__attribute__((always_inline)) inline void row_max_sumexp(const T* x, acc_t<T>* e, int64_t V, acc_t<T>* m_out,
                                                          acc_t<T>* s_out) {
  using A = acc_t<T>;
  const A m = partials::max<A>(V, [x](int64_t j) { return load(x[j]); });
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) e[j] = vmath::exp_of<A>(load(x[j]) - m);
  *m_out = m;
  *s_out = partials::sum<A>(V, [e](int64_t j) { return e[j]; });
}

// o = c * (softmax(x) - uni) over a row whose log-sum-exp is l.
template <typename T>
__attribute__((always_inline)) inline void grad_row(const T* x, T* o, int64_t V, acc_t<T> c, acc_t<T> l,
                                                    acc_t<T> uni) {
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) o[j] = store<T>(c * (vmath::exp_of<acc_t<T>>(load(x[j]) - l) - uni));
}

// The f32 rows at the CPU's best vector width (kernels/cpu/isa.h; same bits at every level).
LATHE_ISA_ROW(row_max_sumexp_f32, (const float* x, float* e, int64_t V, float* m, float* s), (x, e, V, m, s),
              row_max_sumexp<float>)
LATHE_ISA_ROW(grad_row_f32, (const float* x, float* o, int64_t V, float c, float l, float uni),
              (x, o, V, c, l, uni), grad_row<float>)

template <typename T>
void row_max_sumexp_best(const T* x, acc_t<T>* e, int64_t V, acc_t<T>* m, acc_t<T>* s) {
  if constexpr (std::is_same_v<T, float>) return row_max_sumexp_f32(x, e, V, m, s);
  row_max_sumexp<T>(x, e, V, m, s);
}
template <typename T>
void grad_row_best(const T* x, T* o, int64_t V, acc_t<T> c, acc_t<T> l, acc_t<T> uni) {
  if constexpr (std::is_same_v<T, float>) return grad_row_f32(x, o, V, c, l, uni);
  grad_row<T>(x, o, V, c, l, uni);
}

template <typename T>
void cross_entropy_kernel(const Tensor& logits, const std::vector<int64_t>& tg, int64_t ignore_index, double eps,
                          const CrossEntropyOut& out) {
  using A = acc_t<T>;
  const int64_t N = logits.size(0), V = logits.size(1);
  const T* xp = logits.data<T>();
  A* lp = out.lse.data<A>();
  std::vector<double> row_loss(static_cast<size_t>(N), 0.0);
#pragma omp parallel if (N * V > 16384)
  {
    // The exps of one row go through a buffer: a plain loop vectorizes (vmath::exp), then
    // they are summed.
    std::vector<A> e(static_cast<size_t>(V));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* x = xp + i * V;
      // Row max, sum of exp(x - m) and sum of (x - m) (for the smoothing term), each in
      // kParts partials combined in a fixed order (kernels/cpu/partials.h).
      A m, s;
      row_max_sumexp_best<T>(x, e.data(), V, &m, &s);
      // Without smoothing the term is multiplied by 0: skip the pass (and a -inf logit then
      // cannot turn 0 * inf into a NaN loss).
      const double sd =
          eps != 0.0 ? partials::sum<double>(V, [x, m](int64_t j) { return static_cast<double>(load(x[j]) - m); })
                     : 0.0;
      const A log_s = std::log(s);
      lp[i] = m + log_s;
      if (tg[i] == ignore_index) continue;
      // Both terms relative to the row max (lse - x = (m - x) + log s), so the loss keeps its
      // precision when the logits are large and lse itself is rounded.
      const double nll = static_cast<double>(m - load(x[tg[i]])) + static_cast<double>(log_s);
      const double smooth = static_cast<double>(log_s) - sd / static_cast<double>(V);
      row_loss[i] = (1.0 - eps) * nll + eps * smooth;
    }
  }
  // Rows summed in order so the loss is independent of the thread count.
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (tg[i] == ignore_index) continue;
    total += row_loss[i];
    ++count;
  }
  // No counted rows: the loss is defined as 0 (rather than 0/0), with a zero gradient.
  out.loss.data<A>()[0] = static_cast<A>(count > 0 ? total / static_cast<double>(count) : 0.0);
  out.count.data<int64_t>()[0] = count;
}

template <typename T>
void cross_entropy_backward_kernel(const Tensor& logits, const std::vector<int64_t>& tg, const Tensor& lse,
                                   double grad_loss, int64_t count, int64_t ignore_index, double eps,
                                   const Tensor& out) {
  using A = acc_t<T>;
  const int64_t N = logits.size(0), V = logits.size(1);
  const T* xp = logits.data<T>();
  const A* lp = lse.data<A>();
  T* op = out.data<T>();
  const A c = count > 0 ? static_cast<A>(grad_loss / static_cast<double>(count)) : A(0);
  const A hit = static_cast<A>(1.0 - eps), uni = static_cast<A>(eps / static_cast<double>(V));
#pragma omp parallel for schedule(static) if (N * V > 16384)
  for (int64_t i = 0; i < N; ++i) {
    const T* x = xp + i * V;
    T* o = op + i * V;
    if (tg[i] == ignore_index || c == A(0)) {
      std::fill(o, o + V, store<T>(A(0)));
      continue;
    }
    const A l = lp[i];
    grad_row_best<T>(x, o, V, c, l, uni);
    o[tg[i]] = store<T>(c * (vmath::exp_of<A>(load(x[tg[i]]) - l) - uni - hit));
  }
}

}  // namespace

void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                   const CrossEntropyOut& out) {
  Tensor xc = logits.contiguous();
  const auto tg = read_targets("cross_entropy", targets, logits.size(1), ignore_index);
  LATHE_NN_DISPATCH_FLOAT("cross_entropy", logits.dtype(), T,
                          cross_entropy_kernel<T>(xc, tg, ignore_index, smoothing, out));
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss,
                            const Tensor& count_t, int64_t ignore_index, double smoothing, const Tensor& out) {
  Tensor xc = logits.contiguous(), lc = lse.contiguous();
  const double grad = grad_loss.item();  // on the host already: no sync
  const int64_t count = count_t.to(DType::i64).to_vector<int64_t>()[0];
  const auto tg = read_targets("cross_entropy_backward", targets, logits.size(1), ignore_index);
  LATHE_NN_DISPATCH_FLOAT(
      "cross_entropy_backward", logits.dtype(), T,
      cross_entropy_backward_kernel<T>(xc, tg, lc, grad, count, ignore_index, smoothing, out));
}

}  // namespace lathe::kernels::cpu
