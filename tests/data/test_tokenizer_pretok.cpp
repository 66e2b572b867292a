// UTF-8 decoding, the Unicode class tables and the hand-written pre-tokenizer patterns.
// Expected splits follow from the patterns' alternation order (first alternative that
// matches wins); each case says which alternative decides it.
#include <gtest/gtest.h>

#include <random>

#include "data/pretokenize.h"
#include "data/unicode.h"

using namespace lathe::data;

namespace {

std::vector<std::string> split(const std::string& s, PretokPattern p) {
  std::vector<std::string> out;
  for (auto v : pretokenize(s, p)) out.emplace_back(v);
  return out;
}
using V = std::vector<std::string>;

}  // namespace

TEST(TokUnicode, DecodeEncodeRoundTripAllScalarValues) {
  // Every scalar value encodes to 1..4 bytes by the UTF-8 length rule and decodes back.
  for (uint32_t cp = 0; cp <= 0x10FFFF; cp += (cp < 0x3000 ? 1 : 37)) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string s;
    unicode::append_utf8(s, cp);
    const size_t want = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    ASSERT_EQ(s.size(), want) << cp;
    const auto d = unicode::decode_utf8(s.data(), s.size(), 0);
    ASSERT_EQ(d.cp, cp);
    ASSERT_EQ(d.len, want);
  }
}

TEST(TokUnicode, InvalidSequencesDecodeAsOneInvalidByte) {
  const std::vector<std::string> bad = {
      "\x80",              // lone continuation byte
      "\xC0\xAF",          // overlong '/'
      "\xE0\x80\xAF",      // overlong, 3 bytes
      "\xED\xA0\x80",      // surrogate U+D800
      "\xF4\x90\x80\x80",  // U+110000
      "\xE4\xB8",          // truncated 3-byte sequence
      "\xFF",
  };
  for (const auto& s : bad) {
    const auto d = unicode::decode_utf8(s.data(), s.size(), 0);
    EXPECT_EQ(d.cp, unicode::kInvalid) << "bytes of size " << s.size();
    EXPECT_EQ(d.len, 1u);
    EXPECT_FALSE(unicode::is_valid_utf8(s));
  }
  EXPECT_TRUE(unicode::is_valid_utf8("caf\xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80"));
}

TEST(TokUnicode, ClassesOfKnownCodePoints) {
  for (uint32_t cp : {uint32_t('a'), uint32_t('Z'), 0xE9u /*é*/, 0x4E2Du /*中*/, 0x0628u /*ب*/, 0x3042u /*あ*/,
                      0x01C5u /*Dž, Lt*/, 0x02B0u /*ʰ, Lm*/})
    EXPECT_EQ(unicode::classify(cp), unicode::kLetter) << std::hex << cp;
  for (uint32_t cp : {uint32_t('0'), 0x0663u /*Arabic-Indic 3, Nd*/, 0x216Bu /*Ⅻ, Nl*/, 0xB2u /*², No*/})
    EXPECT_EQ(unicode::classify(cp), unicode::kNumber) << std::hex << cp;
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u,
                      0x2029u, 0x202Fu, 0x205Fu, 0x3000u})
    EXPECT_EQ(unicode::classify(cp), unicode::kSpace) << std::hex << cp;
  // Combining marks (Mn), punctuation, symbols, emoji, controls that are not White_Space.
  for (uint32_t cp : {0x0301u, uint32_t('!'), uint32_t('\''), 0x20ACu /*€*/, 0x1F600u, 0x1Cu, 0x200Bu /*ZWSP*/,
                      unicode::kInvalid})
    EXPECT_EQ(unicode::classify(cp), unicode::kOther) << std::hex << cp;
}

TEST(TokPretok, Gpt2Pattern) {
  const auto P = PretokPattern::kGpt2;
  // ` ?\p{L}+` takes the space before a word; punctuation is its own run.
  EXPECT_EQ(split("Hello, world!", P), (V{"Hello", ",", " world", "!"}));
  // Contractions are matched first, case-sensitively: "'S" is not one.
  EXPECT_EQ(split("don't I'll WE'RE", P), (V{"don", "'t", " I", "'ll", " WE", "'", "RE"}));
  // `\s+(?!\S)` leaves the last space of a run for the next word; a single newline before a
  // word falls through to `\s+`.
  EXPECT_EQ(split("a   b\n\nc", P), (V{"a", "  ", " b", "\n", "\n", "c"}));
  // Whitespace at the end is one piece.
  EXPECT_EQ(split("x \t ", P), (V{"x", " \t "}));
  // Numbers are runs of any length; letters and numbers never share a piece.
  EXPECT_EQ(split(" 12345abc 3.14", P), (V{" 12345", "abc", " 3", ".", "14"}));
  // Non-ASCII: é is a letter, 中文 letters, the emoji is "other", U+3000 is whitespace.
  EXPECT_EQ(split("caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87\xF0\x9F\x98\x80\xE3\x80\x80x", P),
            (V{"caf\xC3\xA9", " \xE4\xB8\xAD\xE6\x96\x87", "\xF0\x9F\x98\x80", "\xE3\x80\x80", "x"}));
  // A combining accent (Mn) is not a letter, so "e\u0301" splits.
  EXPECT_EQ(split("e\xCC\x81t", P), (V{"e", "\xCC\x81", "t"}));
}

TEST(TokPretok, Llama3Pattern) {
  const auto P = PretokPattern::kLlama3;
  // Case-insensitive contractions.
  EXPECT_EQ(split("WE'RE IT'S", P), (V{"WE", "'RE", " IT", "'S"}));
  // `[^\r\n\p{L}\p{N}]?\p{L}+`: any one non-letter, non-number, non-newline char (space,
  // tab, punctuation) joins the following word.
  EXPECT_EQ(split("!hello\tworld", P), (V{"!hello", "\tworld"}));
  // `\p{N}{1,3}`: digits in groups of three, no leading space.
  EXPECT_EQ(split("x 1234567", P), (V{"x", " ", "123", "456", "7"}));
  // `\s*[\r\n]+` keeps blank lines together, through the last newline of the run.
  EXPECT_EQ(split("a\n\nb", P), (V{"a", "\n\n", "b"}));
  EXPECT_EQ(split("a \n \n  b", P), (V{"a", " \n \n", " ", " b"}));
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`: punctuation takes trailing newlines.
  EXPECT_EQ(split("end.\n\nNext", P), (V{"end", ".\n\n", "Next"}));
  // U+017F (long s) case-folds to 's', so "'ſ" is a contraction.
  EXPECT_EQ(split("'\xC5\xBF", P), (V{"'\xC5\xBF"}));
}

TEST(TokPretok, Qwen2PatternHasSingleDigits) {
  EXPECT_EQ(split("ab 2024", PretokPattern::kQwen2), (V{"ab", " ", "2", "0", "2", "4"}));
}

TEST(TokPretok, PiecesConcatenateToAnyInput) {
  // Random bytes, mostly invalid UTF-8: every pattern still covers the input exactly, with
  // non-empty pieces.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s(rng() % 64, '\0');
    for (auto& c : s) c = static_cast<char>(rng() % 256);
    for (auto p : {PretokPattern::kGpt2, PretokPattern::kLlama3, PretokPattern::kQwen2}) {
      std::string joined;
      for (auto v : pretokenize(s, p)) {
        ASSERT_FALSE(v.empty());
        joined.append(v);
      }
      ASSERT_EQ(joined, s);
    }
  }
}
