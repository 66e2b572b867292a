// The compute ops of lathe, declared once: each function checks its inputs (op name,
// shapes, dtypes and devices in every message), infers the output shape, allocates the
// output and calls the kernel of the inputs' device through the Backend table
// (kernels/backend.h). Nothing here records gradients: lathe::autograd wraps these.
//
// Conventions
// - Inputs may be strided (transposed, sliced, broadcast views); outputs are contiguous.
// - f64 and f32 compute in their own precision; bf16/f16 load to f32, compute, round back.
// - Integer tensors (ids, targets, indices) are i64 or i32.
// - `axis`/`axes` may be negative.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/device.h"  // cuda_device_count and friends

namespace lathe::kernels {

// ---- elementwise -------------------------------------------------------------------
enum class UnaryOp : uint8_t {
  neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, gelu_tanh, gelu_erf, silu, abs, sign,
  square, reciprocal, sin, cos
};
const char* unary_name(UnaryOp op);
Tensor unary(UnaryOp op, const Tensor& x);
// d/dx of the unary op applied to x, times gy (fused backward for activations).
// y is the forward output where the rule is cheaper with it (may be undefined).
Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy);
Tensor pow_scalar(const Tensor& x, double exponent);            // x ** p
Tensor affine(const Tensor& x, double scale, double shift);    // x * scale + shift
Tensor clamp(const Tensor& x, double lo, double hi);

enum class BinaryOp : uint8_t { add, sub, mul, div, maximum, minimum, pow, eq, ne, lt, le, gt, ge };
const char* binary_name(BinaryOp op);
// numpy broadcasting; a and b must share dtype and device. Comparisons return u8 (0/1).
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
// cond (u8 or any dtype, non-zero = true) ? a : b, all broadcast together.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// SwiGLU's gate (Shazeer, "GLU Variants Improve Transformer", 2020): silu(gate) * up in one
// pass, and its backward in one pass: dgate = gy * up * silu'(gate), dup = gy * silu(gate).
// gate, up (and gy) share shape, dtype and device; any layout. The numbers are those of
// unary(silu) followed by binary(mul) (bit for bit in f32 and f64 on the CPU; bf16/f16 skip
// the rounding of silu's output), and backward needs only gate and up, not silu's output.
Tensor swiglu(const Tensor& gate, const Tensor& up);
struct SwigluGrads {
  Tensor dgate, dup;
};
SwigluGrads swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up);

// In place: y += alpha * x (x broadcast to y's shape). Used for gradient accumulation.
void add_(const Tensor& y, const Tensor& x, double alpha = 1.0);
// In place: y *= s.
void scale_(const Tensor& y, double s);

// ---- reductions --------------------------------------------------------------------
enum class ReduceOp : uint8_t { sum, mean, max, min, argmax, var, norm };
// Reduces over `axes` (empty = all axes). argmax takes exactly one axis and returns i64.
// var uses `correction` (1 = unbiased, 0 = population); norm is the L2 norm.
Tensor reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, bool keepdim = false,
              int64_t correction = 1);
// Sums a broadcast gradient back down to `shape` (the inverse of broadcasting).
Tensor sum_to_shape(const Tensor& x, const Shape& shape);

// ---- linear algebra ----------------------------------------------------------------
// a: [..., M, K] (or [..., K, M] with trans_a), b: [..., K, N] (or [..., N, K] with trans_b);
// batch dims broadcast; a 2-D b is shared by every batch. Output [..., M, N].
// BLAS is called on strided views without copying where their layout allows.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// out += alpha * op(a) @ op(b), in place (BLAS beta = 1): a, b as in matmul; out has matmul's
// output shape, dtype and device and is contiguous. A sum of products then lands in one
// buffer (a LoRA branch on its base output, the base and adapter input gradients) without a
// second [M, N] tensor and an add over it.
void matmul_acc_(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false,
                 double alpha = 1.0);

// Thin singular value decomposition of a 2-D f32/f64 matrix a [m, n]:
// a = u diag(s) vt with u [m, k], s [k] descending and >= 0, vt [k, n], k = min(m, n).
// LAPACK gesdd on the CPU, cuSOLVER gesvd on CUDA (both host-synchronising: GaLore calls it
// once every T steps). Signs of singular vector pairs are implementation-defined. A
// non-finite input or a run that does not converge is an error naming the shape.
struct SvdOut {
  Tensor u, s, vt;
};
SvdOut svd(const Tensor& a);
// Orthonormal basis of the column space of a [m, k] (m >= k, f32/f64): the Q factor
// [m, k] of the thin Householder QR (LAPACK geqrf + orgqr, cuSOLVER on CUDA).
Tensor qr_q(const Tensor& a);

// The activation a fused linear applies after its bias (gelu_tanh: GPT-2's MLP).
enum class Activation : uint8_t { none, gelu_tanh };
const char* activation_name(Activation act);
// The forward of a Linear layer: y [..., N] = act(x [..., K] @ w^T + bias) with w [N, K],
// bias [N] or undefined; x may be 1-D ([K] -> [N]). When pre_activation_out is given and act
// is not none, it receives x @ w^T + bias (what the backward needs); otherwise it is left
// alone. On the CPU this is matmul, add and unary with the same roundings as those three
// ops; on CUDA one cuBLASLt call with a bias / GELU epilogue (f32 accumulation; f64 and
// shapes cuBLASLt declines take matmul + separate kernels).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act = Activation::none,
              Tensor* pre_activation_out = nullptr);
struct LinearGrads {
  Tensor dx, dw, db;  // db undefined without a bias
};
// The backward of linear: with dy' = dy * act'(pre) (pre: the pre-activation, needed only
// for an activation), dx = dy' @ w, dw = dy'^T @ x (batch dims folded into rows),
// db = sum of dy' over all but the last dim. Only the grads asked for are computed.
LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& pre, Activation act,
                            bool need_dx, bool need_dw, bool need_db);

// ---- softmax family ----------------------------------------------------------------
Tensor softmax(const Tensor& x, int64_t axis = -1);
Tensor log_softmax(const Tensor& x, int64_t axis = -1);
// gx = y * (gy - sum(gy * y))  with y = softmax(x)
Tensor softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis = -1);
// gx = gy - exp(y) * sum(gy)   with y = log_softmax(x)
Tensor log_softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis = -1);

// ---- normalization (over the last dim) ------------------------------------------------
struct NormOut {
  Tensor y;     // same shape as x
  Tensor mean;  // [rows] f32 (layer norm only; undefined for RMS norm)
  Tensor rstd;  // [rows] f32, 1/sqrt(var + eps) or 1/sqrt(mean(x^2) + eps)
};
struct NormGrads {
  Tensor dx, dweight, dbias;  // dweight/dbias undefined when the weight/bias was undefined or not asked for
};
// weight and bias may be undefined (no affine transform). The backward computes dbias only
// with has_bias and dweight only with need_dweight (a frozen norm: dx alone, no column sums).
NormOut layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
NormGrads layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                              const Tensor& rstd, bool has_bias, bool need_dweight = true);
NormOut rms_norm(const Tensor& x, const Tensor& weight, double eps);
NormGrads rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                            bool need_dweight = true);

// ---- embeddings and indexing ------------------------------------------------------------
// weight [V, C], ids (i64/i32) of any shape -> [*ids.shape, C]. Out-of-range ids are an error.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// Scatter-add of gy [*ids.shape, C] into a [num_rows, C] gradient.
Tensor embedding_backward(const Tensor& gy, const Tensor& ids, int64_t num_rows);
// out[i][j][k] = x[index[i][j][k]][j][k] (axis 0), index has x's rank, out has index's shape.
Tensor gather(const Tensor& x, int64_t axis, const Tensor& index);
// out = x; out[index[i][j]][j] += src[i][j] (axis 0), index and src share a shape.
Tensor scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src);
// Picks slices of x along axis by a 1-D index.
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);
// out = x; out.select(axis, index[i]) += src.select(axis, i)  (backward of index_select)
Tensor index_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src);
// SpIEL's sparse weight gradient (peft/spiel.h): out[n] = sum_t x[t, cols[n]] * dy[t, rows[n]]
// for x [T, in] and dy [T, out] of one float dtype and i64 rows, cols [k] -> [k] in x's dtype
// (accumulated in f32, f64 for f64): the entries (rows, cols) of dy^T x without the dense
// [out, in] product. Indices are range-checked on the CPU (see index_add for CUDA).
Tensor sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols);

// ---- shape ops that copy ------------------------------------------------------------
Tensor concat(const std::vector<Tensor>& xs, int64_t axis);
Tensor stack(const std::vector<Tensor>& xs, int64_t axis);
// Views: pieces of the given sizes along axis (sizes sum to x.size(axis)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis);

// ---- losses -----------------------------------------------------------------------------
struct CrossEntropyOut {
  Tensor loss;   // 0-d, mean over the rows whose target != ignore_index (f32, or f64 for f64)
  Tensor lse;    // [N] log-sum-exp of each row (f32 or f64), kept for the backward
  Tensor count;  // 0-d i64 on the logits' device: rows that count (computed by the kernel)
};
// logits [N, V], targets [N] (i64/i32). Label smoothing eps mixes the one-hot target with
// the uniform distribution: loss_i = (1-eps) * (lse - x_t) + eps * (lse - mean_j x_j).
// Probabilities are never materialized: the backward recomputes them from lse.
CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                              double label_smoothing = 0.0);
// d loss / d logits scaled by grad_loss (the upstream gradient of the scalar loss, a 0-d
// tensor on the logits' device) and divided by count (CrossEntropyOut::count). Both stay on
// the device: the backward never syncs with the host.
// Targets outside [0, V) that are not ignore_index: an error on the CPU; on CUDA the
// row's loss is NaN (checking would need a host sync), so the loss shows it.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              const Tensor& grad_loss, const Tensor& count, int64_t ignore_index = -100,
                              double label_smoothing = 0.0);
// Conveniences for tests and host code.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double grad_loss,
                              const Tensor& count, int64_t ignore_index = -100, double label_smoothing = 0.0);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, double grad_loss,
                              int64_t count, int64_t ignore_index = -100, double label_smoothing = 0.0);

// ---- attention pieces --------------------------------------------------------------------
// Rotary position embedding on x [B, H, T, D] with the Hugging Face "rotate_half" layout:
// pairs are (i, i + D/2). cos, sin: [T, D/2]. inverse=true rotates by -theta (the backward).
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse = false);
// cos/sin tables [T, D/2] for positions start..start+T-1, theta_i = base^(-2i/D).
void rope_tables(int64_t T, int64_t D, double base, int64_t start, DType dt, Tensor& cos, Tensor& sin);
// The same tables from precomputed inverse frequencies (one per pair, D/2 of them), for
// rescaled RoPE (e.g. Llama 3's): angle(t, i) = (start + t) * inv_freq[i], in double.
void rope_tables(int64_t T, const std::vector<double>& inv_freq, int64_t start, DType dt, Tensor& cos, Tensor& sin);

struct AttentionOut {
  Tensor out;  // [B, H, T, D]
  Tensor lse;  // [B, H, T] f32/f64 log-sum-exp of the scaled scores, for the backward
};
struct AttentionGrads {
  Tensor dq, dk, dv;
};
// Scaled dot-product attention. q [B, H, T, D], k and v [B, Hkv, S, D] with H % Hkv == 0
// (grouped-query: head h reads kv head h / (H / Hkv)). causal masks s > t (+ S - T offset).
// window > 0 (sliding-window attention, Mistral; needs causal) also masks the keys more than
// window - 1 positions before the query: query t sees key s iff
//   t + (S - T) - window < s <= t + (S - T),
// i.e. itself and the window - 1 keys before it (transformers' sliding_window rule).
AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                       int64_t window = 0);
AttentionGrads attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, bool causal, double scale,
                                  int64_t window = 0);

// ---- randomness ---------------------------------------------------------------------------
struct DropoutOut {
  Tensor y;     // x * mask / (1 - p)
  Tensor mask;  // u8, 1 = kept
};
// Element i is kept when uniform(gen stream at offset + i) >= p; advances gen by numel.
DropoutOut dropout(const Tensor& x, double p, Generator& gen);

// ---- optimizer step ------------------------------------------------------------------------
// How AdamW writes eps, the bias correction and weight decay (configs: adamw_variant).
//  torch (torch.optim.AdamW): p -= lr (m/bc1 / (sqrt(v/bc2) + eps) + wd p), decay on the old p.
//  hf (transformers' AdamW, used inside GaLore and Fira): p1 = p - lr sqrt(bc2)/bc1 m/(sqrt(v) + eps),
//     then p = p1 - lr wd p1 (decay after the update). Equals torch with eps_eff = eps/sqrt(bc2).
enum class AdamVariant : uint8_t { torch, hf };
const char* adam_variant_name(AdamVariant v);

// Fused AdamW (Loshchilov & Hutter) in place on f32 param/m/v with an f32 grad:
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; then the parameter update of `variant`, with
// bc1 = 1 - b1^step, bc2 = 1 - b2^step.
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant = AdamVariant::torch);
// adamw_step over lists of tensors sharing lr, betas, eps, weight decay and step: on CUDA a
// few multi-tensor launches (kernels/cuda/multi_tensor.h) instead of one per tensor; on the
// CPU a loop of adamw_step. Bit-identical to calling adamw_step on each. params, ms, vs:
// contiguous f32 on one device; grads f32 or bf16 (widened exactly), any layout.
void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step,
                      AdamVariant variant = AdamVariant::torch);

// ---- 8-bit blockwise states (maps and layout: kernels/blockwise8.h) ---------------------------
// x (f32, contiguous, any shape) -> codes (u8, x's numel, contiguous) and absmax (f32
// [ceil(numel / block)]): per block absmax = max |x|, code = nearest entry of the signed or
// unsigned map to x / absmax (ties to the higher entry), signed codes sign-corrected.
void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed);
// The inverse: f32 of codes' shape, map[code] * absmax[block].
Tensor dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed);
// AdamW with 8-bit moments (bitsandbytes' blockwise Adam kernel, one pass per block): for each
// element, dequantise m (signed map) and v (unsigned map); if g is finite, update them as
// adamw_step does and the parameter from the unquantised f32 m and v by `variant`; if g is
// NaN or Inf, m = v = 0 and the parameter is left alone. Then the block's new absmax values
// and codes are written in place. param f32 contiguous; grad f32; codes u8 with param's numel;
// absmax f32 [ceil(numel / block)].
void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                     const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, AdamVariant variant, int64_t block);

// SGD-SaI's step (optim/sgd_sai.h) in place: buf (f32, param's shape, or undefined without
// momentum) = first ? g : momentum buf + (1 - momentum) g; p = p (1 - lr wd) - lr scale buf
// (buf replaced by g without momentum). scale: a 0-d f32 tensor on param's device (the
// tensor's g-SNR, read there: no host sync).
void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                  double momentum, double weight_decay, bool first);

}  // namespace lathe::kernels
