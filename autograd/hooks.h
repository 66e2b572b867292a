// Gradient-ready hooks: a callback on a leaf (a parameter) that fires once per backward
// call, the moment that leaf's gradient for this backward is final (every contribution
// in the graph has been added into leaf.grad), while the rest of backward goes on.
// Data parallelism launches its bucketed all-reduce from here; layer-wise optimizer
// updates (train/layerwise.h) step a parameter from here.
//
// A hook may update its leaf in place and release leaf.grad: every node that uses the leaf
// has run its backward by then (the leaf's sink waits for all of them), so the rest of
// backward never reads the new value, and hooks registered after it still receive the
// gradient (the engine holds it until the last hook returns). The one exception is a leaf
// whose storage another node saved through an alias the tape does not link to it (a
// detach()ed view used in a differentiable op): that node may still run afterwards.
#pragma once

#include <cstdint>

#include "autograd/meta.h"

namespace lathe::autograd {

// Registers fn on a leaf that requires grad; returns an id for remove_grad_ready_hook.
// fn receives the accumulated leaf.grad (including gradients of earlier backward calls
// that were not zeroed).
int64_t add_grad_ready_hook(const Tensor& leaf, GradReadyHook fn);
// Removes a hook by id; returns false when the id is not registered on this tensor.
bool remove_grad_ready_hook(const Tensor& leaf, int64_t id);
// Removes every hook of the tensor.
void clear_grad_ready_hooks(const Tensor& leaf);

}  // namespace lathe::autograd
