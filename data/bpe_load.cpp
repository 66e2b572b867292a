// Loading BpeTokenizer from Hugging Face tokenizer.json or GPT-2 vocab.json + merges.txt.
#include <climits>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe.h"

namespace lathe {
namespace data {

namespace {

using json = nlohmann::json;

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  LATHE_CHECK(f.good()) << "tokenizer: cannot open " << what << " '" << path << "'";
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    LATHE_FAIL() << "tokenizer: '" << source << "' is not valid JSON: " << e.what();
  }
  return json();
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// A token id from the file: an integer in [0, 2^31) (lathe's ids are int32; a larger value
// would be narrowed into a different id). `field` names it in errors.
int32_t token_id(const json& id, const std::string& where, const std::string& field) {
  LATHE_CHECK(id.is_number_integer()) << where << ": " << field << " is not an integer (got " << id.dump() << ")";
  const bool fits = id.is_number_unsigned() ? id.get<uint64_t>() <= static_cast<uint64_t>(INT32_MAX)
                                            : id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX;
  LATHE_CHECK(fits) << where << ": " << field << " has id " << id.dump()
                    << "; token ids must be between 0 and 2147483647";
  return static_cast<int32_t>(id.get<int64_t>());
}

// The tokenizer allocates one slot per id up to the largest, so a corrupt id (10^9 in a
// 50k vocabulary) would allocate gigabytes: the largest id must be explained by the number
// of entries the file holds. Real vocabularies are dense (ids 0..n-1, added tokens right
// after); the bound leaves room for holes up to the number of entries, plus 1024.
void check_id_space(const BpeSpec& spec, const std::string& where) {
  int64_t max_id = -1;
  std::string field;
  for (const auto& [tok, id] : spec.vocab)
    if (id > max_id) {
      max_id = id;
      field = "vocab['" + tok + "']";
    }
  for (const auto& a : spec.added_tokens)
    if (a.id > max_id) {
      max_id = a.id;
      field = "added token '" + a.content + "'";
    }
  const int64_t entries = static_cast<int64_t>(spec.vocab.size() + spec.added_tokens.size());
  const int64_t limit = 2 * entries + 1024;
  LATHE_CHECK(max_id < limit) << where << ": " << field << " has id " << max_id << ", but the file holds only "
                              << entries << " tokens (ids above " << limit - 1
                              << " are refused: the id space would be mostly holes; is the id corrupt?)";
}

// tokenizer_config.json writes a role token as a string, as {"content": ...}, or null.
std::string config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return "";
}

// Role tokens: from tokenizer_config.json beside the tokenizer files when there is one,
// otherwise the first well-known name among the added tokens. `dir` empty: no config.
void resolve_roles(BpeSpec& spec, const std::string& dir) {
  const std::string cfg_path = dir + "/tokenizer_config.json";
  if (!dir.empty() && file_exists(cfg_path)) {
    const json cfg = parse_json(read_file(cfg_path, "tokenizer config"), cfg_path);
    LATHE_CHECK(cfg.is_object()) << "tokenizer: '" << cfg_path << "' is not a JSON object";
    spec.bos_token = config_token(cfg, "bos_token");
    spec.eos_token = config_token(cfg, "eos_token");
    spec.pad_token = config_token(cfg, "pad_token");
    spec.source += " (+ " + cfg_path + ")";
    return;
  }
  auto first_of = [&spec](std::initializer_list<const char*> names) -> std::string {
    for (const char* n : names)
      for (const auto& a : spec.added_tokens)
        if (a.content == n) return n;
    return "";
  };
  spec.bos_token = first_of({"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>"});
  spec.eos_token = first_of({"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"});
  spec.pad_token = first_of({"<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"});
}

// Reads the pre_tokenizer object into spec.pattern / spec.add_prefix_space.
void parse_pre_tokenizer(const json& pt, BpeSpec& spec, const std::string& path) {
  const std::string where = "tokenizer: '" + path + "': pre_tokenizer";
  LATHE_CHECK(pt.is_object()) << where << " is " << (pt.is_null() ? "null" : pt.dump())
                              << "; lathe needs a byte-level pre-tokenizer (ByteLevel, or Sequence[Split, ByteLevel])";
  const std::string type = pt.value("type", "");
  if (type == "ByteLevel") {
    LATHE_CHECK(pt.value("use_regex", true))
        << where << ": ByteLevel with use_regex=false needs a Split before it (Sequence[Split, ByteLevel])";
    spec.pattern = PretokPattern::kGpt2;
    spec.add_prefix_space = pt.value("add_prefix_space", false);
    return;
  }
  if (type == "Sequence") {
    const json& list = pt.contains("pretokenizers") ? pt["pretokenizers"] : json();
    LATHE_CHECK(list.is_array() && !list.empty()) << where << ": Sequence without a pretokenizers list";
    if (list.size() == 1) return parse_pre_tokenizer(list[0], spec, path);
    LATHE_CHECK(list.size() == 2 && list[0].value("type", "") == "Split" &&
                list[1].value("type", "") == "ByteLevel")
        << where << ": unsupported Sequence " << list.dump()
        << " (lathe knows Sequence[Split(known regex), ByteLevel(use_regex=false)])";
    const json& split = list[0];
    LATHE_CHECK(split.value("behavior", "") == "Isolated" && !split.value("invert", false))
        << where << ": Split must have behavior \"Isolated\" and invert false, got " << split.dump();
    const json& pat = split.contains("pattern") ? split["pattern"] : json();
    LATHE_CHECK(pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string())
        << where << ": Split pattern must be {\"Regex\": ...}, got " << pat.dump();
    const std::string regex = pat["Regex"].get<std::string>();
    bool known = false;
    for (PretokPattern p : {PretokPattern::kGpt2, PretokPattern::kLlama3, PretokPattern::kQwen2}) {
      if (regex == pretok_pattern_string(p)) {
        spec.pattern = p;
        known = true;
      }
    }
    LATHE_CHECK(known) << where << ": unknown Split regex '" << regex
                       << "' (lathe implements the GPT-2, Llama-3 and Qwen2 patterns by hand)";
    const json& bl = list[1];
    LATHE_CHECK(!bl.value("use_regex", true))
        << where << ": the ByteLevel after a Split must have use_regex=false";
    spec.add_prefix_space = bl.value("add_prefix_space", false);
    return;
  }
  LATHE_FAIL() << where << ": unsupported type '" << type
               << "' (lathe knows ByteLevel and Sequence[Split, ByteLevel])";
}

BpeSpec spec_from_json(const json& j, const std::string& path) {
  const std::string where = "tokenizer: '" + path + "'";
  LATHE_CHECK(j.is_object()) << where << ": expected a JSON object at the top level";
  LATHE_CHECK(j.contains("model") && j["model"].is_object()) << where << ": no \"model\" object";
  const json& model = j["model"];
  std::string type = model.value("type", "");
  if (type.empty() && model.contains("merges")) type = "BPE";  // older files omit the type
  LATHE_CHECK(type == "BPE") << where << ": model type '" << type
                             << "' is not supported (lathe loads byte-level BPE models, type \"BPE\")";
  LATHE_CHECK(!model.value("byte_fallback", false))
      << where << ": BPE with byte_fallback (SentencePiece-style) is not supported; lathe loads byte-level BPE";
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const bool unset = !model.contains(key) || model[key].is_null() ||
                       (model[key].is_string() && model[key].get<std::string>().empty());
    LATHE_CHECK(unset) << where << ": model." << key << " is not supported (got " << model[key].dump() << ")";
  }

  BpeSpec spec;
  spec.source = path;
  LATHE_CHECK(model.contains("vocab") && model["vocab"].is_object())
      << where << ": model.vocab must be an object of token -> id";
  for (const auto& [tok, id] : model["vocab"].items()) {
    spec.vocab.emplace_back(tok, token_id(id, where, "model.vocab['" + tok + "']"));
  }
  LATHE_CHECK(model.contains("merges") && model["merges"].is_array())
      << where << ": model.merges must be an array";
  const json& merges = model["merges"];
  spec.merges.reserve(merges.size());
  for (size_t k = 0; k < merges.size(); ++k) {
    const json& m = merges[k];
    // Two spellings occur: "a b" (older files) and ["a", "b"] (tokenizers >= 0.20).
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      LATHE_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos)
          << where << ": model.merges[" << k << "] = '" << s << "' is not of the form \"a b\"";
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      LATHE_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
          << where << ": model.merges[" << k << "] = " << m.dump() << " is neither \"a b\" nor [\"a\", \"b\"]";
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  spec.ignore_merges = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model["unk_token"].is_string())
    spec.unk_token = model["unk_token"].get<std::string>();

  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    LATHE_CHECK(j["added_tokens"].is_array()) << where << ": added_tokens must be an array";
    size_t k = 0;
    for (const json& a : j["added_tokens"]) {
      LATHE_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                  a["content"].is_string())
          << where << ": added token " << a.dump() << " needs an integer \"id\" and a string \"content\"";
      const int32_t id = token_id(a["id"], where, "added_tokens[" + std::to_string(k++) + "] ('" +
                                                      a["content"].get<std::string>() + "')");
      spec.added_tokens.push_back({a["content"].get<std::string>(), id, a.value("special", false)});
    }
  }

  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const std::string nt = j["normalizer"].value("type", "");
    LATHE_CHECK(nt == "NFC") << where << ": normalizer type '" << nt
                             << "' is not supported (lathe accepts none, or NFC, which it assumes the text already is)";
  }
  parse_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), spec, path);
  check_id_space(spec, where);
  return spec;
}

// spec_from_json, turning a JSON type mismatch deep inside (e.g. "special": "yes") into an
// error that names the file.
BpeSpec checked_spec_from_json(const json& j, const std::string& path) {
  try {
    return spec_from_json(j, path);
  } catch (const json::exception& e) {
    LATHE_FAIL() << "tokenizer: '" << path << "': unexpected JSON structure: " << e.what();
  }
  return BpeSpec();
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json_text(const std::string& text, const std::string& source) {
  BpeSpec spec = checked_spec_from_json(parse_json(text, source), source);
  resolve_roles(spec, "");
  return std::make_unique<BpeTokenizer>(spec);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const std::string& path) {
  BpeSpec spec = checked_spec_from_json(parse_json(read_file(path, "tokenizer.json"), path), path);
  resolve_roles(spec, dir_of(path));
  return std::make_unique<BpeTokenizer>(spec);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_vocab_merges(const std::string& vocab_path,
                                                              const std::string& merges_path) {
  BpeSpec spec;
  spec.source = vocab_path + " + " + merges_path;
  const json vocab = parse_json(read_file(vocab_path, "vocab.json"), vocab_path);
  LATHE_CHECK(vocab.is_object()) << "tokenizer: '" << vocab_path << "' must be a JSON object of token -> id";
  for (const auto& [tok, id] : vocab.items()) {
    spec.vocab.emplace_back(tok, token_id(id, "tokenizer: '" + vocab_path + "'", "'" + tok + "'"));
  }
  std::istringstream lines(read_file(merges_path, "merges.txt"));
  std::string line;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (lineno == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    LATHE_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < line.size() &&
                line.find(' ', sp + 1) == std::string::npos)
        << "tokenizer: '" << merges_path << "' line " << lineno << ": expected \"a b\", got '" << line << "'";
    spec.merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  // GPT-2's only special token lives in its vocab.json.
  for (const auto& [tok, id] : spec.vocab)
    if (tok == "<|endoftext|>") spec.added_tokens.push_back({tok, id, true});
  spec.pattern = PretokPattern::kGpt2;
  check_id_space(spec, "tokenizer: '" + vocab_path + "'");
  resolve_roles(spec, dir_of(vocab_path));
  return std::make_unique<BpeTokenizer>(spec);
}

}  // namespace data
}  // namespace lathe
