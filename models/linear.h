// The linear-layer interface and the plain Linear. Every linear layer of the models
// (attention q/k/v/o projections, MLP projections, the untied lm_head) sits in a slot of
// this interface, so a LoRA wrapper, a tensor-parallel shard or a quantised linear takes a
// Linear's place through Module::replace_module without the parent knowing.
#pragma once

#include <cstdint>
#include <string>

#include "autograd/module.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::models {

class LinearLayer : public autograd::Module {
 public:
  // x [..., in_features] -> [..., out_features].
  virtual Tensor forward(const Tensor& x) const = 0;
  // act(forward(x)). A layer that can fuse the activation into its product (Linear: one
  // cuBLASLt call with a GELU epilogue) overrides this; the default applies it after forward.
  virtual Tensor forward_act(const Tensor& x, kernels::Activation act) const;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // The underlying (frozen or trained) weight [out, in] and bias [out] (undefined when
  // absent): what an adapter wraps, merges into, or what a TP rule shards.
  virtual Tensor base_weight() const = 0;
  virtual Tensor base_bias() const = 0;
};

class Linear : public LinearLayer {
 public:
  // weight [out, in] (the PyTorch layout), bias [out] when `bias`; both start at zero.
  Linear(int64_t in, int64_t out, bool bias);
  // x @ weight^T + bias; under models::Autocast in the compute dtype.
  Tensor forward(const Tensor& x) const override;
  // The activation fused into the same autograd::linear node.
  Tensor forward_act(const Tensor& x, kernels::Activation act) const override;
  std::string type_name() const override { return "Linear"; }
  // From the current weight, so a replaced (sharded) weight reports its own size.
  int64_t in_features() const override { return weight_->size(1); }
  int64_t out_features() const override { return weight_->size(0); }
  Tensor base_weight() const override { return weight_.get(); }
  Tensor base_bias() const override { return bias_.get(); }
  // The registered parameters as they are now (replace_parameter is seen here).
  Tensor weight() const { return weight_.get(); }
  Tensor bias() const { return bias_.get(); }

 private:
  autograd::ParamRef weight_, bias_;
};

}  // namespace lathe::models
