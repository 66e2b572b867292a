#include "kernels/blockwise8.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lathe::kernels {

namespace {

// torch.linspace(0.1, 1, n) in f32: step = (end - start) / (n - 1) in f32; the first half
// counts up from start, the second half down from end.
std::vector<float> linspace_f32(float start, float end, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  const float step = (end - start) / static_cast<float>(n - 1);
  const int64_t halfway = n / 2;
  for (int64_t k = 0; k < n; ++k)
    out[k] = k < halfway ? start + step * static_cast<float>(k) : end - step * static_cast<float>(n - k - 1);
  return out;
}

std::array<float, 256> build_map(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    // Signed: 2^i + 1 boundaries per decade (both signs share them); unsigned: 2^(i+1) + 1.
    const int64_t n = is_signed ? (int64_t(1) << i) + 1 : (int64_t(1) << (i + 1)) + 1;
    const std::vector<float> b = linspace_f32(0.1f, 1.0f, n);
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (int64_t k = 0; k + 1 < n; ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-(scale * mean));
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

}  // namespace

const std::array<float, 256>& quant_map8(bool is_signed) {
  static const std::array<float, 256> s = build_map(true);
  static const std::array<float, 256> u = build_map(false);
  return is_signed ? s : u;
}

bool valid_quant_block(int64_t block) { return block >= 64 && block <= 4096 && (block & (block - 1)) == 0; }

}  // namespace lathe::kernels
