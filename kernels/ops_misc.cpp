// dropout and the fused AdamW step: checks and allocation; kernels in the Backend
// (kernels/cpu/misc.cpp on the CPU).
#include <cmath>

#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::kernels {

DropoutOut dropout(const Tensor& x, double p, Generator& gen) {
  LATHE_CHECK(x.defined()) << "dropout: x is an undefined tensor";
  LATHE_CHECK(is_floating(x.dtype())) << "dropout: needs a floating dtype, got " << dtype_name(x.dtype()) << " "
                                      << x.shape_str();
  LATHE_CHECK(p >= 0.0 && p <= 1.0) << "dropout: p must be in [0, 1], got " << p << " (x " << x.shape_str() << ")";
  // The stream advances by numel whatever p is, so later draws do not depend on p.
  const uint64_t offset = gen.reserve(static_cast<uint64_t>(x.numel()));
  DropoutOut out;
  if (p == 0.0) {
    out.y = x.clone();
    out.mask = Tensor::ones(x.shape(), DType::u8, x.device());
    return out;
  }
  out.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  out.mask = Tensor::empty(x.shape(), DType::u8, x.device());
  if (x.numel() > 0) backend(x.device()).dropout(x, p, gen.seed(), offset, out);
  return out;
}

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step) {
  LATHE_CHECK(param.defined() && grad.defined() && m.defined() && v.defined())
      << "adamw_step: undefined tensor among param/grad/m/v";
  const std::pair<const char*, const Tensor*> all[] = {{"param", &param}, {"grad", &grad}, {"m", &m}, {"v", &v}};
  for (const auto& [name, t] : all) {
    LATHE_CHECK(t->dtype() == DType::f32) << "adamw_step: " << name << " must be f32, got "
                                          << dtype_name(t->dtype()) << " " << t->shape_str();
    LATHE_CHECK(t->shape() == param.shape()) << "adamw_step: " << name << " " << t->shape_str()
                                             << " does not match param " << param.shape_str();
    LATHE_CHECK(t->device() == param.device()) << "adamw_step: " << name << " is on " << t->device().str()
                                               << ", param on " << param.device().str();
    LATHE_CHECK(t == &grad || t->is_contiguous())
        << "adamw_step: " << name << " " << t->shape_str() << " must be contiguous";
  }
  LATHE_CHECK(step >= 1) << "adamw_step: step must be >= 1 (bias correction), got " << step;
  LATHE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)
      << "adamw_step: betas must be in [0, 1), got " << beta1 << ", " << beta2;
  if (param.numel() == 0) return;
  backend(param.device()).adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step);
}

void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step) {
  const char* op = "adamw_step_multi";
  LATHE_CHECK(grads.size() == params.size() && ms.size() == params.size() && vs.size() == params.size())
      << op << ": list lengths differ: " << params.size() << " params, " << grads.size() << " grads, " << ms.size()
      << " m, " << vs.size() << " v";
  LATHE_CHECK(step >= 1) << op << ": step must be >= 1 (bias correction), got " << step;
  LATHE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)
      << op << ": betas must be in [0, 1), got " << beta1 << ", " << beta2;
  if (params.empty()) return;
  const Device dev = params[0].defined() ? params[0].device() : Device::cpu();
  std::vector<Tensor> gs;
  gs.reserve(grads.size());
  for (size_t k = 0; k < params.size(); ++k) {
    const std::pair<const char*, const Tensor*> all[] = {
        {"param", &params[k]}, {"grad", &grads[k]}, {"m", &ms[k]}, {"v", &vs[k]}};
    for (const auto& [name, t] : all) {
      LATHE_CHECK(t->defined()) << op << ": " << name << " " << k << " is undefined";
      const bool is_grad = t == &grads[k];
      LATHE_CHECK(t->dtype() == DType::f32 || (is_grad && t->dtype() == DType::bf16))
          << op << ": " << name << " " << k << " must be f32" << (is_grad ? " or bf16" : "") << ", got "
          << dtype_name(t->dtype()) << " " << t->shape_str();
      LATHE_CHECK(t->shape() == params[k].shape()) << op << ": " << name << " " << k << " " << t->shape_str()
                                                   << " does not match param " << params[k].shape_str();
      LATHE_CHECK(t->device() == dev) << op << ": " << name << " " << k << " is on " << t->device().str()
                                      << ", param 0 on " << dev.str();
      LATHE_CHECK(is_grad || t->is_contiguous())
          << op << ": " << name << " " << k << " " << t->shape_str() << " must be contiguous";
    }
    gs.push_back(grads[k].contiguous());
  }
  backend(dev).adamw_step_multi(params, gs, ms, vs, lr, beta1, beta2, eps, weight_decay, step);
}

}  // namespace lathe::kernels
