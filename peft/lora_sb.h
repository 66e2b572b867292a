// LoRA-XS (Balazy et al., "LoRA-XS: Low-Rank Adaptation with Extremely Small Number of
// Parameters", 2024) and LoRA-SB (Ponkshe et al., "Initialization using Update Approximation is
// a Silver Bullet for Extreme Efficient Low-Rank Fine-Tuning", 2024): one architecture,
//   y = base(x) + s * B (R (A drop(x))),  R [r, r],
// where only R trains; A [r, in] and B [out, r] are frozen. The two differ in the init:
//   - LoRA-XS (init_from_weight): the truncated SVD of the base weight, W ~= P S Q^T gives
//     A = S Q^T, B = P (B A is the best rank-r approximation of W) and R ~ N(0, sigma^2),
//     sigma = 1e-5 as the reference;
//   - LoRA-SB (init_from_gradient): from the gradient G of the base weight summed over the
//     first training batches, the first step of full fine-tuning with Adam at the first
//     warm-up learning rate eta is approximated as dW = -eta sign(G); its truncated SVD
//     dW ~= P S Q^T gives A = Q^T, B = P, R = diag(S) / s, so s B R A is the best rank-r
//     approximation of dW (the base weight is not compensated: the model starts after that
//     simulated step, as in the paper).
// With orthonormal A rows and B columns the update of R sees the projected gradient
// B^T G A^T (LoRA-SB, section 4). The references force alpha = r (s = 1); lathe keeps the
// LoRA scaling and divides R's init by s, so the initial delta is the same for any alpha.
//
// Export: plain LoRA with A' = R A, B' = B (LoraLinear::lora_factors), which stock peft loads.
#pragma once

#include <cstdint>
#include <memory>

#include "peft/lora.h"

namespace lathe::peft {

struct LoraSbOptions {
  bool gradient_init = true;   // LoRA-SB; false = LoRA-XS (weight SVD)
  int64_t init_batches = 16;   // micro-batches whose gradients are summed (LoRA-SB)
  int64_t svd_niter = 10;      // subspace iterations of the truncated SVD (the references' 10)
  uint64_t svd_seed = 42;      // its random test matrix (the references seed 42)
  double r_init_std = 1e-5;    // LoRA-XS: R ~ N(0, std^2)
};

class LoraSbLinear : public LoraLinear {
 public:
  // A, B and R start at zero (a no-op until one of the inits runs); A and B are frozen.
  LoraSbLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, Generator* dropout_gen);
  std::string type_name() const override { return "LoraSbLinear"; }
  const char* method_name() const override { return "LoRA-SB"; }

  // LoRA-XS: A = S Q^T, B = P from W ~= P S Q^T; R ~ N(0, r_init_std^2) from gen.
  void init_from_weight(const LoraSbOptions& o, Generator& gen);
  // LoRA-SB: dW = -eta sign(grad_sum) [out, in]; A = Q^T, B = P, R = diag(S) / s.
  void init_from_gradient(const Tensor& grad_sum, double eta, const LoraSbOptions& o);
};

}  // namespace lathe::peft
