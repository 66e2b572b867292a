// Byte tokenizer, and bad input to the loaders: every error names the file and the problem.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/error.h"
#include "tests/common/test_helpers.h"
#include "data/bpe.h"
#include "data/byte_tokenizer.h"

using namespace lathe::data;

namespace {

using lathe::test::expect_error;

std::string temp_file(const std::string& name, const std::string& content) {
  const std::string path = testing::TempDir() + std::to_string(::getpid()) + "_" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

const char* kGoodModel = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
const char* kByteLevel = R"("pre_tokenizer": {"type": "ByteLevel", "use_regex": true})";

}  // namespace

TEST(TokByte, RoundTripAnyBytes) {
  auto t = load_tokenizer("byte");
  EXPECT_EQ(t->id(), "byte");
  EXPECT_EQ(t->vocab_size(), 256);
  EXPECT_EQ(t->encode("Ab\xFF"), (std::vector<int32_t>{65, 98, 255}));
  std::mt19937 rng(5);
  std::string s(1000, '\0');
  for (auto& c : s) c = static_cast<char>(rng() % 256);
  EXPECT_EQ(t->decode(t->encode(s)), s);
  EXPECT_EQ(t->token_to_id("A"), 65);
  EXPECT_FALSE(t->token_to_id("AB").has_value());
  EXPECT_FALSE(t->eos_id().has_value());
  expect_error([&] { t->decode({65, 256}); }, {"256", "position 1"});
}

TEST(TokErrors, MissingFiles) {
  expect_error([] { load_tokenizer("/nonexistent/dir/tokenizer.json"); }, {"/nonexistent/dir/tokenizer.json"});
  expect_error([] { BpeTokenizer::from_tokenizer_json("/nonexistent/t.json"); }, {"cannot open", "/nonexistent/t.json"});
  // A vocab.json without merges.txt beside it.
  const std::string dir = testing::TempDir() + "tok_err_dir_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/vocab.json") << R"({"a": 0})";
  expect_error([&] { load_tokenizer(dir + "/vocab.json"); }, {"merges.txt", dir});
  expect_error([&] { load_tokenizer(dir); }, {dir, "neither tokenizer.json nor vocab.json + merges.txt"});
  std::filesystem::remove_all(dir);
}

TEST(TokErrors, MalformedJson) {
  const std::string p = temp_file("malformed.json", "{\"model\": {\"type\": \"BPE\", ");
  expect_error([&] { load_tokenizer(p); }, {p, "not valid JSON"});
}

TEST(TokErrors, UnknownModelType) {
  const std::string p = temp_file("wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  expect_error([&] { load_tokenizer(p); }, {p, "WordPiece"});
  const std::string q = temp_file("fallback.json",
                                  R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []}})");
  expect_error([&] { load_tokenizer(q); }, {q, "byte_fallback"});
}

TEST(TokErrors, UnknownPreTokenizer) {
  const std::string p = temp_file("whitespace.json", std::string("{") + kGoodModel +
                                                         R"(, "pre_tokenizer": {"type": "Whitespace"}})");
  expect_error([&] { load_tokenizer(p); }, {p, "Whitespace"});
  const std::string q = temp_file(
      "regex.json", std::string("{") + kGoodModel +
                        R"(, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         {"type": "Split", "pattern": {"Regex": "\\w+|\\s+"}, "behavior": "Isolated", "invert": false},
         {"type": "ByteLevel", "use_regex": false}]}})");
  expect_error([&] { load_tokenizer(q); }, {q, "unknown Split regex", "\\w+|\\s+"});
  const std::string r = temp_file("nopretok.json", std::string("{") + kGoodModel + "}");
  expect_error([&] { load_tokenizer(r); }, {r, "pre_tokenizer"});
}

TEST(TokErrors, BadVocabOrMerges) {
  const std::string p = temp_file(
      "badmerge.json", std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}, )") +
                           kByteLevel + "}");
  expect_error([&] { load_tokenizer(p); }, {p, "merge #0", "'c'"});
  const std::string q = temp_file(
      "dupid.json", std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}, )") +
                        kByteLevel + "}");
  expect_error([&] { load_tokenizer(q); }, {q, "id 0"});
  const std::string r = temp_file(
      "merge3.json", std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}, )") +
                         kByteLevel + "}");
  expect_error([&] { load_tokenizer(r); }, {r, "merges[0]"});
  const std::string w = temp_file(
      "wrongtype.json", std::string(R"({"added_tokens": [{"id": 3, "content": "<x>", "special": "yes"}], )") +
                            kGoodModel + ", " + kByteLevel + "}");
  expect_error([&] { load_tokenizer(w); }, {w, "unexpected JSON structure"});
  // A good file still loads and decodes only known ids.
  const std::string g = temp_file("good.json", std::string("{") + kGoodModel + ", " + kByteLevel + "}");
  auto t = load_tokenizer(g);
  EXPECT_EQ(t->encode("ab"), (std::vector<int32_t>{2}));
  expect_error([&] { t->decode({2, 7}); }, {"id 7", "position 1", g});
}

// A corrupt id must not size the tokenizer: an id of 10^9 used to allocate a billion slots
// (bad_alloc in every command). Ids are checked against the number of entries and int32.
TEST(TokErrors, IdsBeyondTheVocabularyAreRefusedBeforeAllocating) {
  const std::string big = temp_file(
      "bigid.json", std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 1000000000}, )"
                                R"("merges": ["a b"]}, )") + kByteLevel + "}");
  expect_error([&] { load_tokenizer(big); }, {big, "vocab['ab']", "1000000000", "only 3 tokens"});
  const std::string added = temp_file(
      "bigadded.json", std::string(R"({"added_tokens": [{"id": 5000, "content": "<x>"}], )") + kGoodModel + ", " +
                           kByteLevel + "}");
  expect_error([&] { load_tokenizer(added); }, {added, "added token '<x>'", "5000"});
  // 2^32 + 2 would narrow to id 2 ("ab"); negative ids; both name the token.
  const std::string wide = temp_file(
      "wideid.json", std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 4294967298}, )"
                                 R"("merges": ["a b"]}, )") + kByteLevel + "}");
  expect_error([&] { load_tokenizer(wide); }, {wide, "model.vocab['ab']", "4294967298", "2147483647"});
  const std::string neg = temp_file(
      "negid.json", std::string(R"({"added_tokens": [{"id": -7, "content": "<y>"}], )") + kGoodModel + ", " +
                        kByteLevel + "}");
  expect_error([&] { load_tokenizer(neg); }, {neg, "added_tokens[0]", "<y>", "-7"});
  // vocab.json + merges.txt are checked the same way.
  const std::string dir = testing::TempDir() + "tok_bigid_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/vocab.json") << R"({"a": 0, "b": 1, "ab": 999999999})";
  std::ofstream(dir + "/merges.txt") << "#version: 0.2\na b\n";
  expect_error([&] { load_tokenizer(dir); }, {dir + "/vocab.json", "'ab'", "999999999"});
  std::filesystem::remove_all(dir);
  // Holes are allowed within the bound (an added token after a gap).
  const std::string gap = temp_file(
      "gapid.json", std::string(R"({"added_tokens": [{"id": 1000, "content": "<z>", "special": true}], )") +
                        kGoodModel + ", " + kByteLevel + "}");
  EXPECT_EQ(load_tokenizer(gap)->token_to_id("<z>"), 1000);
}
