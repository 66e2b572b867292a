// Differentiable ops: each computes its forward with lathe::kernels and, when grad mode
// is on and an input requires grad, records a node whose backward is written with these
// same ops or with the fused backward kernels of kernels/ops.h.
//
// Suggested alias in model code:   namespace ag = lathe::autograd;   ag::matmul(x, w)
//
// Conventions follow kernels/ops.h: numpy broadcasting for binary ops, negative axes
// count from the end, integer tensors (ids, targets, indices) are never differentiated.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::autograd {

// ---- elementwise ---------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& x, double s);  // x + s
Tensor mul(const Tensor& x, double s);  // x * s
Tensor affine(const Tensor& x, double scale, double shift);  // x * scale + shift
Tensor neg(const Tensor& x);
// Any kernels::UnaryOp (sign has a zero gradient).
Tensor unary(kernels::UnaryOp op, const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x, bool tanh_approx = true);
Tensor silu(const Tensor& x);
// silu(gate) * up as one op (SwiGLU's gate; kernels::swiglu): gate and up of one shape.
// Backward keeps gate and up only, not silu's output.
Tensor swiglu(const Tensor& gate, const Tensor& up);
Tensor abs(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
// Ties split the gradient evenly between a and b.
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
// cond (non-zero = true, not differentiated) ? a : b, broadcast together.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// Gradient passes where lo <= x <= hi.
Tensor clamp(const Tensor& x, double lo, double hi);

// ---- reductions (axes empty = all) ---------------------------------------------------------
Tensor sum(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
// Values of the max along one axis; the gradient goes to the arg-max element.
Tensor max(const Tensor& x, int64_t axis, bool keepdim = false);
Tensor var(const Tensor& x, const std::vector<int64_t>& axes = {}, int64_t correction = 1, bool keepdim = false);
// L2 norm of all elements (0-d); the gradient at x = 0 is taken as 0.
Tensor norm(const Tensor& x);
// Sums a broadcast tensor down to `shape` (gradient: expand back).
Tensor sum_to_shape(const Tensor& x, const Shape& shape);

// ---- linear algebra -----------------------------------------------------------------------
// op(a) @ op(b) with batch broadcasting (see kernels::matmul).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// act(x [..., in] @ w^T + b) with w [out, in], b [out] (b may be undefined): one node over
// kernels::linear (cuBLASLt epilogues on CUDA; on the CPU bit-identical to matmul, add and
// gelu recorded separately). The pre-activation is kept for the backward only with an act.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor(),
              kernels::Activation act = kernels::Activation::none);

// ---- neural-network ops ----------------------------------------------------------------------
Tensor softmax(const Tensor& x, int64_t axis = -1);
Tensor log_softmax(const Tensor& x, int64_t axis = -1);
// Over the last dim; weight/bias [C] may be undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);
// weight [V, C], ids any shape (i64/i32) -> [*ids.shape, C]; gradient to weight only.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// logits [N, V], targets [N] -> 0-d mean loss over rows whose target != ignore_index.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                     double label_smoothing = 0.0);
// x [B, H, T, D] rotated by cos/sin [T, D/2] (not differentiated).
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin);
// q [B, H, T, D], k/v [B, Hkv, S, D] (grouped-query when Hkv < H) -> [B, H, T, D].
// window > 0: sliding-window causal attention (kernels::attention says which keys).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window = 0);
// Identity when !training or p == 0; otherwise inverted dropout drawing from gen.
Tensor dropout(const Tensor& x, double p, Generator& gen, bool training);

// ---- views (share storage with x) -----------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor view(const Tensor& x, const Shape& shape);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
// Pieces of the given sizes along axis (views); they may be used independently.
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis);

// ---- copies ------------------------------------------------------------------------------
Tensor contiguous(const Tensor& x);
Tensor cast(const Tensor& x, DType dt);  // gradient cast back to x's dtype
Tensor concat(const std::vector<Tensor>& xs, int64_t axis);
Tensor stack(const std::vector<Tensor>& xs, int64_t axis);
// out has index's shape (see kernels::gather); gradient to x by scatter-add.
Tensor gather(const Tensor& x, int64_t axis, const Tensor& index);
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);

}  // namespace lathe::autograd
