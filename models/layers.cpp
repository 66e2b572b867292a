#include "models/layers.h"

#include "autograd/ops.h"
#include "models/autocast.h"

namespace lathe::models {

namespace ag = lathe::autograd;

Embedding::Embedding(int64_t num, int64_t dim) { weight_ = register_param("weight", Tensor::zeros({num, dim})); }

Tensor Embedding::forward(const Tensor& ids) const { return autocast(ag::embedding(weight_.get(), ids)); }

Tensor Embedding::logits(const Tensor& x) const { return ag::linear(autocast(x), autocast(weight_.get())); }

namespace {
// Norms compute in the weight's dtype and return x's (see Norm).
Tensor in_dtype(const Tensor& x, DType dt) { return x.dtype() == dt ? x : ag::cast(x, dt); }
}  // namespace

LayerNorm::LayerNorm(int64_t dim, double e, bool has_bias) : eps(e) {
  weight_ = register_param("weight", Tensor::ones({dim}));
  if (has_bias) bias_ = register_param("bias", Tensor::zeros({dim}));
}

Tensor LayerNorm::forward(const Tensor& x) const {
  const Tensor& w = weight_.get();
  return in_dtype(ag::layer_norm(in_dtype(x, w.dtype()), w, bias_.get(), eps), x.dtype());
}

RMSNorm::RMSNorm(int64_t dim, double e) : eps(e) { weight_ = register_param("weight", Tensor::ones({dim})); }

Tensor RMSNorm::forward(const Tensor& x) const {
  const Tensor& w = weight_.get();
  return in_dtype(ag::rms_norm(in_dtype(x, w.dtype()), w, eps), x.dtype());
}

GeluMLP::GeluMLP(int64_t d_model, int64_t d_ff, bool bias) {
  fc = register_slot<LinearLayer>("fc", std::make_shared<Linear>(d_model, d_ff, bias));
  proj = register_slot<LinearLayer>("proj", std::make_shared<Linear>(d_ff, d_model, bias));
}

// The GELU rides in fc's product (a cuBLASLt epilogue on CUDA; the same numbers on the CPU).
Tensor GeluMLP::forward(const Tensor& x) const {
  return proj->forward(fc->forward_act(x, kernels::Activation::gelu_tanh));
}

SwiGLU::SwiGLU(int64_t d_model, int64_t d_ff, bool bias) {
  gate_proj = register_slot<LinearLayer>("gate_proj", std::make_shared<Linear>(d_model, d_ff, bias));
  up_proj = register_slot<LinearLayer>("up_proj", std::make_shared<Linear>(d_model, d_ff, bias));
  down_proj = register_slot<LinearLayer>("down_proj", std::make_shared<Linear>(d_ff, d_model, bias));
}

Tensor SwiGLU::forward(const Tensor& x) const {
  return down_proj->forward(ag::swiglu(gate_proj->forward(x), up_proj->forward(x)));
}

}  // namespace lathe::models
