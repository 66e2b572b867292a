#include "data/unicode.h"

#include <vector>

#include "core/error.h"

namespace lathe {
namespace data {
namespace unicode {

Decoded decode_utf8(const char* s, size_t n, size_t i) {
  const auto* u = reinterpret_cast<const unsigned char*>(s);
  const uint32_t b0 = u[i];
  if (b0 < 0x80) return {b0, 1};
  // Expected length and the minimum value that needs it (to reject overlong forms).
  uint32_t len, cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return {kInvalid, 1};
  }
  if (i + len > n) return {kInvalid, 1};
  for (uint32_t k = 1; k < len; ++k) {
    const uint32_t b = u[i + k];
    if ((b & 0xC0) != 0x80) return {kInvalid, 1};
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {kInvalid, 1};
  return {cp, len};
}

void append_utf8(std::string& out, uint32_t cp) {
  LATHE_CHECK(cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF))
      << "append_utf8: code point 0x" << std::hex << cp << " is not a Unicode scalar value";
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// One byte per code point (1.1 MB), filled once from the generated ranges. A flat table
// keeps classify() branch-free on the hot path of encoding.
const std::vector<uint8_t>& class_table() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(0x110000, kOther);
    auto fill = [&t](const uint32_t (*r)[2], size_t count, CharClass c) {
      for (size_t k = 0; k < count; ++k)
        for (uint32_t cp = r[k][0]; cp <= r[k][1]; ++cp) t[cp] = c;
    };
    fill(tables::kLetterRanges, tables::kLetterRangesCount, kLetter);
    fill(tables::kNumberRanges, tables::kNumberRangesCount, kNumber);
    fill(tables::kSpaceRanges, tables::kSpaceRangesCount, kSpace);
    return t;
  }();
  return table;
}

}  // namespace

CharClass classify(uint32_t cp) {
  if (cp >= 0x110000) return kOther;
  static const uint8_t* t = class_table().data();
  return static_cast<CharClass>(t[cp]);
}

bool is_valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const Decoded d = decode_utf8(s.data(), s.size(), i);
    if (d.cp == kInvalid) return false;
    i += d.len;
  }
  return true;
}

}  // namespace unicode
}  // namespace data
}  // namespace lathe
