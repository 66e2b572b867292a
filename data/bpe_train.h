// Training a byte-level BPE tokenizer (the backend of `lathe tokenizer train`).
//
// The corpus is split into words with the same pre-tokenizer the tokenizer will use (GPT-2's
// by default), word frequencies are counted, and then the most frequent adjacent pair of
// symbols is merged into a new token, repeatedly, until the vocabulary reaches its size
// (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units";
// byte-level as in GPT-2). Pair counts are updated incrementally: a merge only revisits
// the words that contain the merged pair. Ties go to the pair with the smaller ids, so a
// corpus always gives the same tokenizer.
//
// Vocabulary layout of the result: ids 0..255 are the single bytes (id b = byte b), then
// the merged tokens in merge order, then the special tokens in the order given. The output
// is a Hugging Face tokenizer.json (ByteLevel pre-tokenizer and decoder, model BPE) that
// BpeTokenizer::from_tokenizer_json and the `tokenizers` library load.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/pretokenize.h"

namespace lathe {
namespace data {

struct BpeTrainOptions {
  int32_t vocab_size = 0;                   // total: 256 bytes + merges + special tokens
  std::vector<std::string> special_tokens;  // e.g. {"<|endoftext|>"}; removed from the corpus text
  PretokPattern pattern = PretokPattern::kGpt2;
  int64_t max_bytes_per_file = -1;          // read only the first N bytes of each file; -1: all
  int64_t min_frequency = 2;                // stop early once the best pair is rarer than this
};

struct BpeTrainStats {
  int32_t vocab_size = 0;        // of the result (smaller than asked when the corpus runs out of pairs)
  int32_t num_merges = 0;
  int64_t corpus_bytes = 0;
  int64_t num_words = 0;         // pre-tokenized words in the corpus
  int64_t num_unique_words = 0;
};

// Trains on `files` and returns the tokenizer.json text.
std::string train_bpe_json(const std::vector<std::string>& files, const BpeTrainOptions& options,
                           BpeTrainStats* stats = nullptr);

// Trains and writes tokenizer.json to `out_path` (through a temporary file and a rename).
BpeTrainStats train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& options,
                        const std::string& out_path);
BpeTrainStats train_bpe(const std::vector<std::string>& files, int32_t vocab_size,
                        const std::vector<std::string>& special_tokens, const std::string& out_path);

}  // namespace data
}  // namespace lathe
