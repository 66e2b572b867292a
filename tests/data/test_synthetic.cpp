// The synthetic corpus: determinism, and that every line obeys the rules the header
// promises, checked by a parser written here from those rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "data/synthetic.h"

using namespace lathe::data;

namespace {

std::vector<std::string> split_words(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream is(line);
  std::string w;
  while (is >> w) out.push_back(w);
  return out;
}

std::vector<std::string> complete_lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0, nl;
  while ((nl = text.find('\n', start)) != std::string::npos) {
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

bool is_number(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The grammar as the header states it.
struct Grammar {
  std::map<std::string, bool> noun_plural;  // word -> is plural
  std::set<std::string> animate, food, sizes, colors;
  std::map<std::string, std::string> verb_sg_to_pl;  // transitive and intransitive
  std::set<std::string> transitive_sg;
  Grammar() {
    const std::vector<std::pair<std::string, std::string>> nouns = {
        {"cat", "cats"},   {"dog", "dogs"},         {"fox", "foxes"},   {"bird", "birds"}, {"mouse", "mice"},
        {"child", "children"}, {"wolf", "wolves"},  {"owl", "owls"},    {"tree", "trees"}, {"box", "boxes"},
        {"ball", "balls"}, {"apple", "apples"},     {"house", "houses"}, {"egg", "eggs"}};
    for (const auto& [sg, pl] : nouns) {
      noun_plural[sg] = false;
      noun_plural[pl] = true;
    }
    for (const char* a : {"cat", "dog", "fox", "bird", "mouse", "child", "wolf", "owl"}) {
      animate.insert(a);
      animate.insert(plural_of(a, nouns));
    }
    for (const char* f : {"apple", "egg", "mouse", "bird"}) {
      food.insert(f);
      food.insert(plural_of(f, nouns));
    }
    sizes = {"small", "big", "old", "young"};
    colors = {"red", "blue", "green", "brown", "orange", "white"};
    verb_sg_to_pl = {{"sees", "see"}, {"likes", "like"}, {"chases", "chase"}, {"finds", "find"}, {"eats", "eat"},
                     {"runs", "run"}, {"sleeps", "sleep"}, {"jumps", "jump"}, {"sings", "sing"}, {"hides", "hide"}};
    transitive_sg = {"sees", "likes", "chases", "finds", "eats"};
  }
  static std::string plural_of(const std::string& sg, const std::vector<std::pair<std::string, std::string>>& ns) {
    for (const auto& p : ns)
      if (p.first == sg) return p.second;
    return "";
  }
};

// Parses a noun phrase starting at w[i]; returns its number, advances i. Adds failures.
bool parse_np(const Grammar& g, const std::vector<std::string>& w, size_t& i, bool subject,
              bool food_only, const std::string& ctx) {
  EXPECT_LT(i + 1, w.size()) << ctx;
  const std::string det = w[i++];
  std::vector<std::string> adjs;
  while (i < w.size() && (g.sizes.count(w[i]) || g.colors.count(w[i]))) adjs.push_back(w[i++]);
  EXPECT_LT(i, w.size()) << ctx;
  if (i >= w.size()) return false;
  const std::string noun = w[i++];
  EXPECT_TRUE(g.noun_plural.count(noun)) << "not a noun: " << noun << " in " << ctx;
  const bool plural = g.noun_plural.count(noun) ? g.noun_plural.at(noun) : false;
  if (subject) {
    EXPECT_TRUE(g.animate.count(noun)) << "inanimate subject " << noun << " in " << ctx;
  }
  if (food_only) {
    EXPECT_TRUE(g.food.count(noun)) << "eats a non-food " << noun << " in " << ctx;
  }
  // Adjectives: at most one size/age then at most one colour, in that order.
  EXPECT_LE(adjs.size(), 2u) << ctx;
  if (adjs.size() == 2) {
    EXPECT_TRUE(g.sizes.count(adjs[0]) && g.colors.count(adjs[1])) << "adjective order in " << ctx;
  }
  const std::string& next = adjs.empty() ? noun : adjs[0];
  const bool vowel = std::string("aeiou").find(next[0]) != std::string::npos;
  if (det == "a" || det == "an") {
    EXPECT_FALSE(plural) << "\"" << det << "\" with a plural in " << ctx;
    EXPECT_EQ(det == "an", vowel) << "a/an before \"" << next << "\" in " << ctx;
  } else if (det == "some" || det == "two" || det == "three" || det == "many") {
    EXPECT_TRUE(plural) << "\"" << det << "\" with a singular in " << ctx;
  } else {
    EXPECT_EQ(det, "the") << ctx;
  }
  return plural;
}

struct Counts {
  int64_t lines = 0, sentences = 0, facts = 0, arith = 0, count = 0, copy = 0, spell = 0, pronouns = 0;
};

void check_line(const Grammar& g, const std::string& line, Counts& c) {
  const std::vector<std::string> w = split_words(line);
  ASSERT_FALSE(w.empty());
  ASSERT_EQ(w.back(), ".") << line;
  ++c.lines;
  if (is_number(w[0])) {
    ++c.arith;
    ASSERT_EQ(w.size() % 6, 0u) << line;
    for (size_t i = 0; i < w.size(); i += 6) {
      const int a = std::stoi(w[i]), b = std::stoi(w[i + 2]), r = std::stoi(w[i + 4]);
      EXPECT_TRUE(a >= 0 && a <= 9 && b >= 0 && b <= 9) << line;
      EXPECT_EQ(w[i + 3], "=");
      EXPECT_EQ(w[i + 5], ".");
      if (w[i + 1] == "+") {
        EXPECT_EQ(a + b, r) << line;
      } else if (w[i + 1] == "-") {
        EXPECT_EQ(a - b, r) << line;
      } else if (w[i + 1] == "*") {
        EXPECT_EQ(a * b, r) << line;
      } else {
        ADD_FAILURE() << "unknown operator in " << line;
      }
      EXPECT_GE(r, 0) << line;
      ++c.facts;
    }
  } else if (w[0] == "count") {
    EXPECT_TRUE(w.size() >= 5 && w.size() <= 8) << line;
    for (size_t i = 2; i + 1 < w.size(); ++i) EXPECT_EQ(std::stoi(w[i]), std::stoi(w[i - 1]) + 1) << line;
    ++c.count;
  } else if (w[0] == "copy") {
    auto colon = std::find(w.begin(), w.end(), ":");
    ASSERT_NE(colon, w.end()) << line;
    std::vector<std::string> left(w.begin() + 1, colon), right(colon + 1, w.end() - 1);
    EXPECT_EQ(left, right) << line;
    EXPECT_TRUE(left.size() >= 2 && left.size() <= 4) << line;
    ++c.copy;
  } else if (w[0] == "spell") {
    ASSERT_GE(w.size(), 4u);
    EXPECT_EQ(w[2], ":") << line;
    std::string letters;
    for (size_t i = 3; i + 1 < w.size(); ++i) {
      EXPECT_EQ(w[i].size(), 1u) << line;
      letters += w[i];
    }
    EXPECT_EQ(letters, w[1]) << line;
    ++c.spell;
  } else {
    size_t i = 0;
    bool have_prev = false, prev_plural = false;
    while (i < w.size()) {
      bool plural;
      if (w[i] == "it" || w[i] == "they") {
        EXPECT_TRUE(have_prev) << "pronoun opens a story: " << line;
        plural = w[i] == "they";
        EXPECT_EQ(plural, prev_plural) << "pronoun does not agree with the previous subject: " << line;
        ++i;
        ++c.pronouns;
      } else {
        plural = parse_np(g, w, i, true, false, line);
      }
      ASSERT_LT(i, w.size()) << line;
      const std::string verb = w[i++];
      if (verb == "is" || verb == "are") {
        EXPECT_EQ(verb == "are", plural) << "copula agreement: " << line;
        ASSERT_LT(i, w.size());
        EXPECT_TRUE(g.sizes.count(w[i]) || g.colors.count(w[i])) << line;
        ++i;
      } else {
        std::string sg;
        for (const auto& [s, p] : g.verb_sg_to_pl)
          if (verb == (plural ? p : s)) sg = s;
        EXPECT_FALSE(sg.empty()) << "verb \"" << verb << "\" does not agree or is unknown: " << line;
        if (g.transitive_sg.count(sg)) parse_np(g, w, i, false, sg == "eats", line);
      }
      ASSERT_LT(i, w.size()) << line;
      EXPECT_EQ(w[i], ".") << line;
      ++i;
      have_prev = true;
      prev_plural = plural;
      ++c.sentences;
    }
  }
}

// Empirical conditional entropy (bits per byte) of a byte given the previous `order` bytes.
double empirical_entropy(const std::string& s, int order) {
  std::map<std::string, std::map<char, int64_t>> counts;
  for (size_t i = order; i < s.size(); ++i) ++counts[s.substr(i - order, order)][s[i]];
  double bits = 0;
  int64_t n = 0;
  for (const auto& [ctx, next] : counts) {
    int64_t total = 0;
    for (const auto& kv : next) total += kv.second;
    for (const auto& kv : next) bits -= kv.second * std::log2(static_cast<double>(kv.second) / total);
    n += total;
  }
  return bits / n;
}

}  // namespace

TEST(Synthetic, DeterministicPerSeedAndPrefixStable) {
  const std::string a = synthetic_corpus(1, 50000);
  EXPECT_EQ(a.size(), 50000u);
  EXPECT_EQ(a, synthetic_corpus(1, 50000));
  EXPECT_NE(a, synthetic_corpus(2, 50000));
  EXPECT_NE(a.substr(0, 200), synthetic_corpus(2, 200));
  // A shorter corpus is a prefix of a longer one.
  EXPECT_EQ(synthetic_corpus(1, 1234), a.substr(0, 1234));
  EXPECT_EQ(synthetic_corpus(1, 0), "");
  EXPECT_EQ(synthetic_corpus(7).size(), kDefaultSyntheticBytes);
}

TEST(Synthetic, EveryLineFollowsTheRules) {
  const Grammar g;
  for (uint64_t seed : {0ull, 1ull, 99ull}) {
    SyntheticOptions o;
    o.seed = seed;
    o.bytes = 200000;
    SyntheticCorpus corpus = generate_synthetic(o);
    Counts c;
    const auto lines = complete_lines(corpus.text);
    for (const auto& line : lines) check_line(g, line, c);
    // The header's counts describe what is actually there.
    const SyntheticStats& s = corpus.stats;
    EXPECT_EQ(s.lines, c.lines);
    EXPECT_EQ(s.story_sentences, c.sentences);
    EXPECT_EQ(s.arithmetic_facts, c.facts);
    EXPECT_EQ(s.count_lines, c.count);
    EXPECT_EQ(s.copy_lines, c.copy);
    EXPECT_EQ(s.spell_lines, c.spell);
    EXPECT_EQ(s.complete_bytes, static_cast<int64_t>(corpus.text.rfind('\n') + 1));
    // Every kind shows up, in roughly the stated proportions (5:3:1:1:1 of lines).
    const int64_t stories = c.lines - c.arith - c.count - c.copy - c.spell;
    EXPECT_GT(c.pronouns, 100);
    EXPECT_NEAR(static_cast<double>(stories) / c.lines, 5.0 / 11, 0.03);
    EXPECT_NEAR(static_cast<double>(c.arith) / c.lines, 3.0 / 11, 0.03);
    EXPECT_NEAR(static_cast<double>(c.count) / c.lines, 1.0 / 11, 0.02);
    EXPECT_NEAR(static_cast<double>(c.copy) / c.lines, 1.0 / 11, 0.02);
    EXPECT_NEAR(static_cast<double>(c.spell) / c.lines, 1.0 / 11, 0.02);
    // Every word of a story is in the published lexicon.
    const auto& lex = synthetic_lexicon();
    for (const auto& line : lines) {
      const auto w = split_words(line);
      if (w[0] == "count" || w[0] == "copy" || w[0] == "spell" || is_number(w[0])) continue;
      for (const auto& x : w) {
        if (x != ".") {
          EXPECT_TRUE(std::binary_search(lex.begin(), lex.end(), x)) << x;
        }
      }
    }
  }
}

TEST(Synthetic, EntropyFloorIsBelowSimpleModels) {
  SyntheticCorpus c = generate_synthetic({3, 300000});
  const double floor = c.stats.bits_per_byte();
  // Any model's cross-entropy bounds the true entropy rate from above; byte-frequency and
  // previous-byte models are such models (measured on the same text).
  const double h0 = empirical_entropy(c.text, 0), h1 = empirical_entropy(c.text, 1);
  EXPECT_LT(floor, h1);
  EXPECT_LT(h1, h0);
  EXPECT_GT(floor, 0.3);
  EXPECT_LT(floor, 2.0);
}
