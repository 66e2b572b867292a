// Counter-based random numbers: Philox 4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC'11).
//
// A Generator is (seed, offset). Element i of a fill drawn at offset o depends only on
// (seed, o + i), never on thread count or device, so CPU and CUDA kernels produce the
// same stream and a checkpoint only has to store two integers.
#pragma once

#include <array>
#include <cstdint>

namespace lathe {

// One Philox4x32-10 block: 4 x 32 random bits for a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Uniform float in [0, 1) from 24 random bits; uniform double in [0, 1) from 53 bits.
inline float uint_to_unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
inline double uints_to_unit_double(uint32_t hi, uint32_t lo) {
  uint64_t v = (static_cast<uint64_t>(hi) << 21) ^ (lo >> 11);
  return static_cast<double>(v & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}

  uint64_t seed() const { return seed_; }
  // Number of 32-bit values consumed so far.
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }

  // The 32-bit value at absolute position `index` of this seed's stream.
  uint32_t at(uint64_t index) const;
  // Reserves n values and returns the position of the first (callers fill from it in parallel).
  uint64_t reserve(uint64_t n) {
    uint64_t o = offset_;
    offset_ += n;
    return o;
  }

  // Scalar draws (each consumes values from the stream).
  uint32_t next_u32() { return at(reserve(1)); }
  float uniform() { return uint_to_unit_float(next_u32()); }
  double uniform_double() {
    uint64_t o = reserve(2);
    return uints_to_unit_double(at(o), at(o + 1));
  }
  // Standard normal via Box-Muller (consumes 2 values).
  double normal();

 private:
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

// Standard normal from two 32-bit values (Box-Muller, cosine branch); used by randn so
// that element i depends on values 2i and 2i+1 of the stream only.
double normal_from_uints(uint32_t a, uint32_t b);

}  // namespace lathe
