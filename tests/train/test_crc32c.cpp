#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "train/crc32c.h"

namespace lathe::train {
namespace {

// Bit-at-a-time CRC-32C straight from the definition (reflected poly 0x82F63B78,
// init and final xor 0xFFFFFFFF), independent of the table in crc32c.cpp.
uint32_t crc32c_bitwise(const std::vector<uint8_t>& d) {
  uint32_t c = 0xFFFFFFFFu;
  for (uint8_t b : d) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

TEST(Crc32c, KnownAnswers) {
  EXPECT_EQ(crc32c(std::string("123456789")), 0xE3069283u);
  // RFC 3720 appendix B.4 test vectors.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c(dec.data(), dec.size()), 0x113FDB5Cu);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, MatchesBitwiseAndChains) {
  std::mt19937 rng(7);
  for (size_t n : {1u, 3u, 64u, 1000u}) {
    std::vector<uint8_t> d(n);
    for (auto& b : d) b = static_cast<uint8_t>(rng());
    uint32_t whole = crc32c(d.data(), d.size());
    EXPECT_EQ(whole, crc32c_bitwise(d)) << "n=" << n;
    size_t cut = n / 3;
    EXPECT_EQ(crc32c(d.data() + cut, n - cut, crc32c(d.data(), cut)), whole) << "n=" << n;
  }
}

TEST(Crc32c, MaskIsTheTfRecordRotation) {
  uint32_t c = 0xE3069283u;
  uint32_t expect = ((c >> 15) | (c << 17)) + 0xa282ead8u;
  EXPECT_EQ(crc32c_mask(c), expect);
  for (uint32_t v : {0u, 1u, 0xFFFFFFFFu, 0x12345678u, c}) EXPECT_EQ(crc32c_unmask(crc32c_mask(v)), v);
}

// The hardware path (SSE 4.2, 8 bytes per step with a byte tail) and the table agree on every
// length and alignment, and both chain.
TEST(Crc32c, HardwareAndTableAgree) {
  std::mt19937 rng(11);
  std::vector<uint8_t> d(4099);
  for (auto& b : d) b = static_cast<uint8_t>(rng());
  for (size_t off : {0u, 1u, 3u, 7u}) {
    for (size_t n : {0u, 1u, 7u, 8u, 9u, 15u, 16u, 17u, 1000u, 4091u}) {
      EXPECT_EQ(crc32c(d.data() + off, n), crc32c_portable(d.data() + off, n)) << off << " " << n;
      const uint32_t a = crc32c(d.data() + off, n / 2);
      EXPECT_EQ(crc32c(d.data() + off + n / 2, n - n / 2, a), crc32c_portable(d.data() + off, n));
    }
  }
}

}  // namespace
}  // namespace lathe::train
