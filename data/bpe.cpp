#include "data/bpe.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>

#include "core/error.h"
#include "data/unicode.h"

namespace lathe {
namespace data {

namespace {

// GPT-2's byte-to-character map: printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
// themselves; the other 68 bytes get the code points 256, 257, ... in byte order, so every
// byte has a visible, non-space character and BPE never sees whitespace or controls.
struct ByteMap {
  std::string to_text[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      unicode::append_utf8(to_text[b], cp);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// FNV-1a, 64 bit: a stable content hash for tokenizer identity strings.
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* p, size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 0x100000001b3ull;
  }
  void i64(int64_t v) { bytes(&v, sizeof v); }
  void str(const std::string& s) {
    i64(static_cast<int64_t>(s.size()));
    bytes(s.data(), s.size());
  }
};

}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_map().to_text[b]; }

std::string bytes_to_unicode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += byte_map().to_text[b];
  return out;
}

bool unicode_to_bytes(std::string_view text, std::string& bytes) {
  bytes.clear();
  const auto& m = byte_map().to_byte;
  for (size_t i = 0; i < text.size();) {
    const unicode::Decoded d = unicode::decode_utf8(text.data(), text.size(), i);
    auto it = m.find(d.cp);
    if (d.cp == unicode::kInvalid || it == m.end()) return false;
    bytes.push_back(static_cast<char>(it->second));
    i += d.len;
  }
  return true;
}

BpeTokenizer::BpeTokenizer(const BpeSpec& spec)
    : source_(spec.source),
      pattern_(spec.pattern),
      add_prefix_space_(spec.add_prefix_space),
      ignore_merges_(spec.ignore_merges),
      cache_(new CacheShard[kCacheShards]) {
  const std::string where = "tokenizer '" + source_ + "'";
  int32_t max_id = -1;
  for (const auto& [tok, id] : spec.vocab) {
    LATHE_CHECK(id >= 0) << where << ": vocab token '" << tok << "' has negative id " << id;
    max_id = std::max(max_id, id);
  }
  for (const auto& a : spec.added_tokens) {
    LATHE_CHECK(a.id >= 0) << where << ": added token '" << a.content << "' has negative id " << a.id;
    LATHE_CHECK(!a.content.empty()) << where << ": added token " << a.id << " has empty content";
    max_id = std::max(max_id, a.id);
  }
  LATHE_CHECK(max_id >= 0) << where << ": the vocabulary is empty";
  token_bytes_.assign(max_id + 1, std::string());
  token_text_.assign(max_id + 1, std::string());
  present_.assign(max_id + 1, 0);

  std::string bytes;
  for (const auto& [tok, id] : spec.vocab) {
    LATHE_CHECK(!present_[id]) << where << ": id " << id << " is used by both '" << token_text_[id]
                               << "' and '" << tok << "'";
    present_[id] = 1;
    token_text_[id] = tok;
    text_to_id_.emplace(tok, id);
    // A vocabulary string outside the byte map (possible for special tokens written into the
    // vocab) cannot come out of BPE; it decodes as its own text.
    if (unicode_to_bytes(tok, bytes)) {
      token_bytes_[id] = bytes;
      bytes_to_id_.emplace(bytes, id);
    } else {
      token_bytes_[id] = tok;
    }
  }
  for (const auto& a : spec.added_tokens) {
    if (present_[a.id]) {
      LATHE_CHECK(token_text_[a.id] == a.content)
          << where << ": added token '" << a.content << "' has id " << a.id
          << ", which the vocab gives to '" << token_text_[a.id] << "'";
    }
    present_[a.id] = 1;
    token_text_[a.id] = a.content;
    token_bytes_[a.id] = a.content;
    text_to_id_[a.content] = a.id;
    added_.push_back(a);
  }

  for (int b = 0; b < 256; ++b) {
    auto it = bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    byte_id_[b] = it == bytes_to_id_.end() ? -1 : it->second;
  }

  merges_.reserve(spec.merges.size() * 2);
  int32_t rank = 0;
  for (const auto& [a, b] : spec.merges) {
    auto ia = text_to_id_.find(a), ib = text_to_id_.find(b), im = text_to_id_.find(a + b);
    LATHE_CHECK(ia != text_to_id_.end() && ib != text_to_id_.end() && im != text_to_id_.end())
        << where << ": merge #" << rank << " '" << a << " " << b << "' uses a token that is not in the vocab ('"
        << (ia == text_to_id_.end() ? a : ib == text_to_id_.end() ? b : a + b) << "')";
    // The first occurrence of a pair wins, as in the reference implementations.
    merges_.emplace(pair_key(ia->second, ib->second), Merge{rank, im->second});
    ++rank;
  }
  num_merges_ = rank;

  if (!spec.unk_token.empty()) {
    auto it = text_to_id_.find(spec.unk_token);
    LATHE_CHECK(it != text_to_id_.end()) << where << ": unk_token '" << spec.unk_token << "' is not in the vocab";
    unk_id_ = it->second;
    special_.unk = unk_id_;
  }
  auto role = [&](const std::string& name, const char* what) -> std::optional<int32_t> {
    if (name.empty()) return std::nullopt;
    auto it = text_to_id_.find(name);
    LATHE_CHECK(it != text_to_id_.end()) << where << ": " << what << " token '" << name << "' is not in the vocab";
    return it->second;
  };
  special_.bos = role(spec.bos_token, "bos");
  special_.eos = role(spec.eos_token, "eos");
  special_.pad = role(spec.pad_token, "pad");

  build_matcher(match_all_, true);
  build_matcher(match_plain_, false);

  // Identity: everything that decides the ids of a text or the text of ids.
  Fnv h;
  h.str(pretok_name(pattern_));
  h.i64(add_prefix_space_);
  h.i64(ignore_merges_);
  h.i64(unk_id_);
  h.i64(static_cast<int64_t>(token_bytes_.size()));
  for (size_t id = 0; id < token_bytes_.size(); ++id) {
    h.i64(present_[id]);
    h.str(token_bytes_[id]);
  }
  for (const auto& [a, b] : spec.merges) {
    h.i64(text_to_id_.at(a));
    h.i64(text_to_id_.at(b));
  }
  std::vector<BpeAddedToken> sorted = added_;
  std::sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) { return x.id < y.id; });
  for (const auto& a : sorted) {
    h.i64(a.id);
    h.i64(a.special);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h.h));
  id_ = std::string("bpe:") + hex;
}

void BpeTokenizer::build_matcher(AddedMatcher& m, bool include_special) const {
  m.by_first.assign(256, {});
  for (size_t k = 0; k < added_.size(); ++k) {
    if (added_[k].special && !include_special) continue;
    const auto b = static_cast<unsigned char>(added_[k].content[0]);
    m.first[b] = true;
    m.by_first[b].push_back(static_cast<int32_t>(k));
  }
  for (auto& v : m.by_first)
    std::stable_sort(v.begin(), v.end(), [this](int32_t x, int32_t y) {
      return added_[x].content.size() > added_[y].content.size();
    });
}

int32_t BpeTokenizer::match_added(const AddedMatcher& m, std::string_view text, size_t pos) const {
  for (int32_t k : m.by_first[static_cast<unsigned char>(text[pos])]) {
    const std::string& c = added_[k].content;
    if (text.size() - pos >= c.size() && text.compare(pos, c.size(), c) == 0) return k;
  }
  return -1;
}

void BpeTokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                                 bool allow_special) const {
  const AddedMatcher& m = allow_special ? match_all_ : match_plain_;
  size_t seg = 0;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    if (!m.first[static_cast<unsigned char>(text[pos])]) continue;
    const int32_t k = match_added(m, text, pos);
    if (k < 0) continue;
    encode_segment(text.substr(seg, pos - seg), out);
    out.push_back(added_[k].id);
    pos += added_[k].content.size() - 1;
    seg = pos + 1;
  }
  encode_segment(text.substr(seg), out);
}

size_t BpeTokenizer::next_cut(std::string_view text, size_t from, bool allow_special) const {
  constexpr size_t npos = std::string_view::npos;
  if (add_prefix_space_) return npos;
  for (const BpeAddedToken& a : added_)
    if ((allow_special || !a.special) && a.content.find('\n') != std::string::npos) return npos;
  // Why "x\nA" (x printable ASCII, not a space; A an ASCII letter) is a word boundary that
  // no lookahead sees across, for the three patterns of data/pretokenize.h:
  //  - no alternative matches a run holding both a newline and a following letter, so no
  //    word spans from "\n" into "A", and the word after the cut starts at "A" in both cases
  //    (the patterns have no lookbehind);
  //  - the word holding x cannot take the newline, except Llama-3/Qwen2's
  //    " ?[^\s\p{L}\p{N}]+[\r\n]*", which takes it and ends at the cut either way;
  //  - otherwise "\n" is a word of its own: GPT-2's "\s+(?!\S)" fails before "A" and
  //    "\s+" matches it, while at the end of the first piece "\s+(?!\S)" matches it;
  //    Llama-3's "\s*[\r\n]+" matches it in both. Either way the word is "\n".
  //  - an added token can only span the cut if it holds "\n" (excluded above).
  auto letter = [](unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; };
  // n: the newline's index; the cut is at n + 1, which needs n >= 1 and n + 1 < size.
  for (size_t n = std::max<size_t>(from, 2) - 1; n + 1 < text.size();) {
    const void* nl = std::memchr(text.data() + n, '\n', text.size() - 1 - n);
    if (nl == nullptr) return npos;
    n = static_cast<size_t>(static_cast<const char*>(nl) - text.data());
    const auto x = static_cast<unsigned char>(text[n - 1]);
    if (x > 0x20 && x < 0x7f && letter(static_cast<unsigned char>(text[n + 1]))) return n + 1;
    ++n;
  }
  return npos;
}

void BpeTokenizer::encode_segment(std::string_view segment, std::vector<int32_t>& out) const {
  if (segment.empty()) return;
  std::string prefixed;
  if (add_prefix_space_ && segment[0] != ' ') {
    // Hugging Face ByteLevel(add_prefix_space): a space goes in front of each segment, so
    // that the first word is encoded like a word inside a sentence.
    prefixed.reserve(segment.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(segment);
    segment = prefixed;
  }
  for (size_t pos = 0; pos < segment.size();) {
    const size_t end = next_piece(segment, pos, pattern_);
    encode_word(segment.substr(pos, end - pos), out);
    pos = end;
  }
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1 && byte_id_[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (word.size() > 256) {  // long runs (e.g. "=====...") are rare; caching them only costs memory
    bpe_word(word, out);
    return;
  }
  const uint64_t h = std::hash<std::string_view>()(word);
  CacheShard& shard = cache_[h % kCacheShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(h);
    if (it != shard.map.end() && it->second.word_len == word.size() &&
        word.compare(0, word.size(), shard.words.data() + it->second.word_off, it->second.word_len) == 0) {
      const int32_t* p = shard.ids.data() + it->second.ids_off;
      out.insert(out.end(), p, p + it->second.ids_len);
      return;
    }
  }
  const size_t start = out.size();
  auto direct = bytes_to_id_.end();
  if (ignore_merges_) direct = bytes_to_id_.find(std::string(word));
  if (direct != bytes_to_id_.end()) {
    out.push_back(direct->second);
  } else {
    bpe_word(word, out);
  }
  std::lock_guard<std::mutex> lock(shard.mu);
  // Bounded memory: a shard that grew past its budget starts over.
  if (shard.ids.size() > (1u << 22) || shard.words.size() > (1u << 24) || shard.map.size() > (1u << 16)) {
    shard.map.clear();
    shard.ids.clear();
    shard.words.clear();
  }
  // A hash collision keeps the first word; the second is simply not cached.
  CacheEntry e{static_cast<uint32_t>(shard.words.size()), static_cast<uint32_t>(word.size()),
               static_cast<uint32_t>(shard.ids.size()), static_cast<uint32_t>(out.size() - start)};
  if (shard.map.emplace(h, e).second) {
    shard.words.append(word);
    shard.ids.insert(shard.ids.end(), out.begin() + start, out.end());
  }
}

void BpeTokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  const int n = static_cast<int>(word.size());
  // Symbols as a linked list over byte positions; a merged-away symbol has id -1.
  std::vector<int32_t> sym(n), next(n), prev(n);
  for (int i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned char>(word[i]);
    int32_t id = byte_id_[b];
    if (id < 0) {
      LATHE_CHECK(unk_id_ >= 0) << "tokenizer '" << source_ << "': byte 0x" << std::hex << int(b)
                                << " has no token in the vocabulary (and there is no unk_token)";
      id = unk_id_;
    }
    sym[i] = id;
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  // Candidate merges ordered by (rank, position): the lowest rank first, leftmost on ties.
  // Entries go stale when a neighbour merges; they are checked against the list on pop.
  struct Cand {
    int32_t rank, pos, left, right, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int i) {
    if (i < 0 || next[i] >= n) return;
    auto it = merges_.find(pair_key(sym[i], sym[next[i]]));
    if (it != merges_.end()) heap.push({it->second.rank, i, sym[i], sym[next[i]], it->second.id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int i = c.pos;
    if (sym[i] != c.left || next[i] >= n || sym[next[i]] != c.right) continue;
    const int j = next[i];
    sym[i] = c.merged;
    sym[j] = -1;
    next[i] = next[j];
    if (next[i] < n) prev[next[i]] = i;
    push(prev[i]);
    push(i);
  }
  for (int i = 0; i < n; i = next[i]) out.push_back(sym[i]);
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (size_t k = 0; k < ids.size(); ++k) {
    const int32_t id = ids[k];
    LATHE_CHECK(id >= 0 && id < vocab_size() && present_[id])
        << "tokenizer '" << source_ << "': decode: id " << id << " at position " << k
        << " is not in the vocabulary (size " << vocab_size() << ")";
    out += token_bytes_[id];
  }
  return out;
}

std::optional<int32_t> BpeTokenizer::token_to_id(const std::string& token) const {
  auto it = text_to_id_.find(token);
  if (it == text_to_id_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !present_[id]) return std::nullopt;
  return token_text_[id];
}

std::vector<std::pair<std::string, int32_t>> BpeTokenizer::special_tokens() const {
  std::vector<std::pair<std::string, int32_t>> out;
  for (const auto& a : added_)
    if (a.special) out.emplace_back(a.content, a.id);
  return out;
}

const std::string& BpeTokenizer::token_bytes(int32_t id) const {
  LATHE_CHECK(id >= 0 && id < vocab_size() && present_[id])
      << "tokenizer '" << source_ << "': id " << id << " is not in the vocabulary";
  return token_bytes_[id];
}

}  // namespace data
}  // namespace lathe
