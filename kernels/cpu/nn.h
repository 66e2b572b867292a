// CPU kernels for the softmax family, layer/RMS norms, embeddings, the fused
// cross-entropy, rotary embeddings and attention (kernels/cpu/{softmax,norm,embedding,
// cross_entropy,attention}.cpp). CpuBackend (cpu_backend.cpp) forwards to these.
//
// Contract (as kernels/backend.h): outputs are allocated, contiguous and of the shapes
// kernels/ops_nn.cpp computes; inputs may be strided (each kernel takes a contiguous
// copy where it needs one). f64 computes in double, every other floating dtype in float.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels::cpu {

// x: [..., n, ...] softmax (or log-softmax) along `axis` (already normalized).
void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& out);
// softmax:     gx = y * (gy - sum(gy * y));  log_softmax: gx = gy - exp(y) * sum(gy)
void softmax_backward(const Tensor& y, const Tensor& gy, int64_t axis, bool log, const Tensor& out);

// Over the last dim of x; w/b may be undefined. out.mean/out.rstd: [rows] f32 (f64 for f64 x).
void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const NormOut& out);
void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& rstd, const NormGrads& out);
void rms_norm(const Tensor& x, const Tensor& w, double eps, const NormOut& out);
void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                       const NormGrads& out);

// w [V, C], ids i64/i32 -> out [*ids, C]; ids out of [0, V) throw.
void embedding(const Tensor& w, const Tensor& ids, const Tensor& out);
// out [num_rows, C] = scatter-add of gy rows by id (deterministic: fixed summation order).
void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out);

// logits [N, V], targets [N]; writes out.loss (0-d) and out.lse ([N]).
void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double smoothing,
                   const CrossEntropyOut& out);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& grad_loss,
                            const Tensor& count, int64_t ignore_index, double smoothing, const Tensor& out);

// x [B, H, T, D], cos/sin [T, D/2]; rotate_half pairs (i, i + D/2).
void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out);
// q [B, H, T, D], k/v [B, Hkv, S, D] -> out.out [B, H, T, D], out.lse [B, H, T].
// window > 0 (causal only): query t sees keys s with lim - window <= s < lim, lim the causal limit.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t window,
               const AttentionOut& out);
void attention_backward(const Tensor& gout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, int64_t window, const AttentionGrads& grads);

// ---- helpers shared by the files above ------------------------------------------------
namespace nn_detail {

// The type a storage type computes in: double for double, float for everything else.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
inline acc_t<T> load(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return to_f32(v);
  }
}

template <typename T, typename A>
inline T store(A v) {
  if constexpr (std::is_same_v<T, double>) {
    return static_cast<double>(v);
  } else {
    return from_f32<T>(static_cast<float>(v));
  }
}

// The dtype that `dt` computes in (f64 -> f64, others -> f32).
inline DType acc_dtype(DType dt) { return dt == DType::f64 ? DType::f64 : DType::f32; }

}  // namespace nn_detail

// Runs body with T bound to the floating storage type of dt; other dtypes throw naming `op`.
#define LATHE_NN_DISPATCH_FLOAT(op, dt, T, ...)                                                      \
  switch (dt) {                                                                                      \
    case ::lathe::DType::f64: { using T = double; __VA_ARGS__; break; }                              \
    case ::lathe::DType::f32: { using T = float; __VA_ARGS__; break; }                               \
    case ::lathe::DType::bf16: { using T = ::lathe::bf16_t; __VA_ARGS__; break; }                    \
    case ::lathe::DType::f16: { using T = ::lathe::f16_t; __VA_ARGS__; break; }                      \
    default:                                                                                         \
      LATHE_FAIL() << (op) << ": expected a floating dtype (f64, f32, bf16, f16), got " << ::lathe::dtype_name(dt); \
  }

}  // namespace lathe::kernels::cpu
