// The fused linear and multi-tensor AdamW on the CPU. BLAS gains nothing from an epilogue
// here, so linear is matmul, then the bias add, then the activation, each rounding to the
// output dtype as the separate ops do: models that switch to the fused op keep their CPU
// results bit for bit (tests/kernels/test_linear_fused.cpp checks it).
#include "kernels/cpu/fused.h"

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/optim.h"

namespace lathe::kernels::cpu {

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
            const Tensor& pre) {
  // w broadcast over x's batch dims, exactly as the op layer's matmul hands it to the kernel.
  Shape ws(x.shape().begin(), x.shape().end() - 2);
  ws.push_back(w.size(0));
  ws.push_back(w.size(1));
  const bool has_act = act != Activation::none;
  // Where x @ w^T lands: out when nothing follows, pre when it is the pre-activation, else a
  // temporary (the bias add reads one tensor and writes another, as binary() does).
  Tensor prod = !bias.defined() && !has_act ? out
                : !bias.defined() && pre.defined() ? pre
                                                   : Tensor::empty(out.shape(), out.dtype(), out.device());
  matmul(x, w.expand(ws), false, true, prod);
  Tensor z = prod;  // the pre-activation
  if (bias.defined()) {
    z = !has_act ? out : (pre.defined() ? pre : Tensor::empty(out.shape(), out.dtype(), out.device()));
    binary(BinaryOp::add, prod, bias.expand(out.shape()), z);
  }
  switch (act) {
    case Activation::none: break;
    case Activation::gelu_tanh: unary(UnaryOp::gelu_tanh, z, out); break;
  }
}

void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
  for (size_t k = 0; k < params.size(); ++k) {
    if (params[k].numel() == 0) continue;
    // A bf16 gradient widens to f32 exactly, so the update equals adamw_step on grad.to(f32).
    const Tensor g = grads[k].dtype() == DType::f32 ? grads[k] : grads[k].to(DType::f32);
    cpu::adamw_step(params[k], g, ms[k], vs[k], lr, beta1, beta2, eps, weight_decay, step, variant);
  }
}

}  // namespace lathe::kernels::cpu
