// GPT-2 ids for harder strings, as Hugging Face's `tokenizers` library (Rust BPE with the
// ByteLevel pre-tokenizer) assigns them from the same vocab.json/merges.txt. Recorded once
// from that library so this test checks lathe against an independent implementation.
#include <gtest/gtest.h>

#include "data/tokenizer.h"

using namespace lathe::data;

TEST(TokenizerReferenceIds, Gpt2MatchesHuggingFaceTokenizers) {
  auto tok = load_tokenizer("../shared/data/gpt2");
  const std::vector<std::pair<std::string, std::vector<int32_t>>> cases = {
      {"Hello world", {15496, 995}},
      {"Hello, world!", {15496, 11, 995, 0}},
      {" the quick brown fox's 123456 jumps\n\n  over",
       {262, 2068, 7586, 21831, 338, 17031, 29228, 18045, 628, 220, 625}},
      {"h\xc3\xa9llo w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\xa4\x96\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f"
       "\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",
       {71, 2634, 18798, 266, 30570, 335, 10545, 245, 98, 17312, 105, 45739, 252, 12520, 97, 244, 41840, 102, 447, 235,
        41840, 102, 447, 235, 41840, 100}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(tok->encode(text), ids) << text;
    EXPECT_EQ(tok->decode(ids), text);
  }
}
