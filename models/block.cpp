#include "models/block.h"

#include "autograd/ops.h"

namespace lathe::models {

namespace ag = lathe::autograd;

Block::Block(std::shared_ptr<Norm> an, std::shared_ptr<Attention> a, std::shared_ptr<Norm> mn,
             std::shared_ptr<FeedForward> m, double p)
    : dropout(p) {
  attn_norm = register_slot<Norm>("attn_norm", std::move(an));
  attn = register_slot<Attention>("attn", std::move(a));
  mlp_norm = register_slot<Norm>("mlp_norm", std::move(mn));
  mlp = register_slot<FeedForward>("mlp", std::move(m));
}

Tensor Block::attention_out(const Tensor& x, const Tensor& cos, const Tensor& sin, KVCache* cache) const {
  return attn->forward(attn_norm->forward(x), cos, sin, cache);
}

Tensor Block::mlp_out(const Tensor& x) const { return mlp->forward(mlp_norm->forward(x)); }

Tensor Block::branch_dropout(const Tensor& o, Generator& gen) const {
  return sequence_dropout(o, dropout, gen, is_training(), seq);
}

Tensor Block::attention_branch(const Tensor& x, const Tensor& cos, const Tensor& sin, Generator& gen,
                               KVCache* cache) const {
  return branch_dropout(attention_out(x, cos, sin, cache), gen);
}

Tensor Block::mlp_branch(const Tensor& x, Generator& gen) const { return branch_dropout(mlp_out(x), gen); }

Tensor Block::forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Generator& gen, KVCache* cache) const {
  Tensor y = ag::add(x, attention_branch(x, cos, sin, gen, cache));
  return ag::add(y, mlp_branch(y, gen));
}

std::shared_ptr<Norm> make_norm(const ModelSpec& s) {
  if (s.arch == Arch::gpt2) return std::make_shared<LayerNorm>(s.d_model, s.norm_eps, s.bias);
  return std::make_shared<RMSNorm>(s.d_model, s.norm_eps);
}

std::shared_ptr<Attention> make_attention(const ModelSpec& s, int64_t layer) {
  auto a = std::make_shared<Attention>(s.d_model, s.n_head, s.kv_heads(), s.head_dim(), s.has_qkv_bias(), s.bias);
  a->window = s.window_of(layer);
  return a;
}

std::shared_ptr<FeedForward> make_mlp(const ModelSpec& s) {
  if (s.arch == Arch::gpt2) return std::make_shared<GeluMLP>(s.d_model, s.ff_dim(), s.bias);
  return std::make_shared<SwiGLU>(s.d_model, s.ff_dim(), s.bias);
}

std::shared_ptr<Block> make_block(const ModelSpec& s, int64_t layer) {
  return std::make_shared<Block>(make_norm(s), make_attention(s, layer), make_norm(s), make_mlp(s), s.dropout);
}

}  // namespace lathe::models
