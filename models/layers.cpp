#include "models/layers.h"

#include <cmath>

#include "autograd/ops.h"

namespace lathe::models {

namespace ag = lathe::autograd;

Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_(in), out_(out) {
  weight = register_parameter("weight", Tensor::zeros({out, in}));
  if (has_bias) bias = register_parameter("bias", Tensor::zeros({out}));
}

Tensor Linear::forward(const Tensor& x) const {
  LATHE_CHECK(x.size(-1) == in_) << "Linear: input has " << x.size(-1) << " features (shape " << x.shape_str()
                                 << "), the layer expects " << in_;
  return ag::linear(x, weight, bias);
}

Embedding::Embedding(int64_t num, int64_t dim) { weight = register_parameter("weight", Tensor::zeros({num, dim})); }

Tensor Embedding::forward(const Tensor& ids) const { return ag::embedding(weight, ids); }

LayerNorm::LayerNorm(int64_t dim, double e, bool has_bias) : eps(e) {
  weight = register_parameter("weight", Tensor::ones({dim}));
  if (has_bias) bias = register_parameter("bias", Tensor::zeros({dim}));
}

Tensor LayerNorm::forward(const Tensor& x) const { return ag::layer_norm(x, weight, bias, eps); }

RMSNorm::RMSNorm(int64_t dim, double e) : eps(e) { weight = register_parameter("weight", Tensor::ones({dim})); }

Tensor RMSNorm::forward(const Tensor& x) const { return ag::rms_norm(x, weight, eps); }

Attention::Attention(int64_t d_model, int64_t nh, int64_t nkv, bool bias, bool qkv_bias)
    : n_head(nh), n_kv_head(nkv), head_dim(d_model / nh) {
  const bool in_bias = bias || qkv_bias;
  q_proj = register_module("q_proj", std::make_shared<Linear>(d_model, nh * head_dim, in_bias));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d_model, nkv * head_dim, in_bias));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d_model, nkv * head_dim, in_bias));
  o_proj = register_module("o_proj", std::make_shared<Linear>(nh * head_dim, d_model, bias));
}

Tensor Attention::forward(const Tensor& x, const Tensor& cos, const Tensor& sin) const {
  const int64_t B = x.size(0), T = x.size(1);
  // [B, T, heads * D] -> [B, heads, T, D]
  auto heads = [&](const Tensor& t, int64_t h) { return ag::transpose(ag::view(t, {B, T, h, head_dim}), 1, 2); };
  Tensor q = heads(q_proj->forward(x), n_head);
  Tensor k = heads(k_proj->forward(x), n_kv_head);
  Tensor v = heads(v_proj->forward(x), n_kv_head);
  if (cos.defined()) {
    q = ag::rope(q, cos, sin);
    k = ag::rope(k, cos, sin);
  }
  Tensor y = ag::attention(q, k, v, /*causal=*/true, 1.0 / std::sqrt(static_cast<double>(head_dim)));
  y = ag::reshape(ag::transpose(y, 1, 2), {B, T, n_head * head_dim});
  return o_proj->forward(y);
}

GeluMLP::GeluMLP(int64_t d_model, int64_t d_ff, bool bias) {
  fc = register_module("fc", std::make_shared<Linear>(d_model, d_ff, bias));
  proj = register_module("proj", std::make_shared<Linear>(d_ff, d_model, bias));
}

Tensor GeluMLP::forward(const Tensor& x) const { return proj->forward(ag::gelu(fc->forward(x), true)); }

SwiGLU::SwiGLU(int64_t d_model, int64_t d_ff, bool bias) {
  gate_proj = register_module("gate_proj", std::make_shared<Linear>(d_model, d_ff, bias));
  up_proj = register_module("up_proj", std::make_shared<Linear>(d_model, d_ff, bias));
  down_proj = register_module("down_proj", std::make_shared<Linear>(d_ff, d_model, bias));
}

Tensor SwiGLU::forward(const Tensor& x) const {
  return down_proj->forward(ag::mul(ag::silu(gate_proj->forward(x)), up_proj->forward(x)));
}

}  // namespace lathe::models
