// Layers of the decoder-only models: Embedding, the norm interface (LayerNorm, RMSNorm),
// the MLP interface (the GELU MLP, the SwiGLU MLP); Linear is in models/linear.h and
// causal self-attention in models/attention.h. Each is an autograd::Module whose
// parameters keep the names listed in models/model.h, and reads its parameters through
// the registry (autograd::ParamRef) so Module::replace_parameter changes what it computes.
#pragma once

#include <memory>

#include "autograd/module.h"
#include "core/tensor.h"
#include "models/attention.h"
#include "models/linear.h"

namespace lathe::models {

class Embedding : public autograd::Module {
 public:
  Embedding(int64_t num, int64_t dim);
  // ids (i64/i32, any shape) -> [*ids.shape, dim]; under Autocast the rows come back in the
  // compute dtype (gathered in f32 first: casting the whole table would cost V x dim).
  // Virtual so that a vocabulary-parallel shard (parallel/tensor_parallel.h) takes its place.
  virtual Tensor forward(const Tensor& ids) const;
  // The tied output head: x [..., dim] @ weight^T -> [..., num] (under Autocast in the
  // compute dtype).
  virtual Tensor logits(const Tensor& x) const;
  std::string type_name() const override { return "Embedding"; }
  Tensor weight() const { return weight_.get(); }

 private:
  autograd::ParamRef weight_;
};

// A normalisation over the last dim. It computes in its weight's dtype (f32 under
// Autocast: the statistics need it) and returns x's dtype.
class Norm : public autograd::Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;
};

class LayerNorm : public Norm {
 public:
  LayerNorm(int64_t dim, double eps, bool bias);
  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "LayerNorm"; }
  Tensor weight() const { return weight_.get(); }
  Tensor bias() const { return bias_.get(); }
  double eps;

 private:
  autograd::ParamRef weight_, bias_;
};

class RMSNorm : public Norm {
 public:
  RMSNorm(int64_t dim, double eps);
  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "RMSNorm"; }
  Tensor weight() const { return weight_.get(); }
  double eps;

 private:
  autograd::ParamRef weight_;
};

// The MLP branch of a block: [..., d_model] -> [..., d_model].
class FeedForward : public autograd::Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;
};

// GPT-2 MLP: proj(gelu_tanh(fc(x))).
class GeluMLP : public FeedForward {
 public:
  GeluMLP(int64_t d_model, int64_t d_ff, bool bias);
  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "GeluMLP"; }
  autograd::Slot<LinearLayer> fc, proj;
};

// Llama MLP (Shazeer, "GLU Variants Improve Transformer"): down(silu(gate(x)) * up(x)).
class SwiGLU : public FeedForward {
 public:
  SwiGLU(int64_t d_model, int64_t d_ff, bool bias);
  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "SwiGLU"; }
  autograd::Slot<LinearLayer> gate_proj, up_proj, down_proj;
};

}  // namespace lathe::models
