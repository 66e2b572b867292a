#include "peft/lora_sb.h"

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "peft/svd.h"

namespace lathe::peft {

namespace {

LoraOptions zero_init(LoraOptions o) {
  o.init = LoraInit::zeros;
  return o;
}

// The zeros init draws nothing; LoraLinear's constructor still wants a generator.
Generator& no_draws() {
  static Generator g(0);
  return g;
}

// A [r, in] = rows, B [out, r] = cols (f64 host tensors) copied into the factors' dtype and device.
void set_factors(LoraLinear& l, const Tensor& a, const Tensor& b, const Tensor& r) {
  l.lora_A().copy_(a.to(l.lora_A().dtype()).to(l.lora_A().device()));
  l.lora_B().copy_(b.to(l.lora_B().dtype()).to(l.lora_B().device()));
  l.lora_R().copy_(r.to(l.lora_R().dtype()).to(l.lora_R().device()));
}

Tensor diag(const Tensor& s) {
  const int64_t r = s.size(0);
  std::vector<double> v(static_cast<size_t>(r * r), 0.0), d = s.contiguous().to_vector<double>();
  for (int64_t i = 0; i < r; ++i) v[static_cast<size_t>(i * r + i)] = d[static_cast<size_t>(i)];
  return Tensor::from_vector<double>(v, {r, r});
}

}  // namespace

LoraSbLinear::LoraSbLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, Generator* dropout_gen)
    : LoraLinear(std::move(base), zero_init(opts), no_draws(), dropout_gen) {
  add_middle_factor();
  lora_A().set_requires_grad(false);
  lora_B().set_requires_grad(false);
  LATHE_REQUIRE(rank() <= std::min(in_features(), out_features()))
      << "LoRA-SB: rank " << rank() << " exceeds min(in, out) = " << std::min(in_features(), out_features())
      << " of the layer";
}

void LoraSbLinear::init_from_weight(const LoraSbOptions& o, Generator& gen) {
  autograd::NoGradGuard no_grad;
  const TruncatedSvd svd = truncated_svd(base_weight(), rank(), o.svd_niter, o.svd_seed);
  // W = P S Q^T: A = S Q^T [r, in], B = P [out, r].
  const Tensor a = kernels::matmul(diag(svd.S), svd.V, false, true);
  Tensor r = Tensor::randn({rank(), rank()}, gen, DType::f64);
  kernels::scale_(r, o.r_init_std);
  set_factors(*this, a, svd.U, r);
}

void LoraSbLinear::init_from_gradient(const Tensor& grad_sum, double eta, const LoraSbOptions& o) {
  LATHE_REQUIRE(grad_sum.shape() == base_weight().shape())
      << "LoRA-SB: the gradient has shape " << grad_sum.shape_str() << ", the weight " << base_weight().shape_str();
  autograd::NoGradGuard no_grad;
  // The first Adam step of full fine-tuning: -eta sign(G) (LoRA-SB, section 4.1).
  Tensor dw = kernels::unary(kernels::UnaryOp::sign, grad_sum.to(Device::cpu()).to(DType::f64));
  kernels::scale_(dw, -eta);
  const TruncatedSvd svd = truncated_svd(dw, rank(), o.svd_niter, o.svd_seed);
  Tensor r = diag(svd.S);
  kernels::scale_(r, 1.0 / scaling());
  set_factors(*this, svd.V.transpose(0, 1).contiguous(), svd.U, r);
}

}  // namespace lathe::peft
