// LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021) with the
// semantics of Hugging Face peft: y = base(x) + s * B(A(drop(x))), A [r, in], B [out, r],
// s = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski, "A Rank Stabilization
// Scaling Factor for Fine-Tuning with LoRA", 2023).
//
// LoraLinear takes a LinearLayer's slot (Module::replace_module) and keeps the base layer's
// parameter names: the base weight stays `<module>.weight` (and `.bias`), frozen, and the
// adapter adds `<module>.lora_A.weight` and `<module>.lora_B.weight`, so checkpoints,
// optimizer groups and the Hugging Face layout of the base tensors are unchanged.
//
// The base weight is registered in both the base layer and this wrapper (one tensor, shared
// TensorImpl), so Module::to and set_data reach both; a replace_parameter of the base weight
// must therefore happen before the adapter is injected. Tensor parallelism instead injects into
// the full model and then swaps in the shard with set_tensor_parallel (parallel/tp_lora.h).
//
// It is the base of the LoRA family: an optional middle factor R [r, r] (LoRA-XS, LoRA-SB:
// y = base(x) + s * B(R(A(drop(x))))) is held by the class, registered as
// `<module>.lora_R.weight` when a subclass creates it, and merge/unmerge use the full
// product s * B R A. Subclasses change which factors train and how they are initialised
// (peft/lora_sb.h), or override forward, delta_weight and lora_factors (peft/sora.h,
// peft/nola.h; NOLA has no A/B parameters: the NoFactors constructor); every member is saved
// in the peft layout through lora_factors() as plain LoRA. peft/methods.h picks the member.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "autograd/module.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "models/linear.h"

namespace lathe::peft {

// Initialisation of A (B always starts at zero, so the adapter is a no-op at step 0).
enum class LoraInit {
  kaiming,   // peft's default (init_lora_weights=True): kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
  gaussian,  // init_lora_weights="gaussian": N(0, (1/r)^2)
  zeros,     // both factors zero (the state a load fills in)
};
const char* lora_init_name(LoraInit i);

struct LoraOptions {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;  // on the adapter branch's input only
  bool use_rslora = false;
  LoraInit init = LoraInit::kaiming;
};

// s = alpha / r, or alpha / sqrt(r) with rsLoRA.
double lora_scaling(int64_t r, double alpha, bool use_rslora);

// An adapter in plain LoRA form: scaling(r, alpha, rslora) * B A is the adapter's delta.
// What every method of the family exports (LoRA-SB: A' = R A; NOLA: the materialised
// factors; SoRA: the gate folded into B and zero ranks dropped), so stock peft loads it.
struct LoraFactors {
  Tensor A, B;  // f32 [r, in], [out, r]
  int64_t r = 0;
  double alpha = 0;
};

// Tensor parallelism (parallel/tp_lora.h): where a sharded adapted layer meets its TP group.
// forward runs the unchanged LoRA math on this rank's slices between enter (on the input,
// before the base and the adapter branch: f for a column-parallel layer) and leave (on their
// sum: g for a row-parallel one), so the branch joins the base's partial sum before the one
// reduction and no collective is added. dropout draws the adapter-input mask of a sliced input
// (the slice of the one-process mask).
class TensorParallelRegion {
 public:
  virtual ~TensorParallelRegion() = default;
  virtual Tensor enter(const Tensor& x) const = 0;
  virtual Tensor leave(const Tensor& y) const = 0;
  virtual Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) const = 0;
};

class LoraLinear : public models::LinearLayer {
 public:
  // Wraps `base` (which keeps serving the forward); its weight is frozen here. A and B are
  // created in f32 on the base weight's device and initialised from `gen` (init). `dropout_gen`
  // (may be null when dropout is 0) draws the adapter-input dropout masks; it must outlive
  // this layer (the model's dropout generator, whose state checkpoints save).
  LoraLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, Generator& gen,
             Generator* dropout_gen);

  Tensor forward(const Tensor& x) const override;
  std::string type_name() const override { return "LoraLinear"; }
  // Also the wrapped base layer (not a child: its parameters are registered here).
  void train(bool on = true) override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  Tensor base_weight() const override { return base_->base_weight(); }
  Tensor base_bias() const override { return base_->base_bias(); }

  const std::shared_ptr<models::LinearLayer>& base() const { return base_; }
  // The factors as parameters (NOLA, which has none, returns them materialised, without
  // autograd history).
  virtual Tensor lora_A() const { return A_->weight(); }
  virtual Tensor lora_B() const { return B_->weight(); }
  Tensor lora_R() const { return R_ ? R_->weight() : Tensor(); }  // undefined for plain LoRA
  int64_t rank() const { return r_; }
  double alpha() const { return alpha_; }
  bool use_rslora() const { return rslora_; }
  double scaling() const { return scale_; }
  double dropout() const { return dropout_; }

  // s * B (R) A in f32 [out, in] (no autograd history).
  virtual Tensor delta_weight() const;
  // The adapter as plain LoRA factors (saving in the peft layout goes through this).
  virtual LoraFactors lora_factors() const;
  // The method's name for reports ("LoRA", "LoRA-SB", ...).
  virtual const char* method_name() const { return "LoRA"; }
  // W += s * B (R) A (computed in f32, rounded once to W's dtype); forward then runs the base
  // alone. Unmerge subtracts the same delta (exact in f32 up to rounding, not in bf16).
  void merge();
  void unmerge();
  bool merged() const { return merged_; }
  // Trainable elements of the adapter factors (A, B, R that require grad).
  virtual int64_t adapter_parameters() const;
  // Tensor parallelism (parallel/tp_lora.h): `base` (this rank's shard of the base layer, no
  // collectives of its own) takes the wrapped layer's place and keeps its parameter names and
  // requires_grad; forward then runs inside `region`. The factors are resliced by the caller
  // (Module::replace_parameter).
  void set_tensor_parallel(std::shared_ptr<models::LinearLayer> base, std::shared_ptr<const TensorParallelRegion> region);
  const TensorParallelRegion* tensor_parallel_region() const { return region_.get(); }

 protected:
  // For members of the family without the A and B parameters (NOLA generates them): the
  // base is wrapped and frozen as above, and no factor is created.
  struct NoFactors {};
  LoraLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, Generator* dropout_gen, NoFactors);
  // The adapter branch's input: x in `dt` with the adapter dropout applied.
  Tensor adapter_input(const Tensor& x, DType dt) const;
  // base(x) + s B (R) A drop(x) as one op and one output buffer (peft/lora_op.h) when the base
  // is a plain Linear and everything computes in one dtype; undefined otherwise (forward then
  // composes base_->forward and the adapter's Linears).
  Tensor fused_forward(const Tensor& x) const;
  // y + delta, with delta cast to y's dtype.
  static Tensor add_branch(const Tensor& y, const Tensor& delta);
  // For subclasses of the family: registers R [r, r] (`lora_R.weight`), zero, trainable.
  void add_middle_factor();
  // forward on this rank's slices (without the tensor-parallel region around it).
  Tensor local_forward(const Tensor& x) const;

 private:
  std::shared_ptr<models::LinearLayer> base_;
  // The factors as bias-free Linears (children lora_A, lora_B, lora_R): their parameter is
  // `weight`, which gives peft's names `lora_A.weight` and `lora_B.weight`.
  std::shared_ptr<models::Linear> A_, B_, R_;
  int64_t r_;
  double alpha_;
  bool rslora_;
  double scale_;
  double dropout_;
  Generator* dropout_gen_;
  bool merged_ = false;
  std::shared_ptr<const TensorParallelRegion> region_;  // null: one process
};

}  // namespace lathe::peft
