#include "peft/sora.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "models/autocast.h"

namespace lathe::peft {

namespace ag = lathe::autograd;
using kernels::BinaryOp;
using kernels::UnaryOp;

double sora_lambda_at(const SoraOptions& o, int64_t step) {
  if (o.lambda_max <= 0 || o.schedule_levels <= 1 || step < o.schedule_start) return o.lambda;
  // Algorithm 1: level 0 until schedule_start, then one level up every schedule_interval steps.
  const int64_t level =
      std::min<int64_t>(o.schedule_levels - 1, 1 + (step - o.schedule_start) / std::max<int64_t>(o.schedule_interval, 1));
  return o.lambda + (o.lambda_max - o.lambda) * static_cast<double>(level) / static_cast<double>(o.schedule_levels - 1);
}

void sora_proximal(const Tensor& g, double lambda, double lr, SoraThreshold mode) {
  ag::NoGradGuard ng;
  const DType dt = g.dtype();
  const Device dev = g.device();
  auto scalar = [&](double v) { return Tensor::scalar(v, dt, dev); };
  const Tensor zero = scalar(0);
  if (mode == SoraThreshold::paper) {
    // T_t(g) = sign(g) max(|g| - t, 0), t = lr * lambda; where() keeps an exact +0.
    const double t = lr * lambda;
    const Tensor shrunk = kernels::unary(UnaryOp::relu, kernels::affine(kernels::unary(UnaryOp::abs, g), 1.0, -t));
    const Tensor v = kernels::binary(BinaryOp::mul, kernels::unary(UnaryOp::sign, g), shrunk);
    g.copy_(kernels::where(kernels::binary(BinaryOp::eq, shrunk, zero), zero, v));
    return;
  }
  // The reference's three steps, in order (each sees the previous one's result).
  const double xi = lambda;
  Tensor x = g.contiguous();
  x = kernels::where(kernels::binary(BinaryOp::gt, x, scalar(xi)), kernels::affine(x, 1.0, -xi), x);
  x = kernels::where(kernels::binary(BinaryOp::lt, x, scalar(-xi)), kernels::affine(x, 1.0, xi), x);
  x = kernels::where(kernels::binary(BinaryOp::lt, kernels::unary(UnaryOp::abs, x), scalar(xi)), zero, x);
  g.copy_(x);
}

SoraLinear::SoraLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, const SoraOptions& sora,
                       Generator& gen, Generator* dropout_gen)
    : LoraLinear(std::move(base), opts, gen, dropout_gen), sora_(sora) {
  LATHE_REQUIRE(sora.lambda >= 0 && std::isfinite(sora.lambda))
      << "SoRA: sora_lambda must be a finite number >= 0 (got " << sora.lambda << ")";
  // The reference: gate = torch.randn(1, r).
  gate_ = register_parameter("lora_gate", Tensor::randn({rank()}, gen, DType::f32).to(base_weight().device()));
}

Tensor SoraLinear::forward(const Tensor& x_in) const {
  // Tensor parallelism: the same math on this rank's slices (TensorParallelRegion, peft/lora.h).
  const TensorParallelRegion* tp = tensor_parallel_region();
  const Tensor x = tp ? tp->enter(x_in) : x_in;
  auto leave = [tp](const Tensor& y) { return tp ? tp->leave(y) : y; };
  Tensor y = base()->forward(x);
  if (merged()) return leave(y);
  const Tensor a = LoraLinear::lora_A(), b = LoraLinear::lora_B();
  // Under Autocast the factors and the gate are used in the compute dtype (x is already in it).
  Tensor h = ag::linear(adapter_input(x, a.dtype()), models::autocast(a));
  h = ag::mul(h, gate_.dtype() == h.dtype() ? gate_ : ag::cast(gate_, h.dtype()));
  return leave(add_branch(y, ag::mul(ag::linear(h, models::autocast(b)), scaling())));
}

Tensor SoraLinear::delta_weight() const {
  ag::NoGradGuard ng;
  const Tensor a = LoraLinear::lora_A().to(DType::f32);
  // B diag(g): g broadcast over B's rows.
  const Tensor bg = kernels::binary(BinaryOp::mul, LoraLinear::lora_B().to(DType::f32),
                                    gate_.to(DType::f32).reshape({1, rank()}));
  Tensor d = kernels::matmul(bg, a);
  kernels::scale_(d, scaling());
  return d;
}

int64_t SoraLinear::active_ranks() const {
  const std::vector<float> g = gate_.to(DType::f32).to(Device::cpu()).contiguous().to_vector<float>();
  return static_cast<int64_t>(std::count_if(g.begin(), g.end(), [](float v) { return v != 0.0f; }));
}

LoraFactors SoraLinear::lora_factors() const {
  ag::NoGradGuard ng;
  const Tensor a = LoraLinear::lora_A().to(DType::f32).to(Device::cpu()).contiguous();
  const Tensor b = LoraLinear::lora_B().to(DType::f32).to(Device::cpu()).contiguous();
  const std::vector<float> g = gate_.to(DType::f32).to(Device::cpu()).contiguous().to_vector<float>();
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < rank(); ++i)
    if (g[static_cast<size_t>(i)] != 0.0f) keep.push_back(i);
  const int64_t rp = std::max<int64_t>(1, static_cast<int64_t>(keep.size()));
  LoraFactors f;
  f.A = Tensor::zeros({rp, in_features()});
  f.B = Tensor::zeros({out_features(), rp});
  for (size_t k = 0; k < keep.size(); ++k) {
    const int64_t i = keep[k];
    f.A.select(0, static_cast<int64_t>(k)).copy_(a.select(0, i));
    Tensor col = b.select(1, i).contiguous();
    kernels::scale_(col, g[static_cast<size_t>(i)]);
    f.B.select(1, static_cast<int64_t>(k)).copy_(col);
  }
  // All gates zero: one zero rank (peft needs r >= 1). The scale stays alpha / r_max:
  // alpha' = s r' (s sqrt(r') with rsLoRA).
  f.r = rp;
  f.alpha = scaling() * (use_rslora() ? std::sqrt(static_cast<double>(rp)) : static_cast<double>(rp));
  return f;
}

int64_t SoraLinear::adapter_parameters() const {
  return LoraLinear::adapter_parameters() + (gate_.requires_grad() ? gate_.numel() : 0);
}

void sora_after_step(autograd::Module& root, double lr, int64_t step) {
  for (auto& [name, m] : root.named_modules()) {
    auto* s = dynamic_cast<SoraLinear*>(m);
    if (!s) continue;
    sora_proximal(s->gate(), sora_lambda_at(s->sora_options(), step), lr, s->sora_options().threshold);
  }
}

}  // namespace lathe::peft
