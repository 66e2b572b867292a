// The fused linear and multi-tensor AdamW on the CPU. Linear is the matmul, then the bias
// add, then the activation, each rounding to the output dtype as the separate ops do:
// models that switch to the fused op keep their CPU results bit for bit
// (tests/kernels/test_linear_fused.cpp checks it). For f32/f64 with bias and GELU on
// contiguous outputs, bias and GELU are one pass over the product (the epilogue) instead of
// two (an add writing the pre-activation, a GELU reading it back).
#include "kernels/cpu/fused.h"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/optim.h"
#include "kernels/cpu/vmath.h"

namespace lathe::kernels::cpu {

namespace {

// One row of the bias + GELU epilogue: z = p + bias, pre = z when pre is given, o = gelu(z).
template <typename T>
__attribute__((always_inline)) inline void bias_gelu_row(const T* p, const T* bias, T* z, T* o, int64_t n) {
  if (z) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T v = p[j] + bias[j];
      z[j] = v;
      o[j] = vmath::gelu_tanh<T>(v);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) o[j] = vmath::gelu_tanh<T>(p[j] + bias[j]);
  }
}

// One row segment of GELU's backward: o = gelu'(p) * d, and a += o in double when a is given.
template <typename T>
__attribute__((always_inline)) inline void gelu_backward_row(const T* p, const T* d, T* o, double* a, int64_t n) {
  if (a) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const T v = vmath::gelu_tanh_backward<T>(p[c], d[c]);
      o[c] = v;
      a[c] += static_cast<double>(v);
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) o[c] = vmath::gelu_tanh_backward<T>(p[c], d[c]);
  }
}

// Both loops are bound by GELU's arithmetic (an exp and a division per element): their f32
// rows run at the CPU's best vector width (kernels/cpu/isa.h), with the same bits as the
// baseline SSE2 code (LinearFused tests compare every level with the unfused ops).
LATHE_ISA_ROW(bias_gelu_row_f32, (const float* p, const float* bias, float* z, float* o, int64_t n),
              (p, bias, z, o, n), bias_gelu_row<float>)
LATHE_ISA_ROW(gelu_backward_row_f32, (const float* p, const float* d, float* o, double* a, int64_t n),
              (p, d, o, a, n), gelu_backward_row<float>)

template <typename T>
void bias_gelu_row_best(const T* p, const T* bias, T* z, T* o, int64_t n) {
  if constexpr (std::is_same_v<T, float>) return bias_gelu_row_f32(p, bias, z, o, n);
  bias_gelu_row<T>(p, bias, z, o, n);
}
template <typename T>
void gelu_backward_row_best(const T* p, const T* d, T* o, double* a, int64_t n) {
  if constexpr (std::is_same_v<T, float>) return gelu_backward_row_f32(p, d, o, a, n);
  gelu_backward_row<T>(p, d, o, a, n);
}

// z = prod + bias (row-broadcast), pre = z when pre is given, out = gelu_tanh(z); prod may be
// pre or out itself (each element is read before it is written). Rows in parallel: every
// element's result is independent of the split.
template <typename T>
void bias_gelu_epilogue(const T* prod, const T* bias, T* pre, T* out, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) if (rows * n > detail::kParallelGrain)
  for (int64_t r = 0; r < rows; ++r)
    bias_gelu_row_best<T>(prod + r * n, bias, pre ? pre + r * n : nullptr, out + r * n, n);
}

// g = dy * gelu_tanh'(pre) and, when db is given, db[c] = sum over rows of g[r, c]: one pass
// instead of the unary backward's and then sum_to_shape's over g. The sum is reduce.cpp's
// column-wise one (double accumulator, rows in order, rounded once), so db has the same
// bits as the two ops. Each thread owns a contiguous range of columns and walks every row
// (long unit-stride runs for the prefetcher), so the order does not depend on the thread
// count either.
template <typename T>
void gelu_backward_bias_grad(const T* pre, const T* dy, T* g, T* db, int64_t rows, int64_t n) {
#pragma omp parallel if (rows * n > detail::kParallelGrain && n >= 32)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = ((n + nt - 1) / nt + 15) / 16 * 16;
    const int64_t c0 = std::min(n, t * per), c1 = std::min(n, c0 + per), nc = c1 - c0;
    if (nc > 0) {
      std::vector<double> acc(db ? static_cast<size_t>(nc) : 0, 0.0);
      double* a = db ? acc.data() : nullptr;
      for (int64_t r = 0; r < rows; ++r)
        gelu_backward_row_best<T>(pre + r * n + c0, dy + r * n + c0, g + r * n + c0, a, nc);
      if (db)
        for (int64_t c = 0; c < nc; ++c) db[c0 + c] = static_cast<T>(acc[c]);
    }
  }
}

template <typename T>
bool fused_epilogue_applies(const Tensor& bias, Activation act, const Tensor& out, const Tensor& pre) {
  return out.dtype() == dtype_of<T>::value && bias.defined() && act == Activation::gelu_tanh && out.is_contiguous() &&
         bias.is_contiguous() && (!pre.defined() || pre.is_contiguous());
}

}  // namespace

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
            const Tensor& pre) {
  // w broadcast over x's batch dims, exactly as the op layer's matmul hands it to the kernel.
  Shape ws(x.shape().begin(), x.shape().end() - 2);
  ws.push_back(w.size(0));
  ws.push_back(w.size(1));
  const bool has_act = act != Activation::none;
  const bool epi32 = fused_epilogue_applies<float>(bias, act, out, pre);
  if (epi32 || fused_epilogue_applies<double>(bias, act, out, pre)) {
    const Tensor& prod = pre.defined() ? pre : out;
    matmul(x, w.expand(ws), false, true, prod);
    const int64_t n = out.size(-1), rows = out.numel() / n;
    if (epi32)
      bias_gelu_epilogue<float>(prod.data<float>(), bias.data<float>(), pre.defined() ? pre.data<float>() : nullptr,
                                out.data<float>(), rows, n);
    else
      bias_gelu_epilogue<double>(prod.data<double>(), bias.data<double>(),
                                 pre.defined() ? pre.data<double>() : nullptr, out.data<double>(), rows, n);
    return;
  }
  // Where x @ w^T lands: out when nothing follows, pre when it is the pre-activation, else a
  // temporary (the bias add reads one tensor and writes another, as binary() does).
  Tensor prod = !bias.defined() && !has_act ? out
                : !bias.defined() && pre.defined() ? pre
                                                   : Tensor::empty(out.shape(), out.dtype(), out.device());
  matmul(x, w.expand(ws), false, true, prod);
  Tensor z = prod;  // the pre-activation
  if (bias.defined()) {
    z = !has_act ? out : (pre.defined() ? pre : Tensor::empty(out.shape(), out.dtype(), out.device()));
    binary(BinaryOp::add, prod, bias.expand(out.shape()), z);
  }
  switch (act) {
    case Activation::none: break;
    case Activation::gelu_tanh: unary(UnaryOp::gelu_tanh, z, out); break;
  }
}

void linear_act_backward(Activation act, const Tensor& pre, const Tensor& dy, const Tensor& g, const Tensor& db) {
  LATHE_CHECK(act == Activation::gelu_tanh) << "linear_act_backward: no fused rule for " << activation_name(act);
  const int64_t n = g.size(-1), rows = n > 0 ? g.numel() / n : 0;
  const bool flat = pre.is_contiguous() && dy.is_contiguous() && g.is_contiguous();
  if (flat && g.dtype() == DType::f32) {
    gelu_backward_bias_grad<float>(pre.data<float>(), dy.data<float>(), g.data<float>(),
                                   db.defined() ? db.data<float>() : nullptr, rows, n);
    return;
  }
  if (flat && g.dtype() == DType::f64) {
    gelu_backward_bias_grad<double>(pre.data<double>(), dy.data<double>(), g.data<double>(),
                                    db.defined() ? db.data<double>() : nullptr, rows, n);
    return;
  }
  // Other dtypes and layouts: the two ops.
  unary_backward(UnaryOp::gelu_tanh, pre, Tensor(), dy, g);
  if (db.defined()) {
    std::vector<int64_t> axes(static_cast<size_t>(g.dim() - 1));
    Shape keep(static_cast<size_t>(g.dim()), 1);
    keep.back() = n;
    for (size_t i = 0; i < axes.size(); ++i) axes[i] = static_cast<int64_t>(i);
    reduce(ReduceOp::sum, g, axes, 0, db.view(keep));
  }
}

void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
  for (size_t k = 0; k < params.size(); ++k) {
    if (params[k].numel() == 0) continue;
    // A bf16 gradient widens to f32 exactly, so the update equals adamw_step on grad.to(f32).
    const Tensor g = grads[k].dtype() == DType::f32 ? grads[k] : grads[k].to(DType::f32);
    cpu::adamw_step(params[k], g, ms[k], vs[k], lr, beta1, beta2, eps, weight_decay, step, variant);
  }
}

}  // namespace lathe::kernels::cpu
