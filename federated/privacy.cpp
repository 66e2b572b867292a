#include "federated/privacy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace lathe::federated {

namespace {
double log_add(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  if (b == -std::numeric_limits<double>::infinity()) return a;
  const double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}
}  // namespace

double rdp_sampled_gaussian(double q, double sigma, int alpha) {
  LATHE_CHECK(alpha >= 2) << "rdp_sampled_gaussian: integer order >= 2 expected, got " << alpha;
  if (q <= 0) return 0;
  if (sigma <= 0) return std::numeric_limits<double>::infinity();
  if (q >= 1) return alpha / (2.0 * sigma * sigma);  // the plain Gaussian mechanism
  double log_a = -std::numeric_limits<double>::infinity();
  for (int k = 0; k <= alpha; ++k) {
    const double log_binom = std::lgamma(alpha + 1.0) - std::lgamma(k + 1.0) - std::lgamma(alpha - k + 1.0);
    const double term = log_binom + k * std::log(q) + (alpha - k) * std::log1p(-q) +
                        (static_cast<double>(k) * k - k) / (2.0 * sigma * sigma);
    log_a = log_add(log_a, term);
  }
  return log_a / (alpha - 1);
}

RdpAccountant::RdpAccountant() {
  for (int a = 2; a <= 64; ++a) orders_.push_back(a);
  for (int a : {80, 96, 128, 256}) orders_.push_back(a);
  rdp_.assign(orders_.size(), 0.0);
}

void RdpAccountant::compose(double q, double sigma, int64_t steps) {
  if (steps <= 0) return;
  for (size_t i = 0; i < orders_.size(); ++i) rdp_[i] += static_cast<double>(steps) * rdp_sampled_gaussian(q, sigma, orders_[i]);
}

std::pair<double, int> RdpAccountant::epsilon(double delta) const {
  double best = std::numeric_limits<double>::infinity();
  int order = orders_.front();
  for (size_t i = 0; i < orders_.size(); ++i) {
    const double e = rdp_[i] - std::log(delta) / (orders_[i] - 1);
    if (e < best) {
      best = e;
      order = orders_[i];
    }
  }
  return {best, order};
}

double clip_and_accumulate(const std::vector<Tensor>& grads, const std::vector<Tensor>& sums, double clip_norm) {
  LATHE_CHECK(grads.size() == sums.size()) << "clip_and_accumulate: " << grads.size() << " gradients, " << sums.size()
                                           << " sums";
  std::vector<Tensor> host;
  double sq = 0;
  for (const Tensor& g : grads) {
    host.push_back(g.to(Device::cpu()).to(DType::f32).contiguous());
    const float* p = host.back().data<float>();
    for (int64_t i = 0; i < host.back().numel(); ++i) sq += static_cast<double>(p[i]) * p[i];
  }
  const double norm = std::sqrt(sq);
  const double factor = norm > clip_norm ? clip_norm / norm : 1.0;
  for (size_t t = 0; t < grads.size(); ++t) {
    const float* g = host[t].data<float>();
    float* s = sums[t].data<float>();
    for (int64_t i = 0; i < host[t].numel(); ++i) s[i] += static_cast<float>(factor * g[i]);
  }
  return norm;
}

void noise_and_average(const std::vector<Tensor>& sums, double std, int64_t batch, Generator& gen) {
  for (const Tensor& t : sums) {
    float* s = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double noise = std > 0 ? std * gen.normal() : 0.0;
      s[i] = static_cast<float>((s[i] + noise) / static_cast<double>(batch));
    }
  }
}

}  // namespace lathe::federated
