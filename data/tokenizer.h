// Tokenizer: the interface every tokenizer in lathe implements, and the factory that
// builds one from a spec string.
//
//   auto tok = lathe::data::load_tokenizer("byte");                       // 256 byte ids
//   auto tok = lathe::data::load_tokenizer("models/gpt2");                // dir: tokenizer.json, or vocab.json + merges.txt
//   auto tok = lathe::data::load_tokenizer("models/llama3/tokenizer.json");
//   std::vector<int32_t> ids = tok->encode("Hello world");               // GPT-2: {15496, 995}
//   std::string text = tok->decode(ids);                                  // exact round trip
//
// id() names the tokenizer's content ("byte", "bpe:<16 hex digits>"); it is stored in
// tokenized HDF5 shards and checkpoints so that data and model can be checked to agree.
// Every method is const and safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lathe {
namespace data {

// Ids of the tokens with a role, where the tokenizer has them.
struct SpecialTokenIds {
  std::optional<int32_t> bos;
  std::optional<int32_t> eos;
  std::optional<int32_t> pad;
  std::optional<int32_t> unk;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`. With allow_special, special tokens written in the text (e.g.
  // "<|endoftext|>") become their single id, as Hugging Face tokenizers do; without it
  // they are encoded as ordinary text.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const {
    std::vector<int32_t> ids;
    encode_append(text, ids, allow_special);
    return ids;
  }
  // Appends the ids of `text` to `out` (the allocation-free form for bulk encoding).
  virtual void encode_append(std::string_view text, std::vector<int32_t>& out,
                             bool allow_special = true) const = 0;

  // The first position p with from <= p < text.size() (and p > 0) at which `text` may be
  // cut: encoding text[0, p) and text[p, end) separately and concatenating the ids gives
  // exactly encode(text, allow_special). npos when there is none at or after `from`, or when
  // the tokenizer cannot tell (the default: never cut). Lets one long document be encoded
  // by several threads with the same result.
  virtual size_t next_cut(std::string_view text, size_t from, bool allow_special = true) const {
    (void)text, (void)from, (void)allow_special;
    return std::string_view::npos;
  }

  // The bytes the ids stand for, concatenated; throws on an id outside the vocabulary.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  // One more than the largest id.
  virtual int32_t vocab_size() const = 0;

  // Identity of the tokenizer's content: equal ids mean equal encodings.
  virtual std::string id() const = 0;

  // Id of a token given as its vocabulary string (for byte-level BPE the string as written
  // in vocab.json, e.g. "Ġthe"; special tokens as written, e.g. "<|endoftext|>").
  virtual std::optional<int32_t> token_to_id(const std::string& token) const = 0;
  // The vocabulary string of an id; nullopt outside the vocabulary.
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;

  // Special tokens by name and id (matched as whole tokens by encode(allow_special)).
  virtual std::vector<std::pair<std::string, int32_t>> special_tokens() const { return {}; }

  const SpecialTokenIds& special_ids() const { return special_; }
  std::optional<int32_t> bos_id() const { return special_.bos; }
  std::optional<int32_t> eos_id() const { return special_.eos; }
  std::optional<int32_t> pad_id() const { return special_.pad; }

 protected:
  SpecialTokenIds special_;
};

// Builds a tokenizer from `spec`:
//   "byte"                       the byte tokenizer (ids 0..255);
//   a path to a tokenizer.json   Hugging Face format (model BPE, byte-level);
//   a path to a vocab.json       GPT-2 format, with merges.txt beside it;
//   a directory                  holding tokenizer.json, or vocab.json + merges.txt (a
//                                tokenizer_config.json there names bos/eos/pad tokens).
// Errors name the spec/file and what was expected.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace data
}  // namespace lathe
