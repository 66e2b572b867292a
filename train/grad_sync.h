// The data-parallel seam of the trainer: after the backward of a step's last micro-batch,
// every rank's gradients become the mean over ranks, so each rank applies the same update.
//
// This version all-reduces each gradient on its own once backward is over (simple and
// correct under `mpirun -np N`). The data-parallel issue replaces it with bucketed
// all-reduces launched from autograd grad-ready hooks (autograd/hooks.h) during backward;
// the trainer only calls sync_gradients(), so that change stays inside this file.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace lathe::train {

// Averages the .grad() of every parameter across comm's ranks (nothing to do for one rank).
// A parameter without a gradient on this rank contributes zeros (its gradient is created),
// so all ranks issue the same collectives in the same order.
void sync_gradients(const std::vector<Tensor>& params, parallel::Communicator& comm);

}  // namespace lathe::train
