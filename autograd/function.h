// Recording a differentiable op on the tape. Every op in autograd/ops.h computes its
// forward with lathe::kernels and then calls record(); code outside autograd/ may use the
// same call to define its own differentiable op (tests do, to break a backward on purpose).
//
//   Tensor y = kernels::unary(UnaryOp::exp, x);
//   Tensor ys = y.detach();  // save without the history (no cycle through y's own node)
//   return record("exp", y, {x}, [ys](const auto& g, const auto&) { return std::vector<Tensor>{mul(g[0], ys)}; });
//
// Backward closures run with grad mode off; they may call autograd ops or kernels.
// Capture saved tensors with detach() (see saved()).
#pragma once

#include <string>
#include <vector>

#include "autograd/node.h"
#include "core/tensor.h"

namespace lathe::autograd {

// True when an op over these inputs must record: grad mode is on and any input requires grad.
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Attaches a node with backward fn to `out` when any_requires_grad(inputs) (undefined
// inputs are allowed and get no gradient) and returns out, which then requires grad.
// When out shares its TensorImpl with an input (an op that returned its input) it is
// first re-wrapped in a new TensorImpl over the same storage.
Tensor record(const std::string& name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn fn);
// Same for an op with several outputs; grads[i] in fn belongs to outs[i] and may be undefined.
std::vector<Tensor> record_multi(const std::string& name, std::vector<Tensor> outs,
                                 const std::vector<Tensor>& inputs, BackwardFn fn);

// A tensor to keep for the backward: same storage and layout, no autograd history.
inline Tensor saved(const Tensor& t) { return t.defined() ? t.detach() : Tensor(); }

}  // namespace lathe::autograd
