// Per-tensor autograd state (TensorImpl::autograd), created lazily: the accumulated
// gradient of a leaf, the node that produced a non-leaf, and gradient-ready hooks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "autograd/node.h"
#include "core/tensor.h"

namespace lathe::autograd {

using GradReadyHook = std::function<void(const Tensor& grad)>;

struct AutogradMeta {
  Tensor grad;                              // leaf gradient (accumulated across backward calls)
  std::shared_ptr<Node> grad_fn;            // producer of a non-leaf; null for leaves
  uint32_t output_nr = 0;                   // which output of grad_fn this tensor is
  std::weak_ptr<AccumulateGrad> grad_accumulator;  // a leaf's sink; the graph owns it
  std::vector<std::pair<int64_t, GradReadyHook>> hooks;  // by id, in registration order
};

// The meta of t, created when absent.
AutogradMeta& meta_of(const Tensor& t);
// The meta of t, or null.
AutogradMeta* meta_if(const Tensor& t);
// The node of a non-leaf (null for a leaf or a tensor with no history).
std::shared_ptr<Node> grad_fn_of(const Tensor& t);
// Where the gradient of t must go: its grad_fn, or its leaf's AccumulateGrad (made on
// first use), or an invalid edge when t does not require grad.
Edge gradient_edge(const Tensor& t);

}  // namespace lathe::autograd
