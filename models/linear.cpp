#include "models/linear.h"

#include "autograd/ops.h"
#include "models/autocast.h"

namespace lathe::models {

Linear::Linear(int64_t in, int64_t out, bool has_bias) {
  LATHE_CHECK(in > 0 && out > 0) << "Linear: in and out features must be > 0, got " << in << " and " << out;
  weight_ = register_param("weight", Tensor::zeros({out, in}));
  if (has_bias) bias_ = register_param("bias", Tensor::zeros({out}));
}

Tensor LinearLayer::forward_act(const Tensor& x, kernels::Activation act) const {
  switch (act) {
    case kernels::Activation::none: return forward(x);
    case kernels::Activation::gelu_tanh: return autograd::gelu(forward(x), true);
  }
  LATHE_FAIL() << "LinearLayer: unknown activation " << kernels::activation_name(act);
  return Tensor();
}

Tensor Linear::forward(const Tensor& x) const { return forward_act(x, kernels::Activation::none); }

Tensor Linear::forward_act(const Tensor& x, kernels::Activation act) const {
  const Tensor& w = weight_.get();
  LATHE_CHECK(w.dim() == 2) << "Linear: weight must be [out, in], got " << w.shape_str();
  LATHE_CHECK(x.size(-1) == w.size(1)) << "Linear: input has " << x.size(-1) << " features (shape " << x.shape_str()
                                       << "), the layer expects " << w.size(1);
  return autograd::linear(autocast(x), autocast(w), autocast(bias_.get()), act);
}

}  // namespace lathe::models
