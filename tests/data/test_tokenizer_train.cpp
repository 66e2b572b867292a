// BPE training: the incremental trainer against a plain recount-everything trainer, and a
// 512-token tokenizer trained on the first 200 KB of tinyshakespeare.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe.h"
#include "data/bpe_train.h"

using namespace lathe::data;

namespace {

const std::string kShakespeare = "../shared/data/tinyshakespeare.txt";

std::string read_bytes(const std::string& path, size_t offset, size_t n) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  std::string s(n, '\0');
  f.read(&s[0], static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(f.gcount()));
  return s;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string temp_path(const std::string& name) {
  return testing::TempDir() + std::to_string(::getpid()) + "_" + name;
}

// The merges of a tokenizer.json as raw byte pairs.
std::vector<std::pair<std::string, std::string>> merges_of(const std::string& json_text) {
  const auto j = nlohmann::json::parse(json_text);
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& m : j["model"]["merges"]) {
    std::string a, b;
    EXPECT_TRUE(unicode_to_bytes(m[0].get<std::string>(), a));
    EXPECT_TRUE(unicode_to_bytes(m[1].get<std::string>(), b));
    out.emplace_back(a, b);
  }
  return out;
}

// Reference trainer: recounts every pair of every word before each merge, picks the most
// frequent (smaller ids first on ties, ids assigned as the trainer documents: bytes 0..255,
// then new tokens in merge order), and merges it left to right in every word.
std::vector<std::pair<std::string, std::string>> naive_train(const std::string& text, int32_t n_merged_tokens) {
  std::map<std::string, int64_t> freq;
  for (auto piece : pretokenize(text, PretokPattern::kGpt2)) ++freq[std::string(piece)];
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  for (const auto& [w, c] : freq) {
    words.emplace_back(w.begin(), w.end());
    for (auto& x : words.back()) x = static_cast<unsigned char>(x);
    counts.push_back(c);
  }
  std::vector<std::string> token;
  std::map<std::string, int32_t> id_of;
  for (int b = 0; b < 256; ++b) token.emplace_back(1, static_cast<char>(b)), id_of[token.back()] = b;
  std::vector<std::pair<std::string, std::string>> merges;
  while (static_cast<int32_t>(token.size()) < 256 + n_merged_tokens) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (size_t w = 0; w < words.size(); ++w)
      for (size_t i = 0; i + 1 < words[w].size(); ++i) pc[{words[w][i], words[w][i + 1]}] += counts[w];
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pc)
      if (c > best_count) best = p, best_count = c;  // map order: the smaller pair wins ties
    if (best_count < 2) break;
    const std::string bytes = token[best.first] + token[best.second];
    int32_t id;
    if (id_of.count(bytes)) {
      id = id_of[bytes];
    } else {
      id = static_cast<int32_t>(token.size());
      token.push_back(bytes);
      id_of[bytes] = id;
    }
    merges.emplace_back(token[best.first], token[best.second]);
    for (auto& w : words) {
      std::vector<int32_t> nw;
      for (size_t i = 0; i < w.size();) {
        if (i + 1 < w.size() && w[i] == best.first && w[i + 1] == best.second) {
          nw.push_back(id);
          i += 2;
        } else {
          nw.push_back(w[i++]);
        }
      }
      w.swap(nw);
    }
  }
  return merges;
}

}  // namespace

TEST(TokTrain, IncrementalCountsMatchFullRecount) {
  const std::string corpus = temp_path("corpus_small.txt");
  const std::string text = read_bytes(kShakespeare, 0, 30000);
  std::ofstream(corpus, std::ios::binary) << text;
  BpeTrainOptions o;
  o.vocab_size = 256 + 120;
  BpeTrainStats stats;
  const auto got = merges_of(train_bpe_json({corpus}, o, &stats));
  const auto want = naive_train(text, 120);
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k)
    ASSERT_EQ(got[k], want[k]) << "merge " << k << ": '" << got[k].first << "'+'" << got[k].second << "' vs '"
                               << want[k].first << "'+'" << want[k].second << "'";
  EXPECT_EQ(stats.corpus_bytes, 30000);
  EXPECT_EQ(stats.vocab_size, 376);
}

TEST(TokTrain, Shakespeare512) {
  const std::string out1 = temp_path("shakespeare512_a.json"), out2 = temp_path("shakespeare512_b.json");
  BpeTrainOptions o;
  o.vocab_size = 512;
  o.special_tokens = {"<|endoftext|>"};
  o.max_bytes_per_file = 200000;
  const BpeTrainStats s1 = train_bpe({kShakespeare}, o, out1);
  const BpeTrainStats s2 = train_bpe({kShakespeare}, o, out2);
  EXPECT_EQ(s1.corpus_bytes, 200000);
  EXPECT_EQ(s1.vocab_size, 512);
  EXPECT_GE(s1.num_merges, 255);  // 512 - 256 bytes - 1 special (more if two merges spell one token)
  // Deterministic: the same corpus gives the same file, byte for byte.
  EXPECT_EQ(slurp(out1), slurp(out2));
  EXPECT_EQ(s2.num_merges, s1.num_merges);

  auto t = load_tokenizer(out1);
  EXPECT_EQ(t->vocab_size(), 512);
  EXPECT_EQ(t->token_to_id("<|endoftext|>"), 511);
  EXPECT_EQ(t->eos_id(), 511);
  // Byte b is token b.
  EXPECT_EQ(t->encode("A"), (std::vector<int32_t>{'A'}));

  const std::string train_text = read_bytes(kShakespeare, 0, 200000);
  const auto ids = t->encode(train_text);
  EXPECT_EQ(t->decode(ids), train_text);
  // 255 merges on English text: a frequent token covers several bytes; measured ~2.0 bytes
  // per token, asserted with a wide margin.
  EXPECT_LT(static_cast<double>(ids.size()), 0.6 * static_cast<double>(train_text.size()));
  // Unseen text (later in the file) round-trips and compresses too.
  const std::string held_out = read_bytes(kShakespeare, 600000, 50000);
  const auto hid = t->encode(held_out);
  EXPECT_EQ(t->decode(hid), held_out);
  EXPECT_LT(hid.size(), held_out.size());
  // The special token is matched whole.
  const auto with_eot = t->encode("First Citizen:<|endoftext|>Before");
  EXPECT_EQ(std::count(with_eot.begin(), with_eot.end(), 511), 1);
  EXPECT_EQ(t->decode(with_eot), "First Citizen:<|endoftext|>Before");
  // Arbitrary Unicode that never occurred in training still round-trips through byte tokens.
  const std::string uni = "caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80\t\n";
  EXPECT_EQ(t->decode(t->encode(uni)), uni);
}

TEST(TokTrain, Llama3PatternAndErrors) {
  const std::string corpus = temp_path("corpus_l3.txt"), out = temp_path("l3.json");
  std::ofstream(corpus, std::ios::binary) << read_bytes(kShakespeare, 0, 20000);
  BpeTrainOptions o;
  o.vocab_size = 300;
  o.pattern = PretokPattern::kLlama3;
  train_bpe({corpus}, o, out);
  auto t = load_tokenizer(out);
  ASSERT_NE(dynamic_cast<const BpeTokenizer*>(t.get()), nullptr);
  EXPECT_EQ(dynamic_cast<const BpeTokenizer*>(t.get())->pattern(), PretokPattern::kLlama3);
  const std::string s = "KING RICHARD III:\nWhat's 12345?\n\n";
  EXPECT_EQ(t->decode(t->encode(s)), s);

  o.vocab_size = 100;
  try {
    train_bpe({corpus}, o, out);
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size 100"), std::string::npos) << e.what();
  }
  o.vocab_size = 300;
  try {
    train_bpe({"/nonexistent/corpus.txt"}, o, out);
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/corpus.txt"), std::string::npos) << e.what();
  }
}
