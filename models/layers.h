// Layers of the decoder-only models: Linear, Embedding, LayerNorm, RMSNorm, causal
// self-attention (RoPE, grouped-query heads), the GELU MLP and the SwiGLU MLP.
// Each is an autograd::Module whose parameters keep the names listed in models/model.h.
#pragma once

#include <memory>

#include "autograd/module.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace lathe::models {

class Linear : public autograd::Module {
 public:
  // weight [out, in] (the PyTorch layout), bias [out] when `bias`.
  Linear(int64_t in, int64_t out, bool bias);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Linear"; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  Tensor weight, bias;

 private:
  int64_t in_, out_;
};

class Embedding : public autograd::Module {
 public:
  Embedding(int64_t num, int64_t dim);
  Tensor forward(const Tensor& ids) const;
  std::string type_name() const override { return "Embedding"; }
  Tensor weight;
};

class LayerNorm : public autograd::Module {
 public:
  LayerNorm(int64_t dim, double eps, bool bias);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "LayerNorm"; }
  Tensor weight, bias;
  double eps;
};

class RMSNorm : public autograd::Module {
 public:
  RMSNorm(int64_t dim, double eps);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "RMSNorm"; }
  Tensor weight;
  double eps;
};

// Causal self-attention over x [B, T, C]. With rope (cos/sin [T, D/2] defined) the
// queries and keys are rotated (Llama); n_kv_head < n_head shares each key/value head
// among n_head / n_kv_head query heads. q/k/v carry a bias when `bias` or `qkv_bias`
// (Qwen2: q/k/v biased, o_proj not); o_proj only when `bias`.
class Attention : public autograd::Module {
 public:
  Attention(int64_t d_model, int64_t n_head, int64_t n_kv_head, bool bias, bool qkv_bias = false);
  Tensor forward(const Tensor& x, const Tensor& cos, const Tensor& sin) const;
  std::string type_name() const override { return "Attention"; }
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
  int64_t n_head, n_kv_head, head_dim;
};

// GPT-2 MLP: proj(gelu_tanh(fc(x))).
class GeluMLP : public autograd::Module {
 public:
  GeluMLP(int64_t d_model, int64_t d_ff, bool bias);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "GeluMLP"; }
  std::shared_ptr<Linear> fc, proj;
};

// Llama MLP (Shazeer, "GLU Variants Improve Transformer"): down(silu(gate(x)) * up(x)).
class SwiGLU : public autograd::Module {
 public:
  SwiGLU(int64_t d_model, int64_t d_ff, bool bias);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "SwiGLU"; }
  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
};

}  // namespace lathe::models
