// The hand-made tokenizer.json fixtures in tests/fixtures/tokenizers. Their vocabularies are
// small, so every expected id below is worked out from the merges in the comments.
//
// gpt2_style_tiny.json (ByteLevel pre-tokenizer, merges as "a b" strings):
//   a..z = 0..25, "Ġ"(space) 26, "Ċ"(\n) 27, "'" 28, "." 29, "1" 30, "2" 31, "!" 32,
//   merges by rank -> new id:
//    0 Ġ t->Ġt 33   1 h e->he 34     2 Ġt he->Ġthe 35   3 l l->ll 36     4 e ll->ell 37
//    5 Ġ w->Ġw 38   6 o r->or 39     7 Ġw or->Ġwor 40   8 Ġwor l->Ġworl 41
//    9 Ġworl d->Ġworld 42           10 ' s->'s 43       11 1 2->12 44    12 Ġ 12->Ġ12 45
//   13 a t->at 46  14 c at->cat 47  15 Ġ c->Ġc 48      16 Ġc at->Ġcat 49
//   17 h ell->hell 50               18 hell o->hello 51;  <|endoftext|> 52 (added, special).
//
// llama3_style_tiny.json (Sequence[Split(Llama-3 regex), ByteLevel], merges as pairs,
// ignore_merges = true):
//   a..z = 0..25, I 26, T 27, S 28, Ġ 29, Ċ 30, ' 31, 1..5 = 32..36, ! 37,
//   merges: 0 h e->he 38  1 l l->ll 39  2 he ll->hell 40  3 Ġ w->Ġw 41  4 1 2->12 42
//           5 12 3->123 43  6 ' S->'S 44  7 I T->IT 45  8 Ċ Ċ->ĊĊ 46  9 o r->or 47  10 ! h->!h 48
//   plus "hello" 49 (in the vocab, made by no merge); <|begin_of_text|> 50, <|end_of_text|> 51.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe.h"

using namespace lathe::data;

namespace {

const std::string kGpt2Tiny = "tests/fixtures/tokenizers/gpt2_style_tiny.json";
const std::string kLlama3Tiny = "tests/fixtures/tokenizers/llama3_style_tiny.json";
using Ids = std::vector<int32_t>;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST(TokFixtures, Gpt2StyleMergesByRank) {
  auto t = load_tokenizer(kGpt2Tiny);
  EXPECT_EQ(t->vocab_size(), 53);
  // "hello": pairs (h,e) rank 1 and (l,l) rank 3 are merged first, giving he + ll + o; the
  // merges "e ll", "h ell", "hell o" can then never apply, so "hello" (51) is not reached.
  // " world": Ġw (5), or (6), Ġwor (7), Ġworl (8), Ġworld (9): one token.
  EXPECT_EQ(t->encode("hello world"), (Ids{34, 36, 14, 42}));
  // "the" -> t + he (no "t he" merge); " cat" -> "a t" (13) before "Ġ c" (15), then
  // "c at" (14), leaving Ġ + cat (there is no "Ġ cat" merge); "'s" is a contraction piece
  // merged by rank 10; " 12" -> 1 2 (11) then Ġ 12 (12); "!" is a single byte.
  EXPECT_EQ(t->encode("the cat's 12!"), (Ids{19, 34, 26, 47, 43, 45, 32}));
  // " the": Ġ t (0), then h e (1), then Ġt he (2); the newline is byte-token Ċ.
  EXPECT_EQ(t->encode(" the\n"), (Ids{35, 27}));
  EXPECT_EQ(t->encode("hello<|endoftext|> world"), (Ids{34, 36, 14, 52, 42}));
  EXPECT_EQ(t->eos_id(), 52);
  for (const std::string s : {"hello world", "the cat's 12!", " the\n", "hello<|endoftext|> world"})
    EXPECT_EQ(t->decode(t->encode(s)), s);
  EXPECT_EQ(t->token_to_id("Ġthe"), 35);
  EXPECT_EQ(t->id_to_token(35), "Ġthe");
}

TEST(TokFixtures, Gpt2StyleMissingByteIsAnError) {
  auto t = load_tokenizer(kGpt2Tiny);
  // 'Q' has no token in this vocabulary and there is no unk_token.
  try {
    t->encode("Quiet");
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("0x51"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gpt2_style_tiny.json"), std::string::npos) << msg;
  }
  // With special tokens disallowed, "<|endoftext|>" is text, and '<' has no token either.
  EXPECT_THROW(t->encode("<|endoftext|>", false), lathe::Error);
}

TEST(TokFixtures, Llama3StyleIgnoreMergesAndPattern) {
  auto t = load_tokenizer(kLlama3Tiny);
  EXPECT_EQ(t->vocab_size(), 52);
  // "hello" is a vocab entry, and ignore_merges maps a word in the vocab directly (49).
  // " world": Ġ w (3), o r (9), then nothing merges Ġw/or/l/d.
  EXPECT_EQ(t->encode("hello world"), (Ids{49, 41, 47, 11, 3}));
  // Pieces "IT", "'S" (case-insensitive contraction), " ", "123", "45" (digits by three):
  // "IT", "'S", "123" are vocab entries; "45" has no merge -> 4, 5.
  EXPECT_EQ(t->encode("IT'S 12345"), (Ids{45, 44, 29, 43, 35, 36}));
  // "\n\n" is one piece (\s*[\r\n]+) and a vocab entry; "there" -> t, he, r, e.
  EXPECT_EQ(t->encode("hi\n\nthere"), (Ids{7, 8, 46, 19, 38, 17, 4}));
  // "!hello" is one piece ([^\r\n\p{L}\p{N}]?\p{L}+), not in the vocab, so BPE runs:
  // h e (0) before ! h (10), then l l (1), then he ll (2): ! + hell + o.
  EXPECT_EQ(t->encode("!hello"), (Ids{37, 40, 14}));
  EXPECT_EQ(t->encode("<|begin_of_text|>hello<|end_of_text|>"), (Ids{50, 49, 51}));
  EXPECT_EQ(t->bos_id(), 50);
  EXPECT_EQ(t->eos_id(), 51);
  for (const std::string s : {"hello world", "IT'S 12345", "hi\n\nthere", "!hello"})
    EXPECT_EQ(t->decode(t->encode(s)), s);
}

TEST(TokFixtures, Llama3StyleWithoutIgnoreMerges) {
  // The same file with ignore_merges off: "hello" goes through the merges, h e (0), l l (1),
  // he ll (2) -> hell + o, instead of the direct vocab entry 49.
  nlohmann::json j = nlohmann::json::parse(slurp(kLlama3Tiny));
  j["model"]["ignore_merges"] = false;
  auto t = BpeTokenizer::from_json_text(j.dump(), "llama3_style_tiny (ignore_merges=false)");
  EXPECT_EQ(t->encode("hello"), (Ids{40, 14}));
  EXPECT_NE(t->id(), load_tokenizer(kLlama3Tiny)->id());
}

TEST(TokFixtures, DirectoryWithTokenizerConfig) {
  // A directory holding tokenizer.json and a tokenizer_config.json that names the roles.
  const std::string dir = testing::TempDir() + "tok_fixture_dir_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << slurp(kLlama3Tiny);
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|begin_of_text|>", "pad_token": "<|end_of_text|>"})";
  auto t = load_tokenizer(dir);
  EXPECT_EQ(t->bos_id(), 50);
  EXPECT_EQ(t->eos_id(), 50);
  EXPECT_EQ(t->pad_id(), 51);
  EXPECT_EQ(t->encode("hello"), (Ids{49}));
  std::filesystem::remove_all(dir);
}

TEST(TokFixtures, Qwen2PatternNfcNormalizerAndUnk) {
  nlohmann::json j = nlohmann::json::parse(slurp(kLlama3Tiny));
  // Qwen2 writes single digits (\p{N}) and an NFC normalizer, which is accepted.
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pretok_pattern_string(PretokPattern::kQwen2);
  j["normalizer"] = {{"type", "NFC"}};
  auto q = BpeTokenizer::from_json_text(j.dump(), "qwen2-style");
  EXPECT_EQ(q->pattern(), PretokPattern::kQwen2);
  // "123" is now three pieces, none merged across: 1, 2, 3 (the Llama-3 pattern gives 43).
  EXPECT_EQ(q->encode("123"), (Ids{32, 33, 34}));
  // Another normalizer is refused by name.
  j["normalizer"] = {{"type", "Lowercase"}};
  try {
    BpeTokenizer::from_json_text(j.dump(), "lowercase-normalizer");
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Lowercase"), std::string::npos) << e.what();
  }
  // With an unk_token, a byte outside the vocabulary becomes unk instead of an error.
  nlohmann::json g = nlohmann::json::parse(slurp(kGpt2Tiny));
  g["model"]["unk_token"] = "!";
  auto u = BpeTokenizer::from_json_text(g.dump(), "gpt2-tiny-with-unk");
  EXPECT_EQ(u->encode("Qa"), (Ids{32, 0}));
  EXPECT_EQ(u->special_ids().unk, 32);
}
