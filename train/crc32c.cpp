// CRC-32C: reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF (the
// parameters of the iSCSI / Castagnoli CRC, RFC 3720 appendix B.4). x86-64 processors with
// SSE 4.2 compute exactly this CRC in hardware (the crc32 instruction, 8 bytes per step,
// ~10x the table's speed), which matters now that every checkpoint tensor is checksummed on
// save and load; elsewhere a table does it a byte at a time.
#include "train/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define LATHE_CRC32C_HW 1
#endif

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

uint32_t crc32c_table(const unsigned char* p, size_t n, uint32_t c) {
  const auto& t = table();
  for (size_t i = 0; i < n; ++i) c = t[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c;
}

#ifdef LATHE_CRC32C_HW
__attribute__((target("sse4.2"))) uint32_t crc32c_hw(const unsigned char* p, size_t n, uint32_t c) {
  uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
  }
  uint32_t c32 = static_cast<uint32_t>(c64);
  for (; n > 0; --n, ++p) c32 = _mm_crc32_u8(c32, *p);
  return c32;
}

bool have_hw() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  const uint32_t c = ~crc;  // undo the previous final xor so calls can be chained
#ifdef LATHE_CRC32C_HW
  if (have_hw()) return ~crc32c_hw(p, n, c);
#endif
  return ~crc32c_table(p, n, c);
}

uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc) {
  return ~crc32c_table(static_cast<const unsigned char*>(data), n, ~crc);
}

}  // namespace lathe::train
