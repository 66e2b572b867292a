// CRC-32C (Castagnoli), the checksum TFRecord framing uses for TensorBoard event files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lathe::train {

// CRC-32C of n bytes, continuing from `crc` (the value returned for the bytes before;
// 0 to start). crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
inline uint32_t crc32c(const std::string& s) { return crc32c(s.data(), s.size()); }
// The same CRC by the byte-at-a-time table, whatever the processor (crc32c uses the SSE 4.2
// instruction when there is one); for testing that the two agree.
uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc = 0);

// TFRecord stores CRCs "masked" so that a CRC of data that itself holds CRCs stays
// well distributed: rotate right by 15 bits, then add a constant.
inline uint32_t crc32c_mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }
inline uint32_t crc32c_unmask(uint32_t masked) {
  uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

}  // namespace lathe::train
