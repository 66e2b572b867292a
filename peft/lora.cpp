#include "peft/lora.h"

#include <cmath>
#include <typeinfo>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "models/autocast.h"
#include "peft/lora_op.h"

namespace lathe::peft {

namespace ag = lathe::autograd;

const char* lora_init_name(LoraInit i) {
  switch (i) {
    case LoraInit::kaiming: return "kaiming";
    case LoraInit::gaussian: return "gaussian";
    case LoraInit::zeros: return "zeros";
  }
  return "?";
}

double lora_scaling(int64_t r, double alpha, bool use_rslora) {
  LATHE_REQUIRE(r > 0) << "LoRA: the rank r must be > 0 (got " << r << ")";
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

LoraLinear::LoraLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& o, Generator& gen,
                       Generator* dropout_gen)
    : LoraLinear(std::move(base), o, dropout_gen, NoFactors{}) {
  const int64_t in = base_->in_features(), out = base_->out_features();
  const Tensor w = base_->base_weight();
  A_ = register_module("lora_A", std::make_shared<models::Linear>(in, o.r, false));
  B_ = register_module("lora_B", std::make_shared<models::Linear>(o.r, out, false));
  const Tensor a = A_->weight();
  switch (o.init) {
    case LoraInit::kaiming: {
      // peft: nn.init.kaiming_uniform_(A, a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound
      // gain * sqrt(3 / fan_in) = 1 / sqrt(in).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      a.copy_(kernels::affine(Tensor::rand(a.shape(), gen, DType::f32), 2 * bound, -bound));
      break;
    }
    case LoraInit::gaussian:
      // peft: nn.init.normal_(A, std=1 / r).
      a.copy_(kernels::affine(Tensor::randn(a.shape(), gen, DType::f32), 1.0 / static_cast<double>(o.r), 0.0));
      break;
    case LoraInit::zeros: break;
  }
  if (!w.device().is_cpu()) {
    A_->to(w.device());
    B_->to(w.device());
  }
  train(base_->is_training());
}

LoraLinear::LoraLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& o, Generator* dropout_gen,
                       NoFactors)
    : base_(std::move(base)),
      r_(o.r),
      alpha_(o.alpha),
      rslora_(o.use_rslora),
      scale_(lora_scaling(o.r, o.alpha, o.use_rslora)),
      dropout_(o.dropout),
      dropout_gen_(dropout_gen) {
  LATHE_REQUIRE(base_ != nullptr) << "LoraLinear: no base layer";
  LATHE_REQUIRE(dynamic_cast<LoraLinear*>(base_.get()) == nullptr)
      << "LoraLinear: the layer already carries a LoRA adapter (one adapter per layer)";
  LATHE_REQUIRE(o.dropout >= 0 && o.dropout < 1) << "LoRA: lora_dropout must be in [0, 1) (got " << o.dropout << ")";
  LATHE_REQUIRE(o.dropout == 0 || dropout_gen != nullptr) << "LoraLinear: dropout needs a generator";
  const Tensor w = base_->base_weight();
  LATHE_REQUIRE(w.defined() && w.dim() == 2) << "LoraLinear: the base layer has no [out, in] weight";
  // The base parameters keep their names (`weight`, `bias`) under this module and are frozen:
  // the same tensors, so the base layer's forward and every handle see one registry entry.
  register_parameter("weight", w, false);
  if (base_->base_bias().defined()) register_parameter("bias", base_->base_bias(), false);
  train(base_->is_training());
}

void LoraLinear::train(bool on) {
  models::LinearLayer::train(on);
  if (base_) base_->train(on);
}

void LoraLinear::add_middle_factor() {
  LATHE_REQUIRE(!R_) << "LoraLinear: the middle factor exists already";
  R_ = register_module("lora_R", std::make_shared<models::Linear>(r_, r_, false));
  const Device d = A_->weight().device();
  if (!d.is_cpu()) R_->to(d);
}

Tensor LoraLinear::adapter_input(const Tensor& x, DType dt) const {
  // As peft: the adapter computes in its own dtype (x cast to it) and hands back the base
  // output's dtype. Under Autocast both run in the compute dtype.
  Tensor h = models::Autocast::enabled() ? models::autocast(x) : x.dtype() == dt ? x : ag::cast(x, dt);
  if (dropout_ > 0)
    h = region_ ? region_->dropout(h, dropout_, *dropout_gen_, is_training())
                : ag::dropout(h, dropout_, *dropout_gen_, is_training());
  return h;
}

Tensor LoraLinear::add_branch(const Tensor& y, const Tensor& delta) {
  return ag::add(y, delta.dtype() != y.dtype() ? ag::cast(delta, y.dtype()) : delta);
}

Tensor LoraLinear::fused_forward(const Tensor& x) const {
  // Only over a plain Linear (a subclass or another layer may do more in its forward: a
  // tensor-parallel one communicates), and where base and adapter compute in one dtype.
  if (!A_ || !B_ || typeid(*base_) != typeid(models::Linear) || x.dim() < 2) return Tensor();
  const auto& lin = static_cast<const models::Linear&>(*base_);
  const Tensor w = lin.weight(), bias = lin.bias(), a = A_->weight(), b = B_->weight(),
               rm = R_ ? R_->weight() : Tensor();
  if (!models::Autocast::enabled())
    for (const Tensor* t : {&w, &bias, &a, &b, &rm})
      if (t->defined() && t->dtype() != x.dtype()) return Tensor();
  using models::autocast;
  const Tensor xc = autocast(x);
  // The adapter reads x itself unless dropout draws a mask (none in eval): then adapter_input's.
  const Tensor xa = dropout_ > 0 && is_training() ? adapter_input(x, xc.dtype()) : Tensor();
  return lora_linear(xc, autocast(w), autocast(bias), xa, autocast(a), autocast(b), autocast(rm), scale_);
}

Tensor LoraLinear::forward(const Tensor& x) const {
  // Tensor parallelism: the same math on this rank's slices (TensorParallelRegion).
  if (region_) return region_->leave(local_forward(region_->enter(x)));
  return local_forward(x);
}

Tensor LoraLinear::local_forward(const Tensor& x) const {
  if (!merged_)
    if (Tensor y = fused_forward(x); y.defined()) return y;
  Tensor y = base_->forward(x);
  if (merged_) return y;
  Tensor h = A_->forward(adapter_input(x, A_->weight().dtype()));
  if (R_) h = R_->forward(h);
  // The scale goes on the r-wide intermediate, not the out-wide branch output: r << out, so the
  // multiply (and its backward) touches r/out of the elements. s B h == B (s h) exactly up to
  // rounding.
  return add_branch(y, B_->forward(ag::mul(h, scale_)));
}

void LoraLinear::set_tensor_parallel(std::shared_ptr<models::LinearLayer> base,
                                     std::shared_ptr<const TensorParallelRegion> region) {
  LATHE_REQUIRE(base && region) << "LoraLinear::set_tensor_parallel: no base layer or region";
  LATHE_REQUIRE(!merged_) << "LoraLinear::set_tensor_parallel: merged adapters are not resharded";
  // The shard's tensors under this wrapper's names, frozen as the full ones were.
  replace_parameter("weight", base->base_weight());
  LATHE_REQUIRE(base->base_bias().defined() == has_parameter("bias"))
      << "LoraLinear::set_tensor_parallel: the shard and the base differ in having a bias";
  if (base->base_bias().defined()) {
    replace_parameter("bias", base->base_bias());
  }
  base->train(is_training());
  base_ = std::move(base);
  region_ = std::move(region);
}

LoraFactors LoraLinear::lora_factors() const {
  autograd::NoGradGuard no_grad;
  LoraFactors f;
  f.A = A_->weight().to(DType::f32);
  // LoRA-XS / LoRA-SB: s B (R A) is plain LoRA with A' = R A.
  if (R_) f.A = kernels::matmul(R_->weight().to(DType::f32), f.A);
  f.B = B_->weight().to(DType::f32);
  f.r = r_;
  f.alpha = alpha_;
  return f;
}

Tensor LoraLinear::delta_weight() const {
  autograd::NoGradGuard no_grad;
  Tensor a = A_->weight().to(DType::f32), b = B_->weight().to(DType::f32);
  if (R_) a = kernels::matmul(R_->weight().to(DType::f32), a);
  Tensor d = kernels::matmul(b, a);  // [out, r] @ [r, in]
  kernels::scale_(d, scale_);
  return d;
}

namespace {
// W += sign * delta in f32, rounded once to W's dtype.
void add_delta(const Tensor& w, const Tensor& delta, double sign) {
  autograd::NoGradGuard no_grad;
  if (w.dtype() == DType::f32) {
    kernels::add_(w, delta, sign);
    return;
  }
  Tensor wf = w.to(DType::f32);
  kernels::add_(wf, delta, sign);
  w.copy_(wf);
}
}  // namespace

void LoraLinear::merge() {
  LATHE_REQUIRE(!merged_) << "LoraLinear::merge: the adapter is merged already";
  add_delta(base_->base_weight(), delta_weight(), 1.0);
  merged_ = true;
}

void LoraLinear::unmerge() {
  LATHE_REQUIRE(merged_) << "LoraLinear::unmerge: the adapter is not merged";
  add_delta(base_->base_weight(), delta_weight(), -1.0);
  merged_ = false;
}

int64_t LoraLinear::adapter_parameters() const {
  int64_t n = 0;
  for (const auto* m : {A_.get(), B_.get(), R_.get()})
    if (m && m->weight().requires_grad()) n += m->weight().numel();
  return n;
}

}  // namespace lathe::peft
