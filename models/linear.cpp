#include "models/linear.h"

#include "autograd/ops.h"
#include "models/autocast.h"

namespace lathe::models {

Linear::Linear(int64_t in, int64_t out, bool has_bias) {
  LATHE_CHECK(in > 0 && out > 0) << "Linear: in and out features must be > 0, got " << in << " and " << out;
  weight_ = register_param("weight", Tensor::zeros({out, in}));
  if (has_bias) bias_ = register_param("bias", Tensor::zeros({out}));
}

Tensor Linear::forward(const Tensor& x) const {
  const Tensor& w = weight_.get();
  LATHE_CHECK(w.dim() == 2) << "Linear: weight must be [out, in], got " << w.shape_str();
  LATHE_CHECK(x.size(-1) == w.size(1)) << "Linear: input has " << x.size(-1) << " features (shape " << x.shape_str()
                                       << "), the layer expects " << w.size(1);
  return autograd::linear(autocast(x), autocast(w), autocast(bias_.get()));
}

}  // namespace lathe::models
