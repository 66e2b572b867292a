#include "data/hf_tokenizer_files.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace lathe::data {

namespace {

std::string read_text(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  LATHE_CHECK(f.good()) << "hf_tokenizer_json_from_vocab_merges: cannot open the " << what << " '" << path << "'";
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

ojson special_added_token(int64_t id, const std::string& content) {
  return {{"id", id},           {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},    {"normalized", false}, {"special", true}};
}

ojson bpe_tokenizer_json(const BpeJsonParts& p) {
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = p.added_tokens;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = p.pre_tokenizer;
  j["post_processor"] = p.post_processor;
  j["decoder"] = p.decoder;
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", p.affix},
                {"end_of_word_suffix", p.affix},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", p.vocab},
                {"merges", p.merges}};
  return j;
}

std::string hf_tokenizer_json_from_vocab_merges(const std::string& vocab_path, const std::string& merges_path,
                                                const std::vector<std::string>& special) {
  const std::string where = "hf_tokenizer_json_from_vocab_merges";
  ojson vocab;
  try {
    vocab = ojson::parse(read_text(vocab_path, "vocab.json"));
  } catch (const ojson::exception& e) {
    LATHE_FAIL() << where << ": '" << vocab_path << "' is not valid JSON: " << e.what();
  }
  LATHE_CHECK(vocab.is_object()) << where << ": '" << vocab_path << "' must be a JSON object of token -> id";
  // merges.txt lines "a b" (an optional "#version" first line) become [a, b] pairs, the
  // spelling of tokenizers >= 0.20, which also allows tokens holding spaces.
  ojson merges = ojson::array();
  std::istringstream lines(read_text(merges_path, "merges.txt"));
  std::string line;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (lineno == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    LATHE_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < line.size() && line.find(' ', sp + 1) == std::string::npos)
        << where << ": '" << merges_path << "' line " << lineno << ": expected \"a b\", got '" << line << "'";
    merges.push_back({line.substr(0, sp), line.substr(sp + 1)});
  }
  ojson added = ojson::array();
  for (const std::string& sp : special) {
    auto it = vocab.find(sp);
    if (it == vocab.end() || !it->is_number_integer()) continue;
    added.push_back(special_added_token(it->get<int64_t>(), sp));
  }
  // GPT-2's own tokenizer.json: ByteLevel pre-tokenizer (GPT-2 regex), decoder and post-processor.
  const ojson byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  BpeJsonParts parts;
  parts.added_tokens = std::move(added);
  parts.pre_tokenizer = byte_level;
  parts.post_processor = byte_level;
  parts.decoder = byte_level;
  parts.affix = "";
  parts.vocab = std::move(vocab);
  parts.merges = std::move(merges);
  return bpe_tokenizer_json(parts).dump(1) + "\n";
}

std::string hf_tokenizer_config_json(const std::string& bos, const std::string& eos, const std::string& pad,
                                     int64_t model_max_length) {
  ojson j;
  // Names the class explicitly: without it AutoTokenizer picks the model family's class (for
  // Llama a SentencePiece tokenizer), which cannot load a byte-level BPE.
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  auto role = [&j](const char* key, const std::string& v) {
    if (v.empty()) j[key] = nullptr;
    else j[key] = v;
  };
  role("bos_token", bos);
  role("eos_token", eos);
  role("pad_token", pad);
  j["model_max_length"] = model_max_length;
  j["clean_up_tokenization_spaces"] = false;
  return j.dump(2) + "\n";
}

}  // namespace lathe::data
