// ByteTokenizer: each byte is its own token (ids 0..255), so any byte string, valid UTF-8
// or not, round-trips exactly. No special tokens.
#pragma once

#include "data/tokenizer.h"

namespace lathe {
namespace data {

class ByteTokenizer : public Tokenizer {
 public:
  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     bool allow_special = true) const override;
  // Every byte is its own token, so any position cuts.
  size_t next_cut(std::string_view text, size_t from, bool) const override {
    const size_t p = from == 0 ? 1 : from;
    return p < text.size() ? p : std::string_view::npos;
  }
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override { return 256; }
  std::string id() const override { return "byte"; }
  // The token of byte b is the one-byte string {b}.
  std::optional<int32_t> token_to_id(const std::string& token) const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
};

}  // namespace data
}  // namespace lathe
