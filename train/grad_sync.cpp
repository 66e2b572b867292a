// Gradient averaging across data-parallel ranks; see grad_sync.h.
#include "train/grad_sync.h"

#include "core/memory.h"

namespace lathe::train {

void sync_gradients(const std::vector<Tensor>& params, parallel::Communicator& comm) {
  if (comm.size() <= 1) return;
  for (const Tensor& p : params) {
    if (!p.requires_grad()) continue;
    Tensor g = p.grad();
    if (!g.defined()) {
      MemCategoryGuard guard(MemCategory::gradients);
      g = Tensor::zeros(p.shape(), p.dtype(), p.device());
      p.set_grad(g);
    }
    comm.all_reduce(g, parallel::ReduceOp::avg);
  }
}

}  // namespace lathe::train
