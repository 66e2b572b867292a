// Gradient-ready hooks: a callback on a leaf (a parameter) that fires once per backward
// call, the moment that leaf's gradient for this backward is final (every contribution
// in the graph has been added into leaf.grad), while the rest of backward goes on.
// Data parallelism launches its bucketed all-reduce from here; GaLore's layer-wise
// update steps a parameter from here.
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
