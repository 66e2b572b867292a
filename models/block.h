// The pre-norm transformer block as two branches around the norm interface: an attention
// branch attn(attn_norm(x)) and an MLP branch mlp(mlp_norm(x)). Which norm and which MLP
// (GPT-2: LayerNorm + GELU MLP; Llama: RMSNorm + SwiGLU) is decided once by make_block,
// never inside the block, so a Ladder-residual block can rewire the residual stream around
// the same branches and tensor parallelism can shard a branch by replacing its modules.
#pragma once

#include <memory>

#include "autograd/module.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "models/attention.h"
#include "models/layers.h"
#include "models/model.h"

namespace lathe::models {

class Block : public autograd::Module {
 public:
  // Registers the parts as attn_norm, attn, mlp_norm, mlp (the parameter names of model.h).
  Block(std::shared_ptr<Norm> attn_norm, std::shared_ptr<Attention> attn, std::shared_ptr<Norm> mlp_norm,
        std::shared_ptr<FeedForward> mlp, double dropout);
  std::string type_name() const override { return "Block"; }

  // y = x + attention_branch(x); out = y + mlp_branch(y).
  Tensor forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Generator& gen, KVCache* cache = nullptr) const;
  // drop(attn(attn_norm(x))) and drop(mlp(mlp_norm(x))): the branches without the residual
  // add. cos/sin are the RoPE rows of x's positions (undefined without RoPE).
  Tensor attention_branch(const Tensor& x, const Tensor& cos, const Tensor& sin, Generator& gen,
                          KVCache* cache = nullptr) const;
  Tensor mlp_branch(const Tensor& x, Generator& gen) const;
  // The branches before their dropout (Ladder residual reduces them first).
  Tensor attention_out(const Tensor& x, const Tensor& cos, const Tensor& sin, KVCache* cache = nullptr) const;
  Tensor mlp_out(const Tensor& x) const;
  Tensor branch_dropout(const Tensor& o, Generator& gen) const;

  autograd::Slot<Norm> attn_norm;
  autograd::Slot<Attention> attn;
  autograd::Slot<Norm> mlp_norm;
  autograd::Slot<FeedForward> mlp;
  double dropout;
  // Megatron sequence parallelism: the branch outputs are sequence slices (set by the model).
  const SequenceShard* seq = nullptr;
};

// The norm of spec's architecture (LayerNorm with spec.bias for GPT-2, RMSNorm for Llama).
std::shared_ptr<Norm> make_norm(const ModelSpec& spec);
// The whole attention layer `layer` of spec (all heads; its sliding window, if any).
std::shared_ptr<Attention> make_attention(const ModelSpec& spec, int64_t layer);
// The MLP of spec's architecture (GELU MLP for GPT-2, SwiGLU for Llama).
std::shared_ptr<FeedForward> make_mlp(const ModelSpec& spec);
std::shared_ptr<Block> make_block(const ModelSpec& spec, int64_t layer);

}  // namespace lathe::models
