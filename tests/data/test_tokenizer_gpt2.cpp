// GPT-2's real tokenizer (../shared/data/gpt2/vocab.json + merges.txt): known ids, ids that
// follow from the vocab, special tokens, exact round trips, and BPE merging checked against
// a plain reference loop.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe.h"
#include "data/pretokenize.h"

using namespace lathe::data;

namespace {

const std::string kGpt2Dir = "../shared/data/gpt2";

const BpeTokenizer& gpt2() {
  static std::unique_ptr<BpeTokenizer> t =
      BpeTokenizer::from_vocab_merges(kGpt2Dir + "/vocab.json", kGpt2Dir + "/merges.txt");
  return *t;
}

const nlohmann::json& gpt2_vocab() {
  static nlohmann::json v = [] {
    std::ifstream f(kGpt2Dir + "/vocab.json");
    return nlohmann::json::parse(f);
  }();
  return v;
}
int32_t vocab_id(const std::string& token) { return gpt2_vocab().at(token).get<int32_t>(); }

std::vector<std::pair<std::string, std::string>> gpt2_merges() {
  std::ifstream f(kGpt2Dir + "/merges.txt");
  std::vector<std::pair<std::string, std::string>> out;
  std::string line;
  std::getline(f, line);  // #version
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    out.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  return out;
}

using Ids = std::vector<int32_t>;

}  // namespace

TEST(TokGpt2, KnownIds) {
  const auto& t = gpt2();
  EXPECT_EQ(t.vocab_size(), 50257);
  // Ids as published for GPT-2 (e.g. the Hugging Face model card / tiktoken "gpt2").
  EXPECT_EQ(t.encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(t.encode("Hello, world!"), (Ids{15496, 11, 995, 0}));
  EXPECT_EQ(t.encode("<|endoftext|>"), (Ids{50256}));
  EXPECT_EQ(t.token_to_id("<|endoftext|>"), 50256);
  EXPECT_EQ(t.eos_id(), 50256);
  EXPECT_EQ(t.bos_id(), 50256);
  EXPECT_FALSE(t.pad_id().has_value());
}

TEST(TokGpt2, IdsThatFollowFromTheVocab) {
  const auto& t = gpt2();
  // " the" is the merge "Ġt he" (rank 6 in merges.txt), so it is one token: "Ġthe".
  EXPECT_EQ(t.encode(" the"), (Ids{vocab_id("Ġthe")}));
  // Pre-tokenization splits "world!" into "world" and "!", each a vocab entry.
  EXPECT_EQ(t.encode("world!"), (Ids{vocab_id("world"), vocab_id("!")}));
  // A newline is byte 0x0A, written "Ċ"; two newlines are split by \s+(?!\S) into two
  // pieces when a word follows ("\n" + "\n"), but stay one piece "ĊĊ" at the end of text.
  EXPECT_EQ(t.encode("a\n\nb"), (Ids{vocab_id("a"), vocab_id("Ċ"), vocab_id("Ċ"), vocab_id("b")}));
  EXPECT_EQ(t.encode("a\n\n"), (Ids{vocab_id("a"), vocab_id("ĊĊ")}));
  // Contractions are their own pieces: "don't" -> "don" + "'t".
  EXPECT_EQ(t.encode("don't"), (Ids{vocab_id("don"), vocab_id("'t")}));
  // Every single byte is a token, through the byte-to-character map (0x00 -> "Ā").
  EXPECT_EQ(t.encode(std::string(1, '\0')), (Ids{vocab_id("Ā")}));
  EXPECT_EQ(byte_to_unicode(' '), "Ġ");
  EXPECT_EQ(byte_to_unicode('\n'), "Ċ");
  EXPECT_EQ(byte_to_unicode('A'), "A");
  EXPECT_EQ(t.id_to_token(vocab_id("Ġthe")), "Ġthe");
  EXPECT_EQ(t.token_bytes(vocab_id("Ġthe")), " the");
}

TEST(TokGpt2, SpecialTokensOnlyWhenAllowed) {
  const auto& t = gpt2();
  const std::string s = "a<|endoftext|>b";
  EXPECT_EQ(t.encode(s, true), (Ids{vocab_id("a"), 50256, vocab_id("b")}));
  const Ids plain = t.encode(s, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256), 0);
  EXPECT_GT(plain.size(), 3u);
  EXPECT_EQ(t.decode(plain), s);
  EXPECT_EQ(t.decode(t.encode(s, true)), s);
  // A partial special token is ordinary text.
  const Ids partial = t.encode("<|endoftext|");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 50256), 0);
  ASSERT_EQ(t.special_tokens().size(), 1u);
  EXPECT_EQ(t.special_tokens()[0].first, "<|endoftext|>");
}

TEST(TokGpt2, RoundTripsVariedUnicode) {
  const auto& t = gpt2();
  const std::vector<std::string> texts = {
      "",
      "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9",                              // accents
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE6\x96\x87\xE7\xAB\xA0",  // Japanese
      "\xE4\xB8\xAD\xE6\x96\x87\xE6\xB5\x8B\xE8\xAF\x95",                          // Chinese
      "\xF0\x9F\x98\x80\xF0\x9F\x8E\x89\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9",  // emoji + ZWJ
      "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 \xD8\xA8\xD8\xA7\xD9\x84\xD8\xB9\xD8\xA7\xD9\x84\xD9\x85",  // Arabic
      "e\xCC\x81 a\xCC\x8A o\xCC\x88\xCC\x81",                                     // combining marks
      "tabs\t\tand\nnewlines\r\n\n   multiple    spaces   ",
      "\xE2\x80\xA8\xE3\x80\x80\xC2\xA0\xC2\x85",                                  // Unicode whitespace
      std::string("nul\0byte", 8),
  };
  for (const auto& s : texts) EXPECT_EQ(t.decode(t.encode(s)), s) << s;
}

TEST(TokGpt2, RoundTripsInvalidUtf8AndRandomBytes) {
  const auto& t = gpt2();
  for (const std::string s : {"\xFF\xFE", "ab\x80" "cd", "\xC3", "\xED\xA0\x80", "\xF0\x9F\x98"})
    EXPECT_EQ(t.decode(t.encode(s)), s);
  std::mt19937 rng(1);
  for (int trial = 0; trial < 100; ++trial) {
    std::string s(rng() % 200, '\0');
    for (auto& c : s) c = static_cast<char>(rng() % 256);
    ASSERT_EQ(t.decode(t.encode(s)), s);
  }
}

TEST(TokGpt2, MatchesReferenceMergeLoop) {
  // Reference: OpenAI's original loop on vocabulary strings: repeatedly merge the adjacent
  // pair with the lowest rank (all its occurrences, left to right) until none has a rank.
  std::map<std::pair<std::string, std::string>, int> rank;
  const auto merges = gpt2_merges();
  for (size_t k = 0; k < merges.size(); ++k) rank.emplace(merges[k], static_cast<int>(k));
  auto reference = [&](const std::string& text) {
    Ids out;
    for (auto piece : pretokenize(text, PretokPattern::kGpt2)) {
      std::vector<std::string> w;
      for (unsigned char b : piece) w.push_back(byte_to_unicode(b));
      while (w.size() > 1) {
        int best = -1;
        std::pair<std::string, std::string> bp;
        for (size_t i = 0; i + 1 < w.size(); ++i) {
          auto it = rank.find({w[i], w[i + 1]});
          if (it != rank.end() && (best < 0 || it->second < best)) best = it->second, bp = it->first;
        }
        if (best < 0) break;
        std::vector<std::string> nw;
        for (size_t i = 0; i < w.size();) {
          if (i + 1 < w.size() && w[i] == bp.first && w[i + 1] == bp.second) {
            nw.push_back(w[i] + w[i + 1]);
            i += 2;
          } else {
            nw.push_back(w[i++]);
          }
        }
        w.swap(nw);
      }
      for (const auto& s : w) out.push_back(vocab_id(s));
    }
    return out;
  };
  // Random text from a mixed alphabet, plus long runs that exercise merging inside one word.
  const std::vector<std::string> alphabet = {"a", "e", "t", "h", "s", " ", " ", "n", "'", "1", "0", ".", "=",
                                             "\n", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80", "T", "r"};
  std::mt19937 rng(3);
  for (int trial = 0; trial < 150; ++trial) {
    std::string s;
    const int n = rng() % 60;
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(gpt2().encode(s, false), reference(s)) << s;
  }
  for (const std::string& s : {std::string(301, '='), std::string(128, '-') + "abc", std::string(77, 'a'),
                              std::string("Supercalifragilisticexpialidocious antidisestablishmentarianism")})
    EXPECT_EQ(gpt2().encode(s), reference(s)) << s;
  // The word cache must give the same ids on the second call.
  const std::string text = "the cat sat on the mat; the cat sat.";
  EXPECT_EQ(gpt2().encode(text), reference(text));
  EXPECT_EQ(gpt2().encode(text), reference(text));
}

TEST(TokGpt2, TokenizerJsonFormGivesSameIdsAndIdentity) {
  // The same tokenizer written as a Hugging Face tokenizer.json (merges as "a b" strings)
  // must encode identically and carry the same identity string.
  nlohmann::json j;
  j["model"] = {{"type", "BPE"}, {"vocab", gpt2_vocab()}, {"merges", nlohmann::json::array()}};
  for (const auto& [a, b] : gpt2_merges()) j["model"]["merges"].push_back(a + " " + b);
  j["added_tokens"] = {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}};
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  auto t2 = BpeTokenizer::from_json_text(j.dump(), "in-memory gpt2");
  EXPECT_EQ(t2->id(), gpt2().id());
  EXPECT_EQ(t2->id().rfind("bpe:", 0), 0u);
  const std::string s = "Hello world, it's 2024!<|endoftext|>\xE4\xB8\xAD";
  EXPECT_EQ(t2->encode(s), gpt2().encode(s));
  EXPECT_EQ(t2->eos_id(), 50256);
  // add_prefix_space changes the ids (a leading " Hello" token) and so the identity.
  j["pre_tokenizer"]["add_prefix_space"] = true;
  auto t3 = BpeTokenizer::from_json_text(j.dump(), "in-memory gpt2 prefix");
  EXPECT_NE(t3->id(), gpt2().id());
  EXPECT_EQ(t3->encode("Hello"), (Ids{vocab_id("ĠHello")}));
}

TEST(TokGpt2, LoadTokenizerSpecs) {
  auto by_dir = load_tokenizer(kGpt2Dir);
  auto by_vocab = load_tokenizer(kGpt2Dir + "/vocab.json");
  EXPECT_EQ(by_dir->id(), gpt2().id());
  EXPECT_EQ(by_vocab->id(), gpt2().id());
  EXPECT_EQ(by_dir->encode("Hello world"), (Ids{15496, 995}));
}

TEST(TokGpt2, ConcurrentEncodingMatchesSequential) {
  // A fresh tokenizer (cold word cache) shared by 4 threads, each encoding its own slice of
  // the corpus; the ids must equal a sequential encoding by another instance.
  auto shared = BpeTokenizer::from_vocab_merges(kGpt2Dir + "/vocab.json", kGpt2Dir + "/merges.txt");
  std::ifstream f("../shared/data/tinyshakespeare.txt", std::ios::binary);
  std::string text(200000, '\0');
  f.read(&text[0], static_cast<std::streamsize>(text.size()));
  const size_t n = 4, chunk = text.size() / n;
  std::vector<Ids> got(n);
  std::vector<std::thread> threads;
  for (size_t k = 0; k < n; ++k)
    threads.emplace_back([&, k] { got[k] = shared->encode(std::string_view(text).substr(k * chunk, chunk)); });
  for (auto& th : threads) th.join();
  for (size_t k = 0; k < n; ++k)
    EXPECT_EQ(got[k], gpt2().encode(std::string_view(text).substr(k * chunk, chunk))) << "slice " << k;
}
