// BpeTokenizer: byte-level BPE (GPT-2, and Hugging Face tokenizer.json files of the GPT-2,
// Llama-3 and Qwen2 families).
//
// Encoding (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners",
// section 2.2; Sennrich et al. 2016 for BPE itself):
//   1. added tokens (special tokens such as <|endoftext|>) are cut out of the text first
//      and become their own ids;
//   2. each remaining segment is split into words by the regex pre-tokenizer
//      (data/pretokenize.h);
//   3. each word's bytes start as one symbol per byte, and the adjacent pair with the
//      lowest merge rank is merged until no pair has a rank (leftmost first on equal rank);
//      with ignore_merges (Llama-3) a word that is itself in the vocabulary maps directly.
//   Words are cached, so repeated words cost one hash lookup.
//
// The vocabulary files write each token's bytes through GPT-2's reversible byte-to-
// character map (byte 0x20 ' ' is "Ġ", 0x0A '\n' is "Ċ", printable ASCII is itself); the
// tokenizer converts them to raw bytes once at load, so encoding never builds those strings.
//
// Decoding concatenates the tokens' bytes, so decode(encode(s)) == s for any byte string s
// whose bytes all have a token (always true for a full byte-level vocabulary; a tokenizer
// with add_prefix_space adds the leading space it inserted).
//
// Not supported (clear error at load): model types other than BPE, byte_fallback
// (SentencePiece-style BPE), subword prefixes/suffixes, pre-tokenizers other than
// ByteLevel / Split(known pattern)+ByteLevel, normalizers other than NFC. An NFC normalizer
// (Qwen2) is accepted but not applied: text is taken as already NFC, as nearly all is.
// Added-token flags lstrip/rstrip/single_word are ignored.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/pretokenize.h"
#include "data/tokenizer.h"

namespace lathe {
namespace data {

// GPT-2's byte <-> character map: the UTF-8 string of the character that stands for byte b.
const std::string& byte_to_unicode(uint8_t b);
// The byte-level form of raw bytes (each byte replaced by its character).
std::string bytes_to_unicode(std::string_view bytes);
// Inverse of bytes_to_unicode; false when `text` holds a character outside the map.
bool unicode_to_bytes(std::string_view text, std::string& bytes);

struct BpeAddedToken {
  std::string content;  // literal text (not byte-level encoded)
  int32_t id = -1;
  bool special = true;
};

// Everything a BpeTokenizer is built from, in the files' own (byte-level) string form.
struct BpeSpec {
  std::string source;                                      // file(s), for error messages
  std::vector<std::pair<std::string, int32_t>> vocab;      // token -> id
  std::vector<std::pair<std::string, std::string>> merges; // in rank order
  std::vector<BpeAddedToken> added_tokens;
  PretokPattern pattern = PretokPattern::kGpt2;
  bool add_prefix_space = false;
  bool ignore_merges = false;
  std::string unk_token;                                   // empty: none
  // Role tokens by content; empty: none. Must be in the vocab or the added tokens.
  std::string bos_token, eos_token, pad_token;
};

class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(const BpeSpec& spec);

  // Hugging Face tokenizer.json (a tokenizer_config.json in the same folder, if any,
  // names the bos/eos/pad tokens; otherwise well-known names are used).
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::string& path);
  // The same from JSON text; `source` names it in errors.
  static std::unique_ptr<BpeTokenizer> from_json_text(const std::string& text,
                                                      const std::string& source);
  // GPT-2 files: vocab.json and merges.txt; <|endoftext|> (if present) is the special
  // bos/eos token.
  static std::unique_ptr<BpeTokenizer> from_vocab_merges(const std::string& vocab_path,
                                                         const std::string& merges_path);

  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     bool allow_special = true) const override;
  // Cuts only after a newline that follows a printable ASCII character and precedes an
  // ASCII letter ("x\nA"): every supported pre-tokenizer ends a word there whatever comes
  // before or after (see bpe.cpp). None with add_prefix_space (each piece would get a
  // space) or when an added token that could match holds a newline.
  size_t next_cut(std::string_view text, size_t from, bool allow_special = true) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  std::string id() const override { return id_; }
  std::optional<int32_t> token_to_id(const std::string& token) const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  std::vector<std::pair<std::string, int32_t>> special_tokens() const override;

  // The raw bytes a token decodes to (throws outside the vocabulary).
  const std::string& token_bytes(int32_t id) const;
  PretokPattern pattern() const { return pattern_; }
  int32_t num_merges() const { return num_merges_; }
  const std::string& source() const { return source_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  struct AddedMatcher {
    bool first[256] = {};
    std::vector<std::vector<int32_t>> by_first;  // first byte -> added-token indices, longest first
  };
  // Word cache, keyed by the word's 64-bit hash; the word's bytes are kept to confirm a hit,
  // so a lookup allocates nothing. Sharded so that threads encoding at once rarely contend.
  struct CacheEntry {
    uint32_t word_off, word_len, ids_off, ids_len;
  };
  struct CacheShard {
    std::mutex mu;
    std::unordered_map<uint64_t, CacheEntry> map;
    std::string words;         // arena of cached words' bytes
    std::vector<int32_t> ids;  // arena of their ids
  };
  static constexpr int kCacheShards = 32;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void build_matcher(AddedMatcher& m, bool include_special) const;
  // Index into added_ of the longest added token that matches at text[pos], or -1.
  int32_t match_added(const AddedMatcher& m, std::string_view text, size_t pos) const;
  void encode_segment(std::string_view segment, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& out) const;

  std::string source_;
  PretokPattern pattern_ = PretokPattern::kGpt2;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  int32_t num_merges_ = 0;
  std::vector<std::string> token_bytes_;  // id -> raw bytes
  std::vector<std::string> token_text_;   // id -> vocabulary string
  std::vector<uint8_t> present_;          // id -> whether the id is in the vocabulary
  std::unordered_map<std::string, int32_t> bytes_to_id_;  // BPE vocabulary by raw bytes
  std::unordered_map<std::string, int32_t> text_to_id_;   // by vocabulary string
  int32_t byte_id_[256];
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<BpeAddedToken> added_;
  AddedMatcher match_all_, match_plain_;
  std::string id_;
  mutable std::unique_ptr<CacheShard[]> cache_;
};

}  // namespace data
}  // namespace lathe
