// RoPE inverse frequencies of a ModelSpec, with the optional context-extension rescaling
// (declared in models/model.h).
#include <cmath>

#include "core/error.h"
#include "models/model.h"

namespace lathe::models {

const char* rope_scaling_name(RopeScaling::Type t) { return t == RopeScaling::Type::llama3 ? "llama3" : "none"; }

std::vector<double> rope_inv_freq(int64_t D, double theta, const RopeScaling& rs) {
  LATHE_CHECK(D > 0 && D % 2 == 0) << "rope_inv_freq: head_dim must be positive and even, got " << D;
  LATHE_CHECK(theta > 0 && std::isfinite(theta)) << "rope_inv_freq: rope_theta must be finite and > 0, got " << theta;
  std::vector<double> inv(static_cast<size_t>(D / 2));
  // Su et al., "RoFormer": pair i rotates by position * theta^(-2i/D).
  for (int64_t i = 0; i < D / 2; ++i) inv[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
  if (rs.type == RopeScaling::Type::none) return inv;

  // Llama 3 frequency-band rescaling (Meta's Llama 3.1 reference `apply_scaling`): long
  // wavelengths (low frequencies) are interpolated by `factor`, short ones kept, and the
  // band between blends the two linearly in original_max / wavelength.
  LATHE_CHECK(rs.factor >= 1 && std::isfinite(rs.factor))
      << "rope_inv_freq: rope_scaling.factor must be finite and >= 1, got " << rs.factor;
  LATHE_CHECK(rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor && std::isfinite(rs.high_freq_factor))
      << "rope_inv_freq: rope_scaling needs 0 < low_freq_factor < high_freq_factor, got " << rs.low_freq_factor
      << " and " << rs.high_freq_factor;
  LATHE_CHECK(rs.original_max_position_embeddings > 0)
      << "rope_inv_freq: rope_scaling.original_max_position_embeddings must be > 0, got "
      << rs.original_max_position_embeddings;
  const double orig = static_cast<double>(rs.original_max_position_embeddings);
  const double low_freq_wavelen = orig / rs.low_freq_factor;    // longer than this: divide by factor
  const double high_freq_wavelen = orig / rs.high_freq_factor;  // shorter than this: unchanged
  for (double& f : inv) {
    const double wavelen = 2.0 * M_PI / f;
    if (wavelen < high_freq_wavelen) continue;
    if (wavelen > low_freq_wavelen) {
      f /= rs.factor;
    } else {
      const double smooth = (orig / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f = (1.0 - smooth) * f / rs.factor + smooth * f;
    }
  }
  return inv;
}

std::vector<double> rope_inv_freq(const ModelSpec& s) { return rope_inv_freq(s.head_dim(), s.rope_theta, s.rope_scaling); }

}  // namespace lathe::models
