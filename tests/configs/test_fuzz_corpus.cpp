// A small fuzz corpus (issue 8): valid configs, text format and JSON, mutated
// deterministically (seeded byte flips, truncations, duplicated lines/fields, extreme
// numbers). Each case must either load (parse, resolve, validate) or raise ConfigError
// whose every error names the file; never crash, hang or throw anything else. JSON parse
// errors must carry file:line:col. Also: a large JSON config validates in linear time.
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>

#include "config_test_util.h"

namespace lathe::configs {
namespace {

using testing::write_temp;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The seeds: two example configs as text, and the same two as (pretty-printed) JSON.
std::vector<std::pair<std::string, std::string>> seeds() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const char* name : {"quickstart", "tiny_llama"}) {
    const std::string text = read_all(std::string("configs/") + name + ".pbtxt");
    out.emplace_back(std::string(name) + ".pbtxt", text);
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.add_whitespace = true;
    opts.preserve_proto_field_names = true;
    EXPECT_TRUE(google::protobuf::util::MessageToJsonString(parse_text(text, name), &json, opts).ok());
    out.emplace_back(std::string(name) + ".json", json);
  }
  return out;
}

// Replaces the first number at or after `from` with `value`.
std::string replace_number(const std::string& s, size_t from, const std::string& value) {
  size_t i = s.find_first_of("0123456789", from);
  if (i == std::string::npos) return s;
  if (i > 0 && s[i - 1] == '-') --i;
  size_t j = i + 1;
  while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '.' || s[j] == '-' || s[j] == '+'))
    ++j;
  return s.substr(0, i) + value + s.substr(j);
}

std::string mutate(const std::string& s, std::mt19937& rng, int kind) {
  std::uniform_int_distribution<size_t> pos(0, s.size() - 1);
  static const char kBytes[] = "{}[]\":,.-+e0925 \n\t\\#xa\x00\xff";
  static const char* kNumbers[] = {"1e999",      "-1e999",        "inf",         "-inf",       "nan",
                                   "2147483647", "2147483648",    "-2147483649", "1e-400",     "0",
                                   "-0",         "99999999999999999999999", "0x10", "\"5\"", "true"};
  std::string t = s;
  switch (kind) {
    case 0:  // flip one to three bytes to arbitrary values
      for (int k = 0, n = 1 + static_cast<int>(rng() % 3); k < n; ++k) t[pos(rng)] = static_cast<char>(rng() % 256);
      return t;
    case 1:  // set a byte to a syntax character
      t[pos(rng)] = kBytes[rng() % (sizeof(kBytes) - 1)];
      return t;
    case 2:  // truncate
      return t.substr(0, pos(rng));
    case 3: {  // duplicate a line (a field given twice)
      std::vector<std::string> lines;
      std::istringstream in(t);
      for (std::string l; std::getline(in, l);) lines.push_back(l);
      const size_t i = rng() % lines.size();
      lines.insert(lines.begin() + static_cast<std::ptrdiff_t>(i), lines[i]);
      std::string out;
      for (const auto& l : lines) out += l + "\n";
      return out;
    }
    case 4:  // an extreme number in place of one
      return replace_number(t, pos(rng), kNumbers[rng() % (sizeof(kNumbers) / sizeof(kNumbers[0]))]);
    default: {  // delete a span
      const size_t a = pos(rng), n = 1 + rng() % 20;
      return t.erase(a, n);
    }
  }
}

TEST(ConfigFuzz, MutatedConfigsLoadOrRaiseConfigErrorNamingTheFile) {
  const auto corpus = seeds();
  ASSERT_EQ(corpus.size(), 4u);
  std::mt19937 rng(20260805);
  // "path:line:col: ..." with line and col numbers.
  auto located = [](const std::string& err, const std::string& path) {
    if (err.rfind(path + ":", 0) != 0) return false;
    size_t i = path.size() + 1;
    for (int part = 0; part < 2; ++part) {
      const size_t digits = i;
      while (i < err.size() && std::isdigit(static_cast<unsigned char>(err[i]))) ++i;
      if (i == digits || i >= err.size() || err[i] != ':') return false;
      ++i;
    }
    return true;
  };
  int loaded = 0, refused = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < 200; ++c) {
    const auto& [name, seed] = corpus[c % corpus.size()];
    const int kind = static_cast<int>(rng() % 6);
    const std::string text = mutate(seed, rng, kind);
    const std::string path = write_temp("fuzz_" + std::to_string(c) + "_" + name, text);
    SCOPED_TRACE("case " + std::to_string(c) + " (" + path + ", mutation " + std::to_string(kind) + ")");
    try {
      load_config(path);
      ++loaded;
    } catch (const ConfigError& e) {
      ++refused;
      EXPECT_EQ(e.origin(), path);
      ASSERT_FALSE(e.errors().empty());
      for (const auto& err : e.errors()) EXPECT_EQ(err.rfind(path, 0), 0u) << err;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a ConfigError: " << e.what();
    }
    // JSON syntax and type errors (from the parser, before validation) carry line:col.
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) {
      try {
        parse_json(text, path);
      } catch (const ConfigError& e) {
        for (const auto& err : e.errors()) EXPECT_TRUE(located(err, path)) << err;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "parse_json: not a ConfigError: " << e.what();
      }
    }
  }
  // Both outcomes occur (the mutations are neither all harmless nor all fatal).
  EXPECT_GT(loaded, 10);
  EXPECT_GT(refused, 50);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

// 2 MB of JSON with ~100k keys: the key positions used to be found by rescanning the file
// from the start for every key (minutes); now they are indexed once.
TEST(ConfigFuzz, LargeJsonConfigValidatesInLinearTime) {
  std::string json = "{\n  \"name\": \"big\",\n  \"train\": {\"steps\": 10, \"micro_batch\": 0},\n";
  // Repeated keys of one section: valid JSON, and protobuf merges them.
  std::string filler;
  while (json.size() + filler.size() < 2'000'000) filler += "  \"logging\": {\"jsonl\": true, \"progress\": \"AUTO\"},\n";
  json += filler + "  \"data\": {\"source\": \"SYNTHETIC\"}\n}\n";
  const std::string path = write_temp("big.json", json);
  const auto start = std::chrono::steady_clock::now();
  const auto errors = testing::load_errors(path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The one semantic error is located at its key, on line 3.
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], path + ":3:26: train.micro_batch: must be > 0 (got 0)");
  EXPECT_LT(seconds, 10.0) << "validating 2 MB of JSON took " << seconds << " s";
}

}  // namespace
}  // namespace lathe::configs
