// The CPU backend: forwards each Backend method to the OpenMP/BLAS kernels in
// kernels/cpu/*.cpp. Elementwise, reductions, matmul and indexing are declared in
// cpu/elementwise.h; softmax, norms, losses and attention in cpu/nn.h.
#include "kernels/backend.h"

namespace lathe::kernels {

namespace {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }

  // ---- elementwise, reductions, matmul, indexing, dropout, adamw (cpu/elementwise.h) ----

  // ---- softmax, norms, embeddings, cross-entropy, rope, attention (cpu/nn.h) ----
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace lathe::kernels
