// Table-driven CRC-32C: reflected polynomial 0x82F63B78, initial value and final xor
// 0xFFFFFFFF (the parameters of the iSCSI / Castagnoli CRC, RFC 3720 appendix B.4).
#include "train/crc32c.h"

#include <array>

namespace lathe::train {
namespace {

std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
    t[i] = c;
  }
  return t;
}

const std::array<uint32_t, 256>& table() {
  static const std::array<uint32_t, 256> t = make_table();
  return t;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto& t = table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;  // undo the previous final xor so calls can be chained
  for (size_t i = 0; i < n; ++i) c = t[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return ~c;
}

}  // namespace lathe::train
