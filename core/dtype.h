// Element types: f64 (tests, gradcheck), f32, bf16, f16, i64, i32, u8, i8.
// bf16 and f16 are stored as 16-bit patterns; conversions from float round to
// nearest, ties to even, and keep NaN a NaN.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace lathe {

enum class DType : uint8_t { f64, f32, bf16, f16, i64, i32, u8, i8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);           // "f32", "bf16", ...
DType dtype_from_name(const std::string&);  // throws on an unknown name
bool is_floating(DType t);                  // f64, f32, bf16, f16

struct bf16_t {
  uint16_t bits = 0;
};
struct f16_t {
  uint16_t bits = 0;
};

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

inline bf16_t float_to_bf16(float f) {
  uint32_t x = float_to_bits(f);
  bf16_t r;
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet and non-zero
    r.bits = static_cast<uint16_t>((x >> 16) | 0x0040u);
    return r;
  }
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;  // round to nearest, ties to even
  r.bits = static_cast<uint16_t>(x >> 16);
  return r;
}
inline float bf16_to_float(bf16_t h) { return bits_to_float(static_cast<uint32_t>(h.bits) << 16); }

f16_t float_to_f16(float f);
float f16_to_float(f16_t h);

// Compile-time mapping from C++ types to DType.
template <typename T>
struct dtype_of;
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<bf16_t> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<f16_t> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::i8; };

// Loads and stores any dtype through double (used by copies, casts and slow paths).
double load_as_double(const void* p, DType t);
void store_from_double(void* p, DType t, double v);

// LATHE_DISPATCH_DTYPE(dt, T, body): runs body with T bound to the C++ type of dt.
#define LATHE_DISPATCH_DTYPE(dt, T, ...)                          \
  switch (dt) {                                                   \
    case ::lathe::DType::f64: { using T = double; __VA_ARGS__; break; }   \
    case ::lathe::DType::f32: { using T = float; __VA_ARGS__; break; }    \
    case ::lathe::DType::bf16: { using T = ::lathe::bf16_t; __VA_ARGS__; break; } \
    case ::lathe::DType::f16: { using T = ::lathe::f16_t; __VA_ARGS__; break; }   \
    case ::lathe::DType::i64: { using T = int64_t; __VA_ARGS__; break; }  \
    case ::lathe::DType::i32: { using T = int32_t; __VA_ARGS__; break; }  \
    case ::lathe::DType::u8: { using T = uint8_t; __VA_ARGS__; break; }   \
    case ::lathe::DType::i8: { using T = int8_t; __VA_ARGS__; break; }    \
  }

// Scalar conversion helpers usable in templates: to_f32 / from_f32 for every type.
template <typename T> inline float to_f32(T v) { return static_cast<float>(v); }
template <> inline float to_f32(bf16_t v) { return bf16_to_float(v); }
template <> inline float to_f32(f16_t v) { return f16_to_float(v); }
template <typename T> inline T from_f32(float v) { return static_cast<T>(v); }
template <> inline bf16_t from_f32(float v) { return float_to_bf16(v); }
template <> inline f16_t from_f32(float v) { return float_to_f16(v); }

}  // namespace lathe
