#pragma once
// Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) for byte-level BPE
// tokenizers: written by `lathe export` and `lathe tokenizer train`.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lathe::data {

using ojson = nlohmann::ordered_json;

// An "added_tokens" entry for a special token, as tokenizers writes one.
ojson special_added_token(int64_t id, const std::string& content);

// The parts that differ between lathe's BPE tokenizer.json files; the rest (version, no
// normalizer, BPE without dropout/unk/byte fallback) is the same for all of them.
struct BpeJsonParts {
  ojson added_tokens = ojson::array();
  ojson pre_tokenizer, post_processor, decoder;
  ojson affix;  // continuing_subword_prefix and end_of_word_suffix ("" or null)
  ojson vocab = ojson::object();
  ojson merges = ojson::array();
};
ojson bpe_tokenizer_json(const BpeJsonParts& parts);

// A Hugging Face tokenizer.json (model BPE, ByteLevel pre-tokenizer and decoder) holding the
// GPT-2-format tokenizer of vocab.json + merges.txt, so that tokenizers/AutoTokenizer load
// it as PreTrainedTokenizerFast whatever the model family. Tokens named in `special` (e.g.
// "<|endoftext|>") that are in the vocabulary become special added tokens. Errors name the file.
std::string hf_tokenizer_json_from_vocab_merges(const std::string& vocab_path, const std::string& merges_path,
                                                const std::vector<std::string>& special);

// tokenizer_config.json naming PreTrainedTokenizerFast (which loads tokenizer.json as is)
// and the role tokens by content ("" = none); model_max_length = the model's context.
std::string hf_tokenizer_config_json(const std::string& bos, const std::string& eos, const std::string& pad,
                                     int64_t model_max_length);

}  // namespace lathe::data
