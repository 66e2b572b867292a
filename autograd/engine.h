// Backward: runs the recorded nodes in reverse topological order from the roots.
//
// - A node runs once every node that feeds it a gradient has run (dependency counts),
//   so a tensor used several times gets the sum of its contributions, and a leaf's
//   AccumulateGrad sees its final gradient exactly once per call (hooks fire then).
// - Among ready nodes, leaf sinks run first and then the most recently recorded node,
//   so gradients of late layers become final (and their hooks fire) early.
// - Leaf gradients accumulate (+=) across calls until zeroed.
// - retain_graph=false frees what each node saved; a second backward through the
//   same graph then fails with a message saying so.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace lathe::autograd {

// seed: the gradient of root (same shape); may be omitted only for a one-element root.
void backward(const Tensor& root, const Tensor& seed = Tensor(), bool retain_graph = false);
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds, bool retain_graph = false);

// Clears (set_to_none, the default) or zeroes the gradients of the given tensors.
void zero_grad(const std::vector<Tensor>& tensors, bool set_to_none = true);

}  // namespace lathe::autograd
