// `lathe prepare` end to end: prepared shards hold exactly the tokens of tokenizing the
// inputs directly (byte and GPT-2 BPE), with document boundaries, the exact deterministic
// validation split, instruction masks, and every error path (tokenizer mismatch, malformed
// JSONL with file:line, truncated shards, failed runs that must leave earlier data intact).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "tests/common/test_helpers.h"
#include "data/bpe.h"
#include "data/lm_dataset.h"
#include "data/permutation.h"
#include "data/pretokenize.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/text_source.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::data;

namespace {

const std::string kFixtures = "tests/fixtures/data/";
const std::string kGpt2 = "../shared/data/gpt2";
const std::string kShakespeare = "../shared/data/tinyshakespeare.txt";

using lathe::test::expect_error;

std::string tmp_dir(const std::string& name) { return test::fresh_dir("lathe_test_prepare_" + name); }

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

PrepareOptions quiet_options(std::vector<std::string> inputs, std::string out, std::string tok = "byte") {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.output_dir = std::move(out);
  o.tokenizer = std::move(tok);
  o.quiet = true;
  return o;
}

// Document d of a split as a token vector.
std::vector<int32_t> doc_tokens(const ShardSet& s, int64_t d) {
  auto [b, e] = s.document(d);
  return std::vector<int32_t>(s.tokens->begin() + b, s.tokens->begin() + e);
}

std::vector<std::vector<int32_t>> all_docs(const ShardSet& s) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t d = 0; d < s.num_documents(); ++d) out.push_back(doc_tokens(s, d));
  return out;
}

std::set<std::string> dir_entries(const std::string& dir) {
  std::set<std::string> out;
  for (auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// The first `max_docs` distinct blank-line blocks of Tiny Shakespeare, joined by blank lines,
// so that a document identifies its position.
std::string unique_shakespeare(size_t max_docs) {
  const std::string text = read_text_file(kShakespeare);
  std::set<std::string> seen;
  std::string out;
  size_t n = 0;
  for (const std::string& d : split_text_documents(text.substr(0, 200000), TextSplit::kBlankLines)) {
    if (!seen.insert(d).second) continue;
    out += (out.empty() ? "" : "\n\n") + d;
    if (++n == max_docs) break;
  }
  return out;
}

}  // namespace

TEST(PrepareText, BlankLineSplit) {
  EXPECT_EQ(split_text_documents("a\nb\n\n\nc\n", TextSplit::kBlankLines), (std::vector<std::string>{"a\nb", "c"}));
  EXPECT_EQ(split_text_documents("\n \t\nx  \r\n\r\n y\n\nz", TextSplit::kBlankLines),
            (std::vector<std::string>{"x  \r", " y", "z"}));
  EXPECT_EQ(split_text_documents(" \n\n", TextSplit::kBlankLines), std::vector<std::string>{});
  EXPECT_EQ(split_text_documents("a\n\nb\n", TextSplit::kFile), std::vector<std::string>{"a\n\nb\n"});
  EXPECT_EQ(split_text_documents("", TextSplit::kFile), std::vector<std::string>{});
}

TEST(PrepareText, ByteDirectoryMatchesDirectTokenization) {
  const std::string in = tmp_dir("byte_in"), out = tmp_dir("byte_out");
  write(in + "/b.txt", "second file\n");
  write(in + "/a.txt", "first file, a bit longer than the others\n");
  write(in + "/sub/c.md", "third, in a subdirectory");
  write(in + "/d.jsonl", "{\"text\": \"record one\"}\n\n{\"text\": \"\"}\n{\"text\": \"record two\\nhas two lines\"}\n");
  write(in + "/empty.txt", "");
  write(in + "/.hidden.txt", "never read");
  write(in + "/data.bin", "never read");
  PrepareOptions o = quiet_options({in}, out);
  o.shard_tokens = 30;
  PrepareStats st = prepare(o);

  // Inputs in byte order of their relative paths; one file = one document; JSONL = one per record.
  const std::vector<std::string> docs = {"first file, a bit longer than the others\n", "second file\n", "record one",
                                         "record two\nhas two lines", "third, in a subdirectory"};
  EXPECT_EQ(st.sources, (std::vector<std::string>{in + "/a.txt", in + "/b.txt", in + "/d.jsonl", in + "/empty.txt",
                                                  in + "/sub/c.md"}));
  EXPECT_EQ(st.skipped_empty, 1);  // the empty record; the empty file holds no document at all
  EXPECT_EQ(st.format, "lm");
  EXPECT_EQ(st.eos_id, -1);  // the byte tokenizer has no EOS

  ShardSet s = open_shards(out, "train", "byte");
  ASSERT_EQ(s.num_documents(), static_cast<int64_t>(docs.size()));
  std::vector<int32_t> want;
  std::vector<int64_t> offsets{0};
  for (const auto& d : docs) {
    for (unsigned char c : d) want.push_back(c);
    offsets.push_back(static_cast<int64_t>(want.size()));
  }
  EXPECT_EQ(*s.tokens, want);
  EXPECT_EQ(s.doc_offsets, offsets);
  EXPECT_FALSE(s.has_loss_mask());
  EXPECT_EQ(s.format, "lm");
  EXPECT_EQ(st.train.tokens, static_cast<int64_t>(want.size()));

  // Shards close once they reach 30 tokens and never cut a document.
  ASSERT_EQ(st.train.shards.size(), s.files.size());
  int64_t docs_seen = 0;
  for (size_t i = 0; i < st.train.shards.size(); ++i) {
    EXPECT_EQ(st.train.shards[i], (fs::path(out) / ("train_0000" + std::to_string(i) + ".h5")).string());
    ShardMeta m;
    ShardData d = read_shard(st.train.shards[i], &m);
    if (i + 1 < st.train.shards.size()) {
      EXPECT_GE(d.num_tokens(), 30);
      // without its last document it would be under the limit
      EXPECT_LT(d.doc_offsets[d.num_documents() - 1], 30);
    }
    for (int64_t k = 0; k < d.num_documents(); ++k) {
      const std::string text(d.tokens.begin() + d.doc_offsets[k], d.tokens.begin() + d.doc_offsets[k + 1]);
      EXPECT_EQ(text, docs[docs_seen++]);
    }
    EXPECT_EQ(m.shard_index, static_cast<int64_t>(i));
    EXPECT_EQ(m.tokenizer_id, "byte");
    EXPECT_EQ(m.vocab_size, 256);
  }
  EXPECT_GE(st.train.shards.size(), 3u);

  // index.json agrees with the shards.
  std::ifstream idx(out + "/index.json");
  const nlohmann::json index = nlohmann::json::parse(idx);
  EXPECT_EQ(index["tokenizer"]["id"], "byte");
  EXPECT_EQ(index["format"], "lm");
  EXPECT_EQ(index["splits"]["train"]["documents"], 5);
  EXPECT_EQ(index["splits"]["train"]["tokens"], want.size());
  EXPECT_EQ(index["splits"]["train"]["shards"].size(), st.train.shards.size());
  EXPECT_EQ(index["splits"]["val"]["shards"].size(), 0u);
  expect_error([&] { open_shards(out, "val"); }, {out, "no val shards", "val_fraction 0"});
  // No staging directory or temporary file is left.
  for (const auto& e : dir_entries(out)) EXPECT_TRUE(e == "index.json" || e.rfind("train_", 0) == 0) << e;

  // The packed LM view sees the same stream.
  PackedLMDataset p = s.packed(8);
  EXPECT_EQ(p.input(1), std::vector<int32_t>(want.begin() + 8, want.begin() + 16));
  fs::remove_all(in);
  fs::remove_all(out);
}

TEST(PrepareText, Gpt2ShakespeareMatchesDirectTokenizationAndSplitsExactly) {
  const std::string in = tmp_dir("gpt2_in"), out = tmp_dir("gpt2_out");
  const std::string text = unique_shakespeare(300);
  write(in + "/shakespeare.txt", text);
  PrepareOptions o = quiet_options({in + "/shakespeare.txt"}, out, kGpt2);
  o.text_split = TextSplit::kBlankLines;
  o.val_fraction = 0.1;
  o.seed = 7;
  o.shard_tokens = 2000;
  PrepareStats st = prepare(o);

  auto tok = load_tokenizer(kGpt2);
  const std::vector<std::string> docs = split_text_documents(text, TextSplit::kBlankLines);
  ASSERT_EQ(docs.size(), 300u);
  std::vector<std::vector<int32_t>> want;
  for (const auto& d : docs) {
    want.push_back(tok->encode(d, false));
    want.back().push_back(50256);  // GPT-2's EOS, appended by default
  }
  ShardSet train = open_shards(out, "train", *tok), val = open_shards(out, "val", *tok);
  EXPECT_EQ(val.num_documents(), 30);  // round(300 * 0.1), exactly
  EXPECT_EQ(train.num_documents(), 270);
  EXPECT_GT(train.files.size(), 1u);
  // Train and val interleave back into the input order (documents are unique, so each
  // belongs to exactly one side); both keep the input order.
  auto tr = all_docs(train), va = all_docs(val);
  size_t a = 0, b = 0;
  std::vector<int64_t> val_positions;
  for (size_t i = 0; i < want.size(); ++i) {
    if (a < tr.size() && tr[a] == want[i]) {
      ++a;
    } else {
      ASSERT_TRUE(b < va.size() && va[b] == want[i]) << "document " << i << " is in neither split at its place";
      ++b;
      val_positions.push_back(static_cast<int64_t>(i));
    }
  }
  EXPECT_EQ(a, tr.size());
  EXPECT_EQ(b, va.size());
  // The validation documents are spread over the input, not a block at one end.
  EXPECT_LT(val_positions.front(), 100);
  EXPECT_GT(val_positions.back(), 200);
  EXPECT_EQ(st.train.tokens + st.val.tokens, [&] {
    int64_t n = 0;
    for (const auto& w : want) n += static_cast<int64_t>(w.size());
    return n;
  }());

  // Determinism: the split depends on (inputs, seed, fraction) only, not on shard size or
  // thread count; another seed picks other documents.
  const std::string out2 = tmp_dir("gpt2_out2"), out3 = tmp_dir("gpt2_out3");
  o.output_dir = out2;
  o.shard_tokens = 1 << 20;
  o.num_threads = 1;
  prepare(o);
  EXPECT_EQ(all_docs(open_shards(out2, "val")), va);
  EXPECT_EQ(all_docs(open_shards(out2, "train")), tr);
  o.output_dir = out3;
  o.seed = 8;
  prepare(o);
  auto va3 = all_docs(open_shards(out3, "val"));
  EXPECT_EQ(va3.size(), va.size());
  EXPECT_NE(va3, va);
  for (const auto& d : {in, out, out2, out3}) fs::remove_all(d);
}

TEST(PrepareSplit, SelectionSamplerIsExactAndUniform) {
  // Exactly k of n every time; over many keys each item is picked k/n of the time.
  const int64_t n = 10, k = 3, keys = 4000;
  std::vector<int64_t> hits(n, 0);
  for (int64_t key = 0; key < keys; ++key) {
    SelectionSampler s(n, k, static_cast<uint64_t>(key) * 0x9e3779b97f4a7c15ull);
    int64_t picked = 0;
    for (int64_t i = 0; i < n; ++i)
      if (s.next()) {
        ++picked;
        ++hits[i];
      }
    EXPECT_EQ(picked, k);
  }
  // Binomial(4000, 0.3): mean 1200, sd 29; allow 5 sd.
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(hits[i], 1200, 145) << "item " << i;
  SelectionSampler all(4, 4, 1), none(4, 0, 1);
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(all.next());
    EXPECT_FALSE(none.next());
  }
  EXPECT_THROW(all.next(), Error);
  EXPECT_THROW(SelectionSampler(3, 4, 0), Error);
}

TEST(PrepareInstruction, MasksSurviveTheShards) {
  const std::string out = tmp_dir("instr_out");
  auto tok = load_tokenizer(kGpt2);
  PrepareOptions o = quiet_options({kFixtures + "prompt_response.jsonl", kFixtures + "alpaca.jsonl",
                                    kFixtures + "chat.jsonl"},
                                   out, kGpt2);
  o.shard_tokens = 64;
  PrepareStats st = prepare(o);
  EXPECT_EQ(st.format, "instruction");
  EXPECT_EQ(st.records_prompt_response, 4);
  EXPECT_EQ(st.records_alpaca, 4);
  EXPECT_EQ(st.records_chat, 3);
  ShardSet s = open_shards(out, "train", tok->id());
  ASSERT_TRUE(s.has_loss_mask());
  EXPECT_EQ(s.prompt_template, "default");
  ASSERT_EQ(s.num_documents(), 11);
  // Expected responses per document, in input order.
  const std::vector<std::vector<std::string>> responses = {
      {"Paris."}, {" The sum is 5 "}, {"hi there"}, {"<|endoftext|> was text"},
      {"1. Eat well.\n2. Sleep.\n3. Move."}, {"Bonjour"}, {"Blue, as in the sky."}, {"Cats sleep and purr."},
      {"Hello.", "4"}, {"Soft rain on the roof\nwhispers to the sleeping town\nmorning smells of earth"},
      {"I start.", "Then I end."}};
  int64_t trained = 0;
  for (int64_t d = 0; d < s.num_documents(); ++d) {
    auto [b, e] = s.document(d);
    std::vector<std::string> spans;
    for (int64_t i = b; i < e;) {
      if (!(*s.loss_mask)[i]) {
        ++i;
        continue;
      }
      std::vector<int32_t> run;
      while (i < e && (*s.loss_mask)[i]) run.push_back((*s.tokens)[i++]);
      trained += static_cast<int64_t>(run.size());
      spans.push_back(tok->decode(run));
    }
    std::vector<std::string> want;
    for (const auto& r : responses[d]) want.push_back(r + "<|endoftext|>");
    EXPECT_EQ(spans, want) << "document " << d;
  }
  EXPECT_EQ(st.train.trained_tokens, trained);
  fs::remove_all(out);
}

TEST(PrepareErrors, TokenizerMismatchNamesBoth) {
  const std::string in = tmp_dir("mismatch_in"), out = tmp_dir("mismatch_out");
  write(in + "/a.txt", "some text");
  prepare(quiet_options({in}, out, "byte"));
  auto gpt2 = load_tokenizer(kGpt2);
  expect_error([&] { open_shards(out, "train", *gpt2); }, {out, "'byte'", "'" + gpt2->id() + "'", "lathe prepare"});
  expect_error([&] { open_shards(out + "/train_00000.h5", "train", gpt2->id()); },
               {"train_00000.h5", "'byte'", "'" + gpt2->id() + "'"});
  EXPECT_NO_THROW(open_shards(out, "train", "byte"));
  EXPECT_NO_THROW(open_shards(out, "train"));  // no expectation: no check
  fs::remove_all(in);
  fs::remove_all(out);
}

TEST(PrepareErrors, MalformedJsonlNamesFileLineAndField) {
  const std::string out = tmp_dir("malformed_out");
  const std::string f1 = kFixtures + "malformed_missing_field.jsonl";
  expect_error([&] { prepare(quiet_options({f1}, out)); }, {f1 + ":3", "'response'"});
  const std::string f2 = kFixtures + "malformed_bad_json.jsonl";
  expect_error([&] { prepare(quiet_options({f2}, out)); }, {f2 + ":3", "invalid JSON"});
  const std::string f3 = kFixtures + "malformed_chat_role.jsonl";
  expect_error([&] { prepare(quiet_options({f3}, out)); }, {f3 + ":2", "messages[1]", "robot"});
  // A required kind turns an alpaca file into errors naming the first record.
  PrepareOptions o = quiet_options({kFixtures + "alpaca.jsonl"}, out);
  o.record_kind = RecordExpect::kChat;
  expect_error([&] { prepare(o); }, {"alpaca.jsonl:1", "'messages'"});
  // Plain text and instruction records do not mix.
  expect_error([&] { prepare(quiet_options({kFixtures + "text_records.jsonl", kFixtures + "chat.jsonl"}, out)); },
               {"chat.jsonl:1", "chat", "lm data", "text_records.jsonl:1"});
  // Nothing was written by the failed runs.
  EXPECT_TRUE(fs::is_empty(out)) << *dir_entries(out).begin();
  fs::remove_all(out);
}

TEST(PrepareErrors, FailedRunKeepsEarlierDataAndRerunsDropStaleShards) {
  const std::string in = tmp_dir("rerun_in"), out = tmp_dir("rerun_out");
  write(in + "/a.txt", std::string(100, 'a'));
  write(in + "/b.txt", std::string(100, 'b'));
  write(in + "/c.txt", std::string(100, 'c'));
  PrepareOptions o = quiet_options({in}, out);
  o.shard_tokens = 1;  // one document per shard
  prepare(o);
  EXPECT_EQ(dir_entries(out), (std::set<std::string>{"index.json", "train_00000.h5", "train_00001.h5",
                                                     "train_00002.h5"}));
  const auto before = *open_shards(out, "train").tokens;
  // A run that fails part-way leaves the earlier output complete and readable.
  const std::string bad_file = tmp_dir("rerun_bad") + "/z.jsonl";
  write(bad_file, "{\"text\": \"fine\"}\n{\"text\": \"fine too\"}\n{\"txt\": \"typo\"}\n");
  expect_error([&] { prepare(quiet_options({in, bad_file}, out)); }, {bad_file + ":3", "none of the fields", "txt"});
  EXPECT_EQ(*open_shards(out, "train").tokens, before);
  EXPECT_EQ(dir_entries(out).size(), 4u);
  // A rerun with bigger shards replaces them and removes the ones its index does not list.
  o.shard_tokens = 1000;
  prepare(o);
  EXPECT_EQ(dir_entries(out), (std::set<std::string>{"index.json", "train_00000.h5"}));
  EXPECT_EQ(*open_shards(out, "train").tokens, before);
  fs::remove_all(in);
  fs::remove_all(out);
  fs::remove_all(fs::path(bad_file).parent_path());
}

TEST(PrepareErrors, TruncatedShardAndInconsistentIndex) {
  const std::string in = tmp_dir("trunc_in"), out = tmp_dir("trunc_out");
  for (int i = 0; i < 20; ++i) write(in + "/f" + std::to_string(10 + i) + ".txt", std::string(50 + i, 'x'));
  PrepareOptions o = quiet_options({in}, out);
  o.shard_tokens = 300;
  o.val_fraction = 0.25;
  prepare(o);
  const std::string shard = out + "/train_00001.h5";
  const auto size = fs::file_size(shard);
  fs::resize_file(shard, size - 100);
  expect_error([&] { open_shards(out, "train"); }, {shard});
  EXPECT_NO_THROW(open_shards(out, "val"));
  // index.json that does not match its shards (counts edited).
  prepare(o);
  std::ifstream idx(out + "/index.json");
  nlohmann::json index = nlohmann::json::parse(idx);
  index["splits"]["val"]["shards"][0]["tokens"] = 1;
  std::ofstream(out + "/index.json") << index.dump();
  expect_error([&] { open_shards(out, "val"); }, {"val_00000.h5", "index.json lists"});
  fs::remove(out + "/index.json");
  expect_error([&] { open_shards(out, "train"); }, {out, "no index.json"});
  fs::remove_all(in);
  fs::remove_all(out);
}

TEST(PrepareErrors, OptionsAndTokenizerCapabilities) {
  const std::string in = tmp_dir("opts_in"), out = tmp_dir("opts_out");
  write(in + "/a.txt", "one document only");
  PrepareOptions o = quiet_options({in + "/a.txt"}, out);
  o.val_fraction = 0.1;
  expect_error([&] { prepare(o); }, {"needs at least 2 documents", "blank_lines"});
  o.val_fraction = 1.0;
  expect_error([&] { prepare(o); }, {"val_fraction", "[0, 1)"});
  o = quiet_options({in + "/a.txt"}, out);
  o.append_eos = EosMode::kOn;
  expect_error([&] { prepare(o); }, {"append_eos", "no EOS"});
  o = quiet_options({in + "/a.txt"}, out);
  o.prepend_bos = true;
  expect_error([&] { prepare(o); }, {"prepend_bos", "no BOS"});
  expect_error([&] { prepare(quiet_options({in + "/missing.txt"}, out)); }, {in + "/missing.txt", "does not exist"});
  expect_error([&] { prepare(quiet_options({}, out)); }, {"no inputs"});
  write(in + "/sub/x.bin", "x");
  expect_error([&] { prepare(quiet_options({in + "/sub"}, out)); }, {in + "/sub", "no .txt"});
  // With GPT-2: BOS and EOS both <|endoftext|>; EOS off leaves the bare tokens.
  o = quiet_options({in + "/a.txt"}, out, kGpt2);
  o.prepend_bos = true;
  prepare(o);
  auto tok = load_tokenizer(kGpt2);
  std::vector<int32_t> want = tok->encode("one document only");
  want.insert(want.begin(), 50256);
  want.push_back(50256);
  EXPECT_EQ(*open_shards(out, "train").tokens, want);
  o.prepend_bos = false;
  o.append_eos = EosMode::kOff;
  prepare(o);
  EXPECT_EQ(*open_shards(out, "train").tokens, tok->encode("one document only"));
  fs::remove_all(in);
  fs::remove_all(out);
}

TEST(PrepareProgress, SummaryLineAndLiveLine) {
  const std::string in = tmp_dir("progress_in"), out = tmp_dir("progress_out");
  write(in + "/a.txt", "hello\n\nworld\n");
  for (int tty : {0, 1}) {
    std::FILE* f = std::tmpfile();
    PrepareOptions o = quiet_options({in}, out);
    o.quiet = false;
    o.progress_out = f;
    o.tty = tty;
    PrepareStats st = prepare(o);
    std::rewind(f);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
    EXPECT_NE(text.find(st.summary() + "\n"), std::string::npos) << text;
    EXPECT_NE(text.find("MB/s"), std::string::npos);
    EXPECT_EQ(text.find('\r') != std::string::npos, tty == 1) << text;
    if (tty == 0) {
      EXPECT_EQ(text, st.summary() + "\n");
    }
    EXPECT_GT(st.mb_per_s, 0.0);
    EXPECT_EQ(st.input_bytes, 13);
  }
  fs::remove_all(in);
  fs::remove_all(out);
}

// ---- parallel encoding of long documents (Tokenizer::next_cut) ----

namespace {

// Random text from pieces chosen to sit around newlines in every way the pre-tokenizers
// treat differently: runs of newlines and spaces, punctuation (Llama-3 lets it take
// following newlines), digits, contractions, \r, tabs, multi-byte letters and spaces
// (U+00E9, U+00A0 no-break space, U+0085 next line) and the GPT-2 special token.
std::string tricky_text(size_t pieces, uint64_t seed) {
  static const char* const kParts[] = {"a",  "Zed", " ",  "\n", "\n\n", ".",   "1",  "234", "'s", "'S",
                                       "\r", "\t",  "\xc3\xa9", "\xc2\xa0", "\xc2\x85", "!?", "  ", " x",
                                       "<|endoftext|>", "\n ", "B", "q"};
  const size_t n = sizeof kParts / sizeof kParts[0];
  std::string out;
  uint64_t s = seed;
  for (size_t i = 0; i < pieces; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    out += kParts[(s >> 33) % n];
  }
  return out;
}

// All cut points of `text`, taken one after another from the start.
std::vector<size_t> all_cuts(const Tokenizer& tok, std::string_view text, bool allow_special) {
  std::vector<size_t> cuts;
  for (size_t p = tok.next_cut(text, 0, allow_special); p != std::string_view::npos;
       p = tok.next_cut(text, p + 1, allow_special))
    cuts.push_back(p);
  return cuts;
}

std::vector<std::string_view> cut_at(std::string_view text, const std::vector<size_t>& cuts) {
  std::vector<std::string_view> out;
  size_t b = 0;
  for (size_t c : cuts) {
    out.push_back(text.substr(b, c - b));
    b = c;
  }
  out.push_back(text.substr(b));
  return out;
}

std::vector<int32_t> encode_pieces(const Tokenizer& tok, const std::vector<std::string_view>& pieces,
                                   bool allow_special) {
  std::vector<int32_t> ids;
  for (std::string_view p : pieces) tok.encode_append(p, ids, allow_special);
  return ids;
}

std::vector<std::string> pretok_pieces(const std::vector<std::string_view>& pieces, PretokPattern pat) {
  std::vector<std::string> words;
  for (std::string_view p : pieces)
    for (std::string_view w : pretokenize(p, pat)) words.emplace_back(w);
  return words;
}

}  // namespace

TEST(PrepareParallel, BpeCutPointsKeepTheEncodingOfTheWholeText) {
  auto tok = load_tokenizer(kGpt2);
  const std::string shakespeare = read_text_file(kShakespeare);
  const std::string tricky = tricky_text(200000, 11);
  for (const std::string* text : {&shakespeare, &tricky}) {
    for (bool allow_special : {false, true}) {
      const std::vector<size_t> cuts = all_cuts(*tok, *text, allow_special);
      // Tiny Shakespeare has ~40k lines; most start with a letter after "x\n".
      ASSERT_GT(cuts.size(), text == &shakespeare ? 20000u : 500u);
      for (size_t c : cuts) {
        ASSERT_EQ((*text)[c - 1], '\n');
        ASSERT_TRUE(std::isalpha(static_cast<unsigned char>((*text)[c])));
      }
      const auto pieces = cut_at(*text, cuts);
      EXPECT_EQ(encode_pieces(*tok, pieces, allow_special), tok->encode(*text, allow_special))
          << (text == &shakespeare ? "shakespeare" : "tricky") << " allow_special " << allow_special;
    }
    // The words of the Llama-3 and Qwen2 pre-tokenizers do not cross the cuts either (the
    // rule is the same for every pattern).
    const auto pieces = cut_at(*text, all_cuts(*tok, *text, false));
    for (PretokPattern pat : {PretokPattern::kGpt2, PretokPattern::kLlama3, PretokPattern::kQwen2}) {
      std::vector<std::string> whole;
      for (std::string_view w : pretokenize(*text, pat)) whole.emplace_back(w);
      EXPECT_EQ(pretok_pieces(pieces, pat), whole) << pretok_name(pat);
    }
  }
  // The check can fail: cutting after every newline breaks "\n\n" and "\n " words (GPT-2
  // has a token for "\n\n"), so the ids change.
  std::vector<size_t> naive;
  for (size_t i = 0; i + 1 < tricky.size(); ++i)
    if (tricky[i] == '\n') naive.push_back(i + 1);
  EXPECT_NE(encode_pieces(*tok, cut_at(tricky, naive), false), tok->encode(tricky, false));
  // Edges: nothing to cut in short or newline-free text; `from` is honoured.
  EXPECT_EQ(tok->next_cut("ab\nc", 0), 3u);
  EXPECT_EQ(tok->next_cut("ab\nc", 4), std::string_view::npos);
  EXPECT_EQ(tok->next_cut(" \nc", 0), std::string_view::npos);  // a space before the newline
  EXPECT_EQ(tok->next_cut("a\n1", 0), std::string_view::npos);   // a digit after it
  EXPECT_EQ(tok->next_cut("a\n", 0), std::string_view::npos);
  EXPECT_EQ(tok->next_cut("a.\nb\n\nc\nd", 4), 8u);
  auto byte = load_tokenizer("byte");
  EXPECT_EQ(byte->next_cut("abc", 0), 1u);
  EXPECT_EQ(byte->next_cut("abc", 2), 2u);
  EXPECT_EQ(byte->next_cut("abc", 3), std::string_view::npos);
}

TEST(PrepareParallel, NoCutsWithPrefixSpaceOrNewlineAddedTokens) {
  // tokenizer.json built from GPT-2's own files, so the checks run on a full vocabulary.
  nlohmann::json vocab = nlohmann::json::parse(read_text_file(kGpt2 + "/vocab.json"));
  nlohmann::json merges = nlohmann::json::array();
  {
    std::ifstream f(kGpt2 + "/merges.txt");
    std::string line;
    while (std::getline(f, line))
      if (!line.empty() && line.rfind("#version", 0) != 0) merges.push_back(line);
  }
  auto make = [&](bool prefix_space, const std::string& added) {
    nlohmann::json j = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", prefix_space}, {"use_regex", true}}},
        {"added_tokens", nlohmann::json::array({{{"id", added == "<|endoftext|>" ? 50256 : 50257}, {"content", added}, {"special", true}}})}};
    return BpeTokenizer::from_json_text(j.dump(), "gpt2-as-json");
  };
  const std::string text = "To be\nor not\nto be";
  auto plain = make(false, "<|endoftext|>");
  EXPECT_EQ(plain->next_cut(text, 0), 6u);
  EXPECT_EQ(plain->encode(text), load_tokenizer(kGpt2)->encode(text));
  // add_prefix_space puts a space before each piece: never cut.
  EXPECT_EQ(make(true, "<|endoftext|>")->next_cut(text, 0), std::string_view::npos);
  // An added token holding a newline could span a cut: none while it can match.
  auto nl = make(false, "be\nor");
  EXPECT_EQ(nl->next_cut(text, 0, true), std::string_view::npos);
  EXPECT_EQ(nl->next_cut(text, 0, false), 6u);  // special tokens are not matched then
}

TEST(PrepareParallel, LongDocumentsGiveIdenticalShardsForAnyThreadCount) {
  const std::string in = tmp_dir("par_in");
  const std::string text = read_text_file(kShakespeare);  // 1.1 MB: one document, ~17 pieces
  write(in + "/a_big.txt", text);
  write(in + "/b_small.txt", "Small\ntext.\n");
  write(in + "/c_big.txt", text.substr(0, 300000) + "\n\nX");
  auto tok = load_tokenizer(kGpt2);
  const int32_t eot = 50256;
  std::vector<std::vector<int32_t>> want;
  for (const std::string& t : {text, std::string("Small\ntext.\n"), text.substr(0, 300000) + "\n\nX"}) {
    want.push_back({eot});
    tok->encode_append(t, want.back(), false);
    want.back().push_back(eot);
  }
  std::vector<std::string> outs;
  std::vector<std::vector<std::vector<int32_t>>> got;
  for (int threads : {1, 2, 3}) {
    outs.push_back(tmp_dir("par_out" + std::to_string(threads)));
    PrepareOptions o = quiet_options({in}, outs.back(), kGpt2);
    o.num_threads = threads;
    o.prepend_bos = true;
    o.shard_tokens = 200000;  // several shards
    o.loaded_tokenizer = tok.get();  // the CLI's way: no second load
    PrepareStats st = prepare(o);
    EXPECT_EQ(st.tokenizer_id, tok->id());
    got.push_back(all_docs(open_shards(outs.back(), "train", *tok)));
  }
  EXPECT_EQ(got[0], want);
  EXPECT_EQ(got[1], want);
  EXPECT_EQ(got[2], want);
  // Shard lists and index.json are the same too (the HDF5 files carry write times, so
  // they are compared by content above rather than byte by byte).
  EXPECT_EQ(dir_entries(outs[0]), dir_entries(outs[1]));
  EXPECT_GE(dir_entries(outs[0]).size(), 3u);
  EXPECT_EQ(read_text_file(outs[0] + "/index.json"), read_text_file(outs[1] + "/index.json"));
  EXPECT_EQ(read_text_file(outs[0] + "/index.json"), read_text_file(outs[2] + "/index.json"));
  fs::remove_all(in);
  for (const auto& d : outs) fs::remove_all(d);
}
