#include "data/bpe_train.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe.h"
#include "data/hf_tokenizer_files.h"

namespace lathe {
namespace data {

namespace {

std::string read_prefix(const std::string& path, int64_t max_bytes) {
  std::ifstream f(path, std::ios::binary);
  LATHE_CHECK(f.good()) << "train_bpe: cannot open corpus file '" << path << "'";
  std::string text;
  if (max_bytes >= 0) {
    text.resize(static_cast<size_t>(max_bytes));
    f.read(&text[0], max_bytes);
    text.resize(static_cast<size_t>(f.gcount()));
  } else {
    f.seekg(0, std::ios::end);
    const auto size = static_cast<size_t>(f.tellg());
    f.seekg(0);
    text.resize(size);
    f.read(&text[0], static_cast<std::streamsize>(size));
    text.resize(static_cast<size_t>(f.gcount()));
  }
  return text;
}

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct HeapEntry {
  int64_t count;
  uint64_t key;
  // Max-heap on count; among equal counts the smaller pair (a, b) comes first.
  bool operator<(const HeapEntry& o) const { return count != o.count ? count < o.count : key > o.key; }
};

}  // namespace

std::string train_bpe_json(const std::vector<std::string>& files, const BpeTrainOptions& opt,
                           BpeTrainStats* stats_out) {
  const int32_t n_special = static_cast<int32_t>(opt.special_tokens.size());
  LATHE_CHECK(!files.empty()) << "train_bpe: no corpus files given";
  LATHE_CHECK(opt.vocab_size >= 256 + n_special)
      << "train_bpe: vocab_size " << opt.vocab_size << " is smaller than the 256 byte tokens plus "
      << n_special << " special tokens";
  for (size_t k = 0; k < opt.special_tokens.size(); ++k) {
    LATHE_CHECK(!opt.special_tokens[k].empty()) << "train_bpe: special token " << k << " is empty";
    for (size_t m = 0; m < k; ++m)
      LATHE_CHECK(opt.special_tokens[m] != opt.special_tokens[k])
          << "train_bpe: special token '" << opt.special_tokens[k] << "' is given twice";
  }
  BpeTrainStats stats;

  // 1. Word frequencies. Special tokens are cut out so that no merge spans or learns them.
  std::vector<std::string> texts;
  texts.reserve(files.size());
  std::unordered_map<std::string_view, int64_t> freq;
  for (const std::string& path : files) {
    texts.push_back(read_prefix(path, opt.max_bytes_per_file));
    const std::string_view text = texts.back();
    stats.corpus_bytes += static_cast<int64_t>(text.size());
    size_t seg = 0;
    while (seg <= text.size()) {
      size_t cut = text.size(), cut_len = 0;
      for (const std::string& s : opt.special_tokens) {
        const size_t at = text.find(s, seg);
        if (at < cut) cut = at, cut_len = s.size();
      }
      const std::string_view part = text.substr(seg, cut - seg);
      for (size_t pos = 0; pos < part.size();) {
        const size_t end = next_piece(part, pos, opt.pattern);
        ++freq[part.substr(pos, end - pos)];
        ++stats.num_words;
        pos = end;
      }
      if (cut == text.size()) break;
      seg = cut + cut_len;
    }
  }
  stats.num_unique_words = static_cast<int64_t>(freq.size());

  // Words in byte order, so that word indices (and everything after) are deterministic.
  std::vector<std::pair<std::string_view, int64_t>> sorted(freq.begin(), freq.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> counts(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    counts[w] = sorted[w].second;
    for (unsigned char b : sorted[w].first) words[w].push_back(b);
  }
  freq.clear();

  // 2. Pair counts and, per pair, the words that contain it (may hold stale entries).
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      pair_count[k] += counts[w];
      auto& list = where[k];
      if (list.empty() || list.back() != static_cast<int32_t>(w)) list.push_back(static_cast<int32_t>(w));
    }
  }
  std::priority_queue<HeapEntry> heap;
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  // 3. Merge loop.
  std::vector<std::string> token(256);
  for (int b = 0; b < 256; ++b) token[b] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, int32_t> token_id;
  for (int b = 0; b < 256; ++b) token_id[token[b]] = b;
  std::vector<std::pair<int32_t, int32_t>> merges;
  const int32_t target = opt.vocab_size - n_special;
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged_word;

  while (static_cast<int32_t>(token.size()) < target && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.key);
    if (pc == pair_count.end() || pc->second != top.count) continue;  // stale entry
    if (top.count < std::max<int64_t>(opt.min_frequency, 1)) break;
    const auto a = static_cast<int32_t>(top.key >> 32), b = static_cast<int32_t>(top.key & 0xFFFFFFFFu);
    const std::string bytes = token[a] + token[b];
    // Two different pairs can spell the same bytes ("ab"+"c", "a"+"bc"): they share one id.
    int32_t id;
    auto existing = token_id.find(bytes);
    if (existing != token_id.end()) {
      id = existing->second;
    } else {
      id = static_cast<int32_t>(token.size());
      token.push_back(bytes);
      token_id.emplace(bytes, id);
    }
    merges.emplace_back(a, b);

    std::vector<int32_t> affected = std::move(where[top.key]);
    where.erase(top.key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    delta.clear();
    for (int32_t w : affected) {
      auto& s = words[w];
      const int64_t f = counts[w];
      merged_word.clear();
      bool changed = false;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          merged_word.push_back(id);
          i += 2;
          changed = true;
        } else {
          merged_word.push_back(s[i]);
          i += 1;
        }
      }
      if (!changed) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[pair_key(s[i], s[i + 1])] -= f;
      for (size_t i = 0; i + 1 < merged_word.size(); ++i) {
        const uint64_t k = pair_key(merged_word[i], merged_word[i + 1]);
        delta[k] += f;
        if (merged_word[i] == id || merged_word[i + 1] == id) {
          auto& list = where[k];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
      s.swap(merged_word);
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_count[k];
      c += d;
      if (c <= 0) {
        pair_count.erase(k);
      } else {
        heap.push({c, k});
      }
    }
    pair_count.erase(top.key);  // every occurrence was merged
  }

  // 4. tokenizer.json.
  using ojson = nlohmann::ordered_json;
  const int32_t n_tokens = static_cast<int32_t>(token.size());
  ojson vocab = ojson::object();
  for (int32_t id = 0; id < n_tokens; ++id) vocab[bytes_to_unicode(token[id])] = id;
  ojson added = ojson::array();
  for (int32_t k = 0; k < n_special; ++k) {
    const int32_t id = n_tokens + k;
    vocab[opt.special_tokens[k]] = id;
    added.push_back(special_added_token(id, opt.special_tokens[k]));
  }
  ojson merges_json = ojson::array();
  for (const auto& [x, y] : merges) merges_json.push_back({bytes_to_unicode(token[x]), bytes_to_unicode(token[y])});

  ojson pre;
  if (opt.pattern == PretokPattern::kGpt2) {
    pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    pre = {{"type", "Sequence"},
           {"pretokenizers",
            {{{"type", "Split"},
              {"pattern", {{"Regex", pretok_pattern_string(opt.pattern)}}},
              {"behavior", "Isolated"},
              {"invert", false}},
             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  }
  BpeJsonParts parts;
  parts.added_tokens = std::move(added);
  parts.pre_tokenizer = std::move(pre);
  parts.post_processor = nullptr;
  parts.decoder = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  parts.affix = nullptr;
  parts.vocab = std::move(vocab);
  parts.merges = std::move(merges_json);
  const ojson j = bpe_tokenizer_json(parts);

  stats.vocab_size = n_tokens + n_special;
  stats.num_merges = static_cast<int32_t>(merges.size());
  if (stats_out) *stats_out = stats;
  return j.dump(1);
}

BpeTrainStats train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& options,
                        const std::string& out_path) {
  BpeTrainStats stats;
  const std::string text = train_bpe_json(files, options, &stats);
  const std::string tmp = out_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    LATHE_CHECK(f.good()) << "train_bpe: cannot write '" << tmp << "'";
    f << text;
    f.close();
    LATHE_CHECK(f.good()) << "train_bpe: writing '" << tmp << "' failed";
  }
  LATHE_CHECK(std::rename(tmp.c_str(), out_path.c_str()) == 0)
      << "train_bpe: cannot rename '" << tmp << "' to '" << out_path << "'";
  return stats;
}

BpeTrainStats train_bpe(const std::vector<std::string>& files, int32_t vocab_size,
                        const std::vector<std::string>& special_tokens, const std::string& out_path) {
  BpeTrainOptions o;
  o.vocab_size = vocab_size;
  o.special_tokens = special_tokens;
  return train_bpe(files, o, out_path);
}

}  // namespace data
}  // namespace lathe
