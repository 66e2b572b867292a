#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <set>

#include "core/error.h"
#include "core/rng.h"

namespace lathe::data {

namespace {

struct Noun {
  const char* sg;
  const char* pl;
  bool animate;  // may be a subject
  bool food;     // may be the object of "eats"
};
const Noun kNouns[] = {
    {"cat", "cats", true, false},      {"dog", "dogs", true, false},     {"fox", "foxes", true, false},
    {"bird", "birds", true, true},     {"mouse", "mice", true, true},    {"child", "children", true, false},
    {"wolf", "wolves", true, false},   {"owl", "owls", true, false},     {"tree", "trees", false, false},
    {"box", "boxes", false, false},    {"ball", "balls", false, false},  {"apple", "apples", false, true},
    {"house", "houses", false, false}, {"egg", "eggs", false, true},
};
const char* const kSizes[] = {"small", "big", "old", "young"};  // size/age: comes first
const char* const kColors[] = {"red", "blue", "green", "brown", "orange", "white"};
struct Verb {
  const char* sg;
  const char* pl;
};
const Verb kTransitive[] = {{"sees", "see"}, {"likes", "like"}, {"chases", "chase"}, {"finds", "find"}, {"eats", "eat"}};
constexpr int kEats = 4;  // index of "eats": takes only food objects
const Verb kIntransitive[] = {{"runs", "run"}, {"sleeps", "sleep"}, {"jumps", "jump"}, {"sings", "sing"}, {"hides", "hide"}};
const char* const kPluralDets[] = {"the", "some", "two", "three", "many"};

template <typename T, size_t N>
constexpr int count_of(const T (&)[N]) {
  return static_cast<int>(N);
}

std::vector<const Noun*> nouns_where(bool (*pred)(const Noun&)) {
  std::vector<const Noun*> out;
  for (const Noun& n : kNouns)
    if (pred(n)) out.push_back(&n);
  return out;
}

// Draws choices from a Philox stream and keeps the information they carry.
class Chooser {
 public:
  // The tag keeps this stream apart from a model initialised with the same seed.
  explicit Chooser(uint64_t seed) : gen_(seed ^ 0x73796e7468657469ull) {}

  // Uniform in [0, n). Multiply-shift of 32 random bits: the bias is below n / 2^32.
  int uniform(int n) {
    bits_ += std::log2(static_cast<double>(n));
    return static_cast<int>((static_cast<uint64_t>(gen_.next_u32()) * static_cast<uint64_t>(n)) >> 32);
  }
  // Index i with probability w[i] / sum(w).
  int weighted(std::initializer_list<int> w) {
    int total = 0;
    for (int x : w) total += x;
    int r = static_cast<int>((static_cast<uint64_t>(gen_.next_u32()) * static_cast<uint64_t>(total)) >> 32);
    int i = 0;
    for (int x : w) {
      if (r < x) {
        bits_ -= std::log2(static_cast<double>(x) / total);
        return i;
      }
      r -= x;
      ++i;
    }
    LATHE_FAIL() << "synthetic: weighted choice out of range";
    return 0;
  }
  double bits() const { return bits_; }

 private:
  Generator gen_;
  double bits_ = 0;
};

class LineMaker {
 public:
  explicit LineMaker(uint64_t seed) : c_(seed) {
    animate_ = nouns_where([](const Noun& n) { return n.animate; });
    food_ = nouns_where([](const Noun& n) { return n.food; });
    all_ = nouns_where([](const Noun&) { return true; });
    for (const char* a : kSizes) copy_words_.push_back(a);
    for (const char* a : kColors) copy_words_.push_back(a);
    for (const Noun& n : kNouns) copy_words_.push_back(n.sg);
    spell_words_ = copy_words_;
    for (const Noun& n : kNouns) spell_words_.push_back(n.pl);
  }

  // One line with its trailing newline; `counts` receives what it contains.
  std::string line(SyntheticStats& counts) {
    line_.clear();
    switch (c_.weighted({5, 3, 1, 1, 1})) {
      case 0: story(counts); break;
      case 1: arithmetic(counts); break;
      case 2: count(counts); break;
      case 3: copy(counts); break;
      default: spell(counts); break;
    }
    line_ += '\n';
    return line_;
  }
  double bits() const { return c_.bits(); }

 private:
  void word(const std::string& w) {
    if (!line_.empty()) line_ += ' ';
    line_ += w;
  }

  // determiner, optional size then colour adjective, noun; agreeing in number.
  void noun_phrase(const std::vector<const Noun*>& pool, bool plural) {
    const Noun* n = pool[c_.uniform(static_cast<int>(pool.size()))];
    std::vector<std::string> words;
    switch (c_.weighted({3, 2, 2, 1})) {  // none, size, colour, size + colour
      case 1: words.push_back(kSizes[c_.uniform(count_of(kSizes))]); break;
      case 2: words.push_back(kColors[c_.uniform(count_of(kColors))]); break;
      case 3:
        words.push_back(kSizes[c_.uniform(count_of(kSizes))]);
        words.push_back(kColors[c_.uniform(count_of(kColors))]);
        break;
      default: break;
    }
    words.push_back(plural ? n->pl : n->sg);
    if (plural) {
      word(kPluralDets[c_.uniform(count_of(kPluralDets))]);
    } else if (c_.uniform(2) == 0) {
      word("the");
    } else {
      // The indefinite article follows the sound of the next word (here: its first letter).
      const char first = words.front()[0];
      const bool vowel = first == 'a' || first == 'e' || first == 'i' || first == 'o' || first == 'u';
      word(vowel ? "an" : "a");
    }
    for (const auto& w : words) word(w);
  }

  void story(SyntheticStats& counts) {
    const int sentences = 1 + c_.uniform(4);
    bool prev_plural = false;
    for (int s = 0; s < sentences; ++s) {
      const int kind = c_.weighted({3, 2, 1});  // transitive, intransitive, copula
      bool plural;
      if (s > 0 && c_.uniform(3) == 0) {
        plural = prev_plural;  // the pronoun refers to the previous subject
        word(plural ? "they" : "it");
      } else {
        plural = c_.uniform(2) == 1;
        noun_phrase(animate_, plural);
      }
      if (kind == 0) {
        const int v = c_.uniform(count_of(kTransitive));
        word(plural ? kTransitive[v].pl : kTransitive[v].sg);
        const bool obj_plural = c_.uniform(2) == 1;
        noun_phrase(v == kEats ? food_ : all_, obj_plural);
      } else if (kind == 1) {
        const int v = c_.uniform(count_of(kIntransitive));
        word(plural ? kIntransitive[v].pl : kIntransitive[v].sg);
      } else {
        word(plural ? "are" : "is");
        const int a = c_.uniform(count_of(kSizes) + count_of(kColors));
        word(a < count_of(kSizes) ? kSizes[a] : kColors[a - count_of(kSizes)]);
      }
      word(".");
      prev_plural = plural;
      ++counts.story_sentences;
    }
  }

  void arithmetic(SyntheticStats& counts) {
    const int facts = 1 + c_.uniform(3);
    for (int f = 0; f < facts; ++f) {
      const int op = c_.uniform(3);
      int a = c_.uniform(10), b, r;
      if (op == 0) {
        b = c_.uniform(10);
        r = a + b;
      } else if (op == 1) {
        b = c_.uniform(a + 1);  // never negative
        r = a - b;
      } else {
        b = c_.uniform(10);
        r = a * b;
      }
      word(std::to_string(a));
      word(op == 0 ? "+" : op == 1 ? "-" : "*");
      word(std::to_string(b));
      word("=");
      word(std::to_string(r));
      word(".");
      ++counts.arithmetic_facts;
    }
  }

  void count(SyntheticStats& counts) {
    const int start = c_.uniform(21);
    const int len = 3 + c_.uniform(4);
    word("count");
    for (int i = 0; i < len; ++i) word(std::to_string(start + i));
    word(".");
    ++counts.count_lines;
  }

  void copy(SyntheticStats& counts) {
    const int n = 2 + c_.uniform(3);
    std::vector<std::string> ws;
    for (int i = 0; i < n; ++i) ws.push_back(copy_words_[c_.uniform(static_cast<int>(copy_words_.size()))]);
    word("copy");
    for (const auto& w : ws) word(w);
    word(":");
    for (const auto& w : ws) word(w);
    word(".");
    ++counts.copy_lines;
  }

  void spell(SyntheticStats& counts) {
    const std::string& w = spell_words_[c_.uniform(static_cast<int>(spell_words_.size()))];
    word("spell");
    word(w);
    word(":");
    for (char ch : w) word(std::string(1, ch));
    word(".");
    ++counts.spell_lines;
  }

  Chooser c_;
  std::string line_;
  std::vector<const Noun*> animate_, food_, all_;
  std::vector<std::string> copy_words_, spell_words_;
};

}  // namespace

SyntheticCorpus generate_synthetic(const SyntheticOptions& options) {
  SyntheticCorpus out;
  out.text.reserve(options.bytes);
  LineMaker maker(options.seed);
  while (out.text.size() < options.bytes) {
    SyntheticStats counts;
    const double bits_before = maker.bits();
    const std::string line = maker.line(counts);
    if (out.text.size() + line.size() <= options.bytes) {
      SyntheticStats& s = out.stats;
      ++s.lines;
      s.story_sentences += counts.story_sentences;
      s.arithmetic_facts += counts.arithmetic_facts;
      s.count_lines += counts.count_lines;
      s.copy_lines += counts.copy_lines;
      s.spell_lines += counts.spell_lines;
      s.complete_bytes += static_cast<int64_t>(line.size());
      s.choice_bits += maker.bits() - bits_before;
      out.text += line;
    } else {
      out.text.append(line, 0, options.bytes - out.text.size());
    }
  }
  return out;
}

std::string synthetic_corpus(uint64_t seed, size_t bytes) {
  SyntheticOptions o;
  o.seed = seed;
  o.bytes = bytes;
  return generate_synthetic(o).text;
}

const std::vector<std::string>& synthetic_lexicon() {
  static const std::vector<std::string> lexicon = [] {
    std::set<std::string> s = {"the", "a", "an", "it", "they", "is", "are"};
    for (const Noun& n : kNouns) s.insert({n.sg, n.pl});
    for (const char* a : kSizes) s.insert(a);
    for (const char* a : kColors) s.insert(a);
    for (const Verb& v : kTransitive) s.insert({v.sg, v.pl});
    for (const Verb& v : kIntransitive) s.insert({v.sg, v.pl});
    for (const char* d : kPluralDets) s.insert(d);
    return std::vector<std::string>(s.begin(), s.end());
  }();
  return lexicon;
}

}  // namespace lathe::data
