#include "data/pretokenize.h"

#include "core/error.h"
#include "data/unicode.h"

namespace lathe {
namespace data {

namespace {

using unicode::CharClass;

struct Char {
  uint32_t cp;
  uint32_t len;
  CharClass cls;
};

// Decodes and classifies the character at i, with an ASCII fast path.
inline Char char_at(const char* s, size_t n, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    // ASCII: letters, digits, and \t \n \v \f \r space are the only non-"other" bytes.
    CharClass c = unicode::kOther;
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z')
      c = unicode::kLetter;
    else if (b >= '0' && b <= '9')
      c = unicode::kNumber;
    else if (b == ' ' || (b >= 0x09 && b <= 0x0D))
      c = unicode::kSpace;
    return {b, 1, c};
  }
  const unicode::Decoded d = unicode::decode_utf8(s, n, i);
  return {d.cp, d.len, unicode::classify(d.cp)};
}

inline bool is_crlf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// Extends a run of characters of class `cls` from `pos`; returns the run's end.
inline size_t run_of(const char* s, size_t n, size_t pos, CharClass cls) {
  while (pos < n) {
    const Char c = char_at(s, n, pos);
    if (c.cls != cls) break;
    pos += c.len;
  }
  return pos;
}

// \s+(?!\S)|\s+ at a whitespace character `pos`: the whole whitespace run when it reaches
// the end of the text, otherwise the run minus its last character (which is left to start
// the next word), or the single character when the run is one long.
inline size_t space_run(const char* s, size_t n, size_t pos) {
  size_t end = pos, last = pos;
  while (end < n) {
    const Char c = char_at(s, n, end);
    if (c.cls != unicode::kSpace) break;
    last = end;
    end += c.len;
  }
  if (end == n) return n;
  return last > pos ? last : end;
}

inline char lower_ascii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// Contractions 's 't 're 've 'm 'll 'd at s[pos] == '\''; 0 when none matches.
// With `fold`, ASCII case is ignored and U+017F (long s, which Unicode case folding maps
// to 's') counts as 's', as the (?i:...) group of the Llama-3 pattern does.
inline size_t contraction(const char* s, size_t n, size_t pos, bool fold) {
  if (pos + 1 >= n) return 0;
  const char a = fold ? lower_ascii(s[pos + 1]) : s[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
  if (pos + 2 < n) {
    const char b = fold ? lower_ascii(s[pos + 2]) : s[pos + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
    if (fold && static_cast<unsigned char>(a) == 0xC5 && static_cast<unsigned char>(s[pos + 2]) == 0xBF)
      return pos + 3;
  }
  return 0;
}

size_t next_gpt2(const char* s, size_t n, size_t pos) {
  const Char c = char_at(s, n, pos);
  if (c.cp == '\'') {
    if (size_t e = contraction(s, n, pos, /*fold=*/false)) return e;
  }
  // ` ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+`: an optional leading space, then a run of
  // one class (the three alternatives differ only in the class of the run).
  if (c.cp == ' ') {
    if (pos + 1 < n) {
      const Char d = char_at(s, n, pos + 1);
      if (d.cls != unicode::kSpace) return run_of(s, n, pos + 1 + d.len, d.cls);
    }
  } else if (c.cls != unicode::kSpace) {
    return run_of(s, n, pos + c.len, c.cls);
  }
  return space_run(s, n, pos);
}

size_t next_llama3(const char* s, size_t n, size_t pos, int max_digits) {
  const Char c = char_at(s, n, pos);
  if (c.cp == '\'') {
    if (size_t e = contraction(s, n, pos, /*fold=*/true)) return e;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c.cls == unicode::kLetter) return run_of(s, n, pos + c.len, unicode::kLetter);
  if (c.cls != unicode::kNumber && !is_crlf(c.cp) && pos + c.len < n) {
    const Char d = char_at(s, n, pos + c.len);
    if (d.cls == unicode::kLetter) return run_of(s, n, pos + c.len + d.len, unicode::kLetter);
  }
  // \p{N}{1,max_digits}
  if (c.cls == unicode::kNumber) {
    size_t end = pos + c.len;
    for (int k = 1; k < max_digits && end < n; ++k) {
      const Char d = char_at(s, n, end);
      if (d.cls != unicode::kNumber) break;
      end += d.len;
    }
    return end;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t other = n + 1;  // start of the "other" run, if this alternative applies
  if (c.cls == unicode::kOther) {
    other = pos;
  } else if (c.cp == ' ' && pos + 1 < n && char_at(s, n, pos + 1).cls == unicode::kOther) {
    other = pos + 1;
  }
  if (other <= n) {
    size_t end = run_of(s, n, other, unicode::kOther);
    while (end < n && (s[end] == '\r' || s[end] == '\n')) ++end;
    return end;
  }
  // Here c is whitespace. `\s*[\r\n]+`: greedy \s* backs off to the last \r or \n of the
  // whitespace run, and [\r\n]+ then takes just that one (nothing after it is \r or \n).
  size_t end = pos, last_crlf = n;
  while (end < n) {
    const Char d = char_at(s, n, end);
    if (d.cls != unicode::kSpace) break;
    if (is_crlf(d.cp)) last_crlf = end;
    end += d.len;
  }
  if (last_crlf < n) return last_crlf + 1;
  return space_run(s, n, pos);
}

}  // namespace

const std::string& pretok_pattern_string(PretokPattern p) {
  static const std::string gpt2 =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  static const std::string llama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  switch (p) {
    case PretokPattern::kGpt2: return gpt2;
    case PretokPattern::kLlama3: return llama3;
    case PretokPattern::kQwen2: return qwen2;
  }
  LATHE_FAIL() << "pretok_pattern_string: unknown pattern " << static_cast<int>(p);
  return gpt2;
}

const char* pretok_name(PretokPattern p) {
  switch (p) {
    case PretokPattern::kGpt2: return "gpt2";
    case PretokPattern::kLlama3: return "llama3";
    case PretokPattern::kQwen2: return "qwen2";
  }
  return "?";
}

size_t next_piece(std::string_view text, size_t pos, PretokPattern p) {
  switch (p) {
    case PretokPattern::kGpt2: return next_gpt2(text.data(), text.size(), pos);
    case PretokPattern::kLlama3: return next_llama3(text.data(), text.size(), pos, 3);
    case PretokPattern::kQwen2: return next_llama3(text.data(), text.size(), pos, 1);
  }
  LATHE_FAIL() << "next_piece: unknown pattern " << static_cast<int>(p);
  return text.size();
}

std::vector<std::string_view> pretokenize(std::string_view text, PretokPattern p) {
  std::vector<std::string_view> out;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = next_piece(text, pos, p);
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

}  // namespace data
}  // namespace lathe
