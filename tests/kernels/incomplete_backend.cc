// Compiled by the ctest "backend_table_is_complete_at_compile_time" (tests/kernels/CMakeLists.txt),
// which expects this file NOT to compile: a backend that implements every kernel but one
// (here: rope) is abstract, so instantiating it, as every backend does to register itself,
// is a compile error naming the missing pure virtual. This is what turns a missing CUDA
// kernel into a build error instead of a run-time throw.
#include "kernels/backend.h"

namespace lathe::kernels {

class AlmostCompleteBackend final : public Backend {
 public:
  const char* name() const override { return "almost"; }
  void copy(const Tensor&, const Tensor&) override {}
  void fill(const Tensor&, double) override {}
  void copy_from_host(const Tensor&, const Tensor&) override {}
  void copy_to_host(const Tensor&, const Tensor&) override {}
  void synchronize(int) override {}
  void unary(UnaryOp, const Tensor&, const Tensor&) override {}
  void unary_backward(UnaryOp, const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {}
  void pow_scalar(const Tensor&, double, const Tensor&) override {}
  void affine(const Tensor&, double, double, const Tensor&) override {}
  void clamp(const Tensor&, double, double, const Tensor&) override {}
  void binary(BinaryOp, const Tensor&, const Tensor&, const Tensor&) override {}
  void where(const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {}
  void add_(const Tensor&, const Tensor&, double) override {}
  void scale_(const Tensor&, double) override {}
  void reduce(ReduceOp, const Tensor&, const std::vector<int64_t>&, int64_t, const Tensor&) override {}
  void matmul(const Tensor&, const Tensor&, bool, bool, const Tensor&) override {}
  void matmul_acc(const Tensor&, const Tensor&, bool, bool, double, const Tensor&) override {}
  void linear(const Tensor&, const Tensor&, const Tensor&, Activation, const Tensor&, const Tensor&) override {}
  void linear_act_backward(Activation, const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {}
  void softmax(const Tensor&, int64_t, bool, const Tensor&) override {}
  void svd(const Tensor&, const SvdOut&) override {}
  void qr_q(const Tensor&, const Tensor&) override {}
  void softmax_backward(const Tensor&, const Tensor&, int64_t, bool, const Tensor&) override {}
  void layer_norm(const Tensor&, const Tensor&, const Tensor&, double, const NormOut&) override {}
  void layer_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                           const NormGrads&) override {}
  void rms_norm(const Tensor&, const Tensor&, double, const NormOut&) override {}
  void rms_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const NormGrads&) override {}
  void embedding(const Tensor&, const Tensor&, const Tensor&) override {}
  void embedding_backward(const Tensor&, const Tensor&, const Tensor&) override {}
  void gather(const Tensor&, int64_t, const Tensor&, const Tensor&) override {}
  void scatter_add(int64_t, const Tensor&, const Tensor&, const Tensor&) override {}
  void index_select(const Tensor&, int64_t, const Tensor&, const Tensor&) override {}
  void index_add(int64_t, const Tensor&, const Tensor&, const Tensor&) override {}
  void cross_entropy(const Tensor&, const Tensor&, int64_t, double, const CrossEntropyOut&) override {}
  void cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                              double, const Tensor&) override {}
  // rope: deliberately missing
  void attention(const Tensor&, const Tensor&, const Tensor&, bool, double, int64_t, const AttentionOut&) override {}
  void attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          bool, double, int64_t, const AttentionGrads&) override {}
  void dropout(const Tensor&, double, uint64_t, uint64_t, const DropoutOut&) override {}
  void adamw_step(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, double, double, double, double,
                  int64_t, AdamVariant) override {}
  void adamw_step_multi(const std::vector<Tensor>&, const std::vector<Tensor>&, const std::vector<Tensor>&,
                        const std::vector<Tensor>&, double, double, double, double, double, int64_t,
                        AdamVariant) override {}
  void quantize_blockwise8(const Tensor&, const Tensor&, const Tensor&, int64_t, bool) override {}
  void dequantize_blockwise8(const Tensor&, const Tensor&, int64_t, bool, const Tensor&) override {}
  void adamw_step_8bit(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                       double, double, double, double, int64_t, AdamVariant, int64_t) override {}
  void sgd_sai_step(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, double, double,
                    bool) override {}
};

Backend& almost_complete_backend() {
  static AlmostCompleteBackend b;  // error: the class is abstract (rope is pure)
  return b;
}

}  // namespace lathe::kernels
