#include "data/byte_tokenizer.h"

#include "core/error.h"

namespace lathe {
namespace data {

void ByteTokenizer::encode_append(std::string_view text, std::vector<int32_t>& out, bool) const {
  const size_t base = out.size();
  out.resize(base + text.size());
  for (size_t i = 0; i < text.size(); ++i) out[base + i] = static_cast<unsigned char>(text[i]);
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    LATHE_CHECK(ids[i] >= 0 && ids[i] < 256)
        << "ByteTokenizer::decode: id " << ids[i] << " at position " << i << " is outside [0, 256)";
    out[i] = static_cast<char>(ids[i]);
  }
  return out;
}

std::optional<int32_t> ByteTokenizer::token_to_id(const std::string& token) const {
  if (token.size() != 1) return std::nullopt;
  return static_cast<unsigned char>(token[0]);
}

std::optional<std::string> ByteTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= 256) return std::nullopt;
  return std::string(1, static_cast<char>(id));
}

}  // namespace data
}  // namespace lathe
