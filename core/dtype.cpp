#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace lathe {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::u8: case DType::i8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f64: return "f64";
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i64: return "i64";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
    case DType::i8: return "i8";
  }
  return "?";
}

DType dtype_from_name(const std::string& s) {
  for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i64, DType::i32, DType::u8,
                  DType::i8})
    if (s == dtype_name(t)) return t;
  LATHE_FAIL() << "unknown dtype '" << s << "' (expected one of f64, f32, bf16, f16, i64, i32, u8, i8)";
  return DType::f32;
}

bool is_floating(DType t) {
  return t == DType::f64 || t == DType::f32 || t == DType::bf16 || t == DType::f16;
}

// IEEE binary16 with round-to-nearest-even, subnormals, infinities and NaN.
f16_t float_to_f16(float f) {
  uint32_t x = float_to_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  f16_t r;
  if (ax > 0x7f800000u) {  // NaN
    r.bits = static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    return r;
  }
  if (ax >= 0x477ff000u) {  // rounds to >= 65520: overflow to infinity
    r.bits = static_cast<uint16_t>(sign | 0x7c00u);
    return r;
  }
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value = ax as float; half subnormal unit is 2^-24. Scale and round to nearest even.
    float a = bits_to_float(ax);
    float scaled = a * 16777216.0f;  // 2^24, exact
    float rounded = std::nearbyint(scaled);  // default rounding mode: ties to even
    r.bits = static_cast<uint16_t>(sign | static_cast<uint32_t>(rounded));
    return r;
  }
  // normal: rebias exponent from 127 to 15 and round the 13 dropped mantissa bits
  uint32_t lsb = (ax >> 13) & 1u;
  uint32_t v = ax + 0xfffu + lsb;
  v -= (112u << 23);  // rebias
  r.bits = static_cast<uint16_t>(sign | (v >> 13));
  return r;
}

float f16_to_float(f16_t h) {
  uint32_t sign = (static_cast<uint32_t>(h.bits) & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0) {
    float v = static_cast<float>(man) / 16777216.0f;  // man * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

double load_as_double(const void* p, DType t) {
  switch (t) {
    case DType::f64: return *static_cast<const double*>(p);
    case DType::f32: return *static_cast<const float*>(p);
    case DType::bf16: return bf16_to_float(*static_cast<const bf16_t*>(p));
    case DType::f16: return f16_to_float(*static_cast<const f16_t*>(p));
    case DType::i64: return static_cast<double>(*static_cast<const int64_t*>(p));
    case DType::i32: return *static_cast<const int32_t*>(p);
    case DType::u8: return *static_cast<const uint8_t*>(p);
    case DType::i8: return *static_cast<const int8_t*>(p);
  }
  return 0;
}

void store_from_double(void* p, DType t, double v) {
  switch (t) {
    case DType::f64: *static_cast<double*>(p) = v; break;
    case DType::f32: *static_cast<float*>(p) = static_cast<float>(v); break;
    case DType::bf16: *static_cast<bf16_t*>(p) = float_to_bf16(static_cast<float>(v)); break;
    case DType::f16: *static_cast<f16_t*>(p) = float_to_f16(static_cast<float>(v)); break;
    case DType::i64: *static_cast<int64_t*>(p) = static_cast<int64_t>(v); break;
    case DType::i32: *static_cast<int32_t*>(p) = static_cast<int32_t>(v); break;
    case DType::u8: *static_cast<uint8_t*>(p) = static_cast<uint8_t>(v); break;
    case DType::i8: *static_cast<int8_t*>(p) = static_cast<int8_t>(v); break;
  }
}

}  // namespace lathe
