// Mixed precision for the forward pass: under an Autocast(DType::bf16) scope (per thread),
// Linear, Embedding and attention compute in bf16 with their f32 parameters (the master
// weights) cast on use by a differentiable cast, whose backward casts the gradient back,
// so parameters and gradients stay f32. Norms compute in their weight's dtype (f32) and
// hand back the compute dtype; the model returns f32 logits, so the loss is taken in f32.
#pragma once

#include "core/tensor.h"

namespace lathe::models {

class Autocast {
 public:
  // bf16 or f16 turn autocast on; f32 or f64 turn it off for the scope (e.g. an eval pass
  // inside a bf16 region). Scopes nest; the destructor restores the enclosing one.
  explicit Autocast(DType compute);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

  static bool enabled();
  static DType dtype();  // the compute dtype; meaningful when enabled()

 private:
  bool prev_enabled_;
  DType prev_dtype_;
};

// x cast to the compute dtype when autocast is on and x is a floating tensor of another
// dtype (differentiable: the gradient comes back in x's dtype); x itself otherwise.
Tensor autocast(const Tensor& x);

}  // namespace lathe::models
