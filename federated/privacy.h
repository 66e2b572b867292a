// Local differential privacy for federated clients: DP-SGD (Abadi et al. 2016) on the
// trainable tensors and the Renyi-DP accountant of the sampled Gaussian mechanism (Mironov,
// Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism").
//
// One DP step over a batch of B examples: each example's gradient g_i (of the trainable
// tensors, all of them together) is scaled by min(1, C / ||g_i||), the clipped gradients are
// summed, N(0, (sigma C)^2) is added to every element of the sum, and the result is divided
// by B. The accountant treats each step as the sampled Gaussian mechanism with sampling rate
// q = B / n_k and noise multiplier sigma.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace lathe::federated {

// RDP of one step of the sampled Gaussian mechanism at integer order alpha >= 2:
//   (1 / (alpha - 1)) log sum_{k=0..alpha} C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2))
// (Mironov et al. 2019, section 3.3, integer orders), computed in log space.
double rdp_sampled_gaussian(double q, double sigma, int alpha);

class RdpAccountant {
 public:
  RdpAccountant();  // orders 2..64, 80, 96, 128, 256
  // `steps` more steps with sampling rate q and noise multiplier sigma.
  void compose(double q, double sigma, int64_t steps);
  // (epsilon, best order) for target delta: min over orders of rdp - log(delta) / (alpha - 1)
  // (Mironov 2017, proposition 3; the conversion of TF-privacy's rdp_accountant).
  std::pair<double, int> epsilon(double delta) const;
  const std::vector<int>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }

 private:
  std::vector<int> orders_;
  std::vector<double> rdp_;
};

// Adds clip(g) to `sums` (same shapes as `grads`; f32) where clip scales every gradient by
// min(1, clip_norm / ||g||), ||g|| over all tensors together; returns ||g|| before clipping.
double clip_and_accumulate(const std::vector<Tensor>& grads, const std::vector<Tensor>& sums, double clip_norm);

// sums[i] += N(0, std^2) elementwise from `gen`, then sums[i] /= batch.
void noise_and_average(const std::vector<Tensor>& sums, double std, int64_t batch, Generator& gen);

}  // namespace lathe::federated
