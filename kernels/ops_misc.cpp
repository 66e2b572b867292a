// dropout and the fused AdamW step: checks and allocation; kernels in the Backend
// (kernels/cpu/misc.cpp on the CPU).
#include <cmath>

#include "kernels/backend.h"
#include "kernels/blockwise8.h"
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
                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
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
  backend(param.device()).adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, variant);
}

void adamw_step_multi(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
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
  backend(dev).adamw_step_multi(params, gs, ms, vs, lr, beta1, beta2, eps, weight_decay, step, variant);
}

const char* adam_variant_name(AdamVariant v) { return v == AdamVariant::hf ? "hf" : "torch"; }

namespace {

void check_quant_layout(const char* op, const Tensor& values, const char* values_name, const Tensor& codes,
                        const Tensor& absmax, int64_t block) {
  LATHE_CHECK(values.defined() && codes.defined() && absmax.defined()) << op << ": undefined tensor";
  LATHE_CHECK(valid_quant_block(block)) << op << ": block size must be a power of two in [64, 4096], got " << block;
  LATHE_CHECK(codes.dtype() == DType::u8) << op << ": codes must be u8, got " << dtype_name(codes.dtype());
  LATHE_CHECK(absmax.dtype() == DType::f32) << op << ": absmax must be f32, got " << dtype_name(absmax.dtype());
  LATHE_CHECK(codes.numel() == values.numel()) << op << ": codes " << codes.shape_str() << " do not match "
                                               << values_name << " " << values.shape_str();
  LATHE_CHECK(absmax.numel() == quant_blocks(values.numel(), block))
      << op << ": absmax has " << absmax.numel() << " entries, " << values_name << " of " << values.numel()
      << " elements in blocks of " << block << " needs " << quant_blocks(values.numel(), block);
  LATHE_CHECK(codes.is_contiguous() && absmax.is_contiguous() && values.is_contiguous())
      << op << ": " << values_name << ", codes and absmax must be contiguous";
  LATHE_CHECK(codes.device() == values.device() && absmax.device() == values.device())
      << op << ": codes on " << codes.device().str() << ", absmax on " << absmax.device().str() << ", "
      << values_name << " on " << values.device().str();
}

}  // namespace

void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed) {
  check_quant_layout("quantize_blockwise8", x, "x", codes, absmax, block);
  LATHE_CHECK(x.dtype() == DType::f32) << "quantize_blockwise8: x must be f32, got " << dtype_name(x.dtype());
  if (x.numel() == 0) return;
  backend(x.device()).quantize_blockwise8(x, codes, absmax, block, is_signed);
}

Tensor dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed) {
  Tensor out = Tensor::empty(codes.shape(), DType::f32, codes.device());
  check_quant_layout("dequantize_blockwise8", out, "out", codes, absmax, block);
  if (out.numel() == 0) return out;
  backend(codes.device()).dequantize_blockwise8(codes, absmax, block, is_signed, out);
  return out;
}

void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                     const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, AdamVariant variant, int64_t block) {
  const char* op = "adamw_step_8bit";
  LATHE_CHECK(param.defined() && grad.defined()) << op << ": undefined param or grad";
  LATHE_CHECK(param.dtype() == DType::f32 && grad.dtype() == DType::f32)
      << op << ": param and grad must be f32, got " << dtype_name(param.dtype()) << " and " << dtype_name(grad.dtype());
  LATHE_CHECK(grad.shape() == param.shape()) << op << ": grad " << grad.shape_str() << " does not match param "
                                             << param.shape_str();
  LATHE_CHECK(grad.device() == param.device()) << op << ": grad on " << grad.device().str() << ", param on "
                                               << param.device().str();
  check_quant_layout(op, param, "param", m_codes, m_absmax, block);
  check_quant_layout(op, param, "param", v_codes, v_absmax, block);
  LATHE_CHECK(step >= 1) << op << ": step must be >= 1 (bias correction), got " << step;
  LATHE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)
      << op << ": betas must be in [0, 1), got " << beta1 << ", " << beta2;
  if (param.numel() == 0) return;
  backend(param.device())
      .adamw_step_8bit(param, grad.contiguous(), m_codes, m_absmax, v_codes, v_absmax, lr, beta1, beta2, eps,
                       weight_decay, step, variant, block);
}

void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                  double momentum, double weight_decay, bool first) {
  const char* op = "sgd_sai_step";
  LATHE_CHECK(param.defined() && grad.defined() && scale.defined()) << op << ": undefined param, grad or scale";
  LATHE_CHECK(param.dtype() == DType::f32 && grad.dtype() == DType::f32 && scale.dtype() == DType::f32)
      << op << ": param, grad and scale must be f32";
  LATHE_CHECK(grad.shape() == param.shape()) << op << ": grad " << grad.shape_str() << " does not match param "
                                             << param.shape_str();
  LATHE_CHECK(scale.numel() == 1) << op << ": scale must hold one value, got " << scale.shape_str();
  LATHE_CHECK(param.is_contiguous()) << op << ": param must be contiguous";
  LATHE_CHECK(grad.device() == param.device() && scale.device() == param.device())
      << op << ": grad on " << grad.device().str() << ", scale on " << scale.device().str() << ", param on "
      << param.device().str();
  if (buf.defined()) {
    LATHE_CHECK(buf.dtype() == DType::f32 && buf.shape() == param.shape() && buf.is_contiguous() &&
                buf.device() == param.device())
        << op << ": buf must be contiguous f32 " << param.shape_str() << " on " << param.device().str() << ", got "
        << dtype_name(buf.dtype()) << " " << buf.shape_str() << " on " << buf.device().str();
  }
  if (param.numel() == 0) return;
  backend(param.device()).sgd_sai_step(param, grad.contiguous(), buf, scale, lr, momentum, weight_decay, first);
}

}  // namespace lathe::kernels
