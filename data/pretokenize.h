// The regex pre-tokenizers of byte-level BPE, implemented by hand (no std::regex).
//
// Byte-level BPE first splits text into "words" with a regular expression, then runs the
// merges inside each word. Two pattern families cover the models lathe loads:
//
//   kGpt2   (GPT-2, and Hugging Face's ByteLevel pre-tokenizer with use_regex=true):
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kLlama3 (Llama-3; Qwen2 uses the same with \p{N} instead of \p{N}{1,3}):
//     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//      ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// Each function returns the end of the leftmost match starting at `pos` with the
// alternation's first-alternative-wins semantics, so a text is split by calling it until
// the end. Bytes that are not valid UTF-8 count as one "other" character each (neither
// letter, number nor space), so any byte string splits into pieces that concatenate back
// to it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace lathe {
namespace data {

enum class PretokPattern {
  kGpt2,
  kLlama3,  // digits in groups of up to 3
  kQwen2,   // the Llama-3 pattern with single digits
};

// The exact pattern string a Hugging Face tokenizer.json uses for `p` (for kGpt2 the
// string a Split pre-tokenizer would carry).
const std::string& pretok_pattern_string(PretokPattern p);
// A short stable name ("gpt2", "llama3", "qwen2") used in tokenizer identity strings.
const char* pretok_name(PretokPattern p);

// End (exclusive) of the piece that starts at `pos` (< text.size()).
size_t next_piece(std::string_view text, size_t pos, PretokPattern p);

// All pieces of `text`, as views into it (tests and tools; encoding iterates next_piece).
std::vector<std::string_view> pretokenize(std::string_view text, PretokPattern p);

}  // namespace data
}  // namespace lathe
