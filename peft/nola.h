// NOLA (Koohpayegani et al., "NOLA: Compressing LoRA using Linear Combination of Random
// Basis", ICLR 2024): the LoRA factors are linear combinations of fixed random bases,
//   A = A0 + sum_i a_i Ahat_i  (i < k_A),   B = sum_j b_j Bhat_j  (j < k_B),
//   y = base(x) + s * B (A drop(x)),
// and only the coefficients a, b train (both start at zero, so the adapter is a no-op at
// step 0 while the gradient of b is non-zero through A0).
//
// The bases are never stored: every basis matrix is drawn from lathe's counter-based Philox
// RNG (core/rng.h) under a key derived from (seed, module, factor, basis index), so it is the
// same on any device, thread count or chunking, and an adapter is its coefficients plus the
// seed. Forward computes A and B chunk by chunk (`chunk` bases generated at a time, then one
// GEMV), and backward regenerates the same chunks for grad a_i = <grad A, Ahat_i>: transient
// memory O(chunk * r * in) instead of O(k * r * in). As the reference, the bases are
// U(-1, 1) / sqrt(k) and A0 is kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); A0 is
// regenerated from the seed too.
//
// Export: plain LoRA with the materialised A and B (LoraLinear::lora_factors).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "peft/lora.h"

namespace lathe::peft {

struct NolaOptions {
  int64_t num_basis_A = 1024;  // k_A
  int64_t num_basis_B = 1024;  // k_B
  int64_t chunk = 64;          // bases generated at a time
};

// Which basis: (seed, module, factor, index). factor 0 = A0, 1 = A's bases, 2 = B's bases.
struct NolaKey {
  uint64_t seed = 0;
  uint32_t module = 0;  // nola_module_key(name)
};
enum class NolaFactor : uint32_t { A0 = 0, A = 1, B = 2 };

// A stable 32-bit key of a module name (FNV-1a), so a module's bases do not depend on which
// other modules carry adapters.
uint32_t nola_module_key(const std::string& module_name);
// The Philox seed of one basis matrix.
uint64_t nola_basis_seed(const NolaKey& key, NolaFactor factor, uint32_t index);
// One basis matrix of `shape`, U(-1, 1) * scale, in dt on dev (generated in f32, then cast).
Tensor nola_basis(const NolaKey& key, NolaFactor factor, uint32_t index, const Shape& shape, double scale, DType dt,
                  Device dev);
// sum_i coef[i] * basis_i (bases U(-1,1) / sqrt(k), k = coef.numel()) as a differentiable op
// of coef, generating `chunk` bases at a time in forward and again in backward.
Tensor nola_combine(const Tensor& coef, const NolaKey& key, NolaFactor factor, const Shape& shape, int64_t chunk);

class NolaLinear : public LoraLinear {
 public:
  // `module_name` keys the bases (nola_module_key); seed = the injection seed.
  NolaLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, const NolaOptions& nola,
             uint64_t seed, const std::string& module_name, Generator* dropout_gen);
  std::string type_name() const override { return "NolaLinear"; }
  const char* method_name() const override { return "NOLA"; }
  Tensor forward(const Tensor& x) const override;

  Tensor coef_A() const { return coef_A_; }
  Tensor coef_B() const { return coef_B_; }
  const NolaKey& key() const { return key_; }
  const NolaOptions& nola_options() const { return nola_; }
  // Tensor parallelism (parallel/tp_lora.h): this layer is a slice of a whole [out_full,
  // in_full] layer, rows [out_start, out_start + out) and columns [in_start, in_start + in).
  // The bases stay those of the whole matrices (keyed as in one process); A and B are their
  // combinations' slices: A's columns, B's rows. The coefficients are whole.
  void set_shard(int64_t out_full, int64_t out_start, int64_t in_full, int64_t in_start);
  // A0 + sum a_i Ahat_i [r, in] and sum b_j Bhat_j [out, r] in f32 (no autograd history).
  Tensor lora_A() const override;
  Tensor lora_B() const override;
  Tensor delta_weight() const override;
  LoraFactors lora_factors() const override;
  int64_t adapter_parameters() const override;

 private:
  Tensor A0() const;
  Tensor A_diff() const;  // A with autograd history to coef_A
  Tensor B_diff() const;

  NolaOptions nola_;
  NolaKey key_;
  // The whole layer this one is a slice of (set_shard); 0 = not sharded.
  int64_t out_full_ = 0, out_start_ = 0, in_full_ = 0, in_start_ = 0;
  Tensor coef_A_, coef_B_;
};

}  // namespace lathe::peft
