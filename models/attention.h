// Causal self-attention (RoPE optional, grouped-query heads) and its key/value cache for
// incremental decoding.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "autograd/module.h"
#include "core/tensor.h"
#include "models/linear.h"

namespace lathe::models {

// Keys and values of one attention layer for the positions decoded so far. k and v are
// [B, Hkv, capacity, D]; positions 0..length-1 hold data. Storage is allocated at the first
// append (to `reserve` positions, or what the append needs) and doubles when full, so a
// caller that knows the final length allocates once. Inference only: the appended tensors
// are copied in and carry no autograd history.
struct KVCache {
  explicit KVCache(int64_t reserve = 0) : reserve(reserve) {}
  Tensor k, v;
  int64_t length = 0;
  int64_t reserve = 0;

  int64_t capacity() const { return k.defined() ? k.size(2) : 0; }
  // Forgets the positions (keeps the storage).
  void reset() { length = 0; }
  // Writes k_new, v_new [B, Hkv, T, D] at positions length..length+T-1, advances length and
  // returns views of all positions 0..length-1 (after the append) in `k_all`, `v_all`.
  void append(const Tensor& k_new, const Tensor& v_new, Tensor& k_all, Tensor& v_all);
};

// Causal self-attention over x [B, T, C] with n_head query heads and n_kv_head key/value
// heads of head_dim each; these are the heads this module holds (all of them, or a
// tensor-parallel shard's), given explicitly rather than derived from C. With rope
// (cos/sin [T, D/2] defined, rows for the positions of x) queries and keys are rotated
// (Llama); n_kv_head < n_head shares each key/value head among n_head / n_kv_head query
// heads (GQA). q/k/v carry a bias when `qkv_bias`, o_proj when `o_bias`. With `window` > 0
// (sliding-window attention, Mistral) position i attends only to positions
// i - window < j <= i; 0 attends to every earlier position.
class Attention : public autograd::Module {
 public:
  Attention(int64_t d_model, int64_t n_head, int64_t n_kv_head, int64_t head_dim, bool qkv_bias, bool o_bias);
  // The whole layer: head_dim = d_model / n_head; q/k/v biased when `bias` or `qkv_bias`
  // (Qwen2: q/k/v biased, o_proj not), o_proj when `bias`.
  Attention(int64_t d_model, int64_t n_head, int64_t n_kv_head, bool bias, bool qkv_bias = false);
  // With a cache, x holds the positions cache->length.. (cos/sin are their rows); its keys
  // and values are appended and the queries attend to the cached positions (those inside
  // the window, with one).
  Tensor forward(const Tensor& x, const Tensor& cos, const Tensor& sin, KVCache* cache = nullptr) const;
  std::string type_name() const override { return "Attention"; }
  autograd::Slot<LinearLayer> q_proj, k_proj, v_proj, o_proj;
  int64_t n_head, n_kv_head, head_dim;
  int64_t window = 0;  // sliding window (0 = none); set by make_attention from the spec
  // Replaces the attention kernel on q [B, n_head, T, D], k, v [B, n_kv_head, T, D] (after
  // RoPE) when set and no cache is used; returns [B, n_head, T, D]. Sequence parallelism sets
  // it (Ulysses: parallel/ulysses.h) to attend over the whole sequence from a slice of it.
  using Core = std::function<Tensor(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window)>;
  Core core;
};

}  // namespace lathe::models
