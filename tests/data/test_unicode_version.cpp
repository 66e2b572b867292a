// The Unicode classes (data/unicode_tables.cpp) are those of the Unicode version Hugging Face
// tokenizers 0.23 uses (16.0), so characters added after Unicode 14 pre-tokenize as they do
// there. Expected splits below are the `tokenizers` library's ByteLevel pre-tokenizer output.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "data/pretokenize.h"
#include "data/unicode.h"

namespace lathe::data {
namespace {

std::string utf8(uint32_t cp) {
  std::string s;
  unicode::append_utf8(s, cp);
  return s;
}

std::vector<std::string> pieces(const std::string& text, PretokPattern p) {
  std::vector<std::string> out;
  for (std::string_view v : pretokenize(text, p)) out.emplace_back(v);
  return out;
}

TEST(UnicodeVersion, TablesAreUnicode16) { EXPECT_STREQ(unicode::tables::kUnicodeVersion, "16.0.0"); }

TEST(UnicodeVersion, CharactersAddedAfterUnicode14) {
  // Letters (general category Lo / Lu) added in 15.0, 15.1 and 16.0.
  EXPECT_TRUE(unicode::is_letter(0x31350));  // CJK Unified Ideographs Extension H (15.0)
  EXPECT_TRUE(unicode::is_letter(0x2EBF0));  // CJK Unified Ideographs Extension I (15.1)
  EXPECT_TRUE(unicode::is_letter(0x13460));  // Egyptian Hieroglyphs Extended-A (16.0)
  EXPECT_TRUE(unicode::is_letter(0x1C89));   // CYRILLIC CAPITAL LETTER TJE (16.0)
  // Digits (Nd) added in 16.0: Kirat Rai.
  EXPECT_TRUE(unicode::is_number(0x16D70));
  EXPECT_TRUE(unicode::is_number(0x16D79));
  // Still as before: an ASCII letter, a CJK ideograph, a space, an unassigned code point.
  EXPECT_TRUE(unicode::is_letter('a'));
  EXPECT_TRUE(unicode::is_letter(0x4E00));
  EXPECT_TRUE(unicode::is_space(0x3000));
  EXPECT_EQ(unicode::classify(0x2FFFF), unicode::kOther);
  // Added in Unicode 17.0, which tokenizers 0.23 does not know yet: not a letter here either.
  EXPECT_EQ(unicode::classify(0x088F), unicode::kOther);
}

TEST(UnicodeVersion, PretokenizesLikeHuggingFaceTokenizers) {
  // With Unicode 14 tables U+31350 was "other" and took the apostrophe along: {"𱍐'", "s"}.
  EXPECT_EQ(pieces(utf8(0x31350) + "'s", PretokPattern::kGpt2),
            (std::vector<std::string>{utf8(0x31350), "'s"}));
  EXPECT_EQ(pieces("x" + utf8(0x2EBF0) + utf8(0x13460) + " " + utf8(0x1C89) + "ab 12" + utf8(0x16D70) + utf8(0x16D71) +
                       "3",
                   PretokPattern::kGpt2),
            (std::vector<std::string>{"x" + utf8(0x2EBF0) + utf8(0x13460), " " + utf8(0x1C89) + "ab",
                                      " 12" + utf8(0x16D70) + utf8(0x16D71) + "3"}));
}

}  // namespace
}  // namespace lathe::data
