// load_run_data(): the train/validation data of a run from each data.source; see run_setup.h.
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/memory.h"
#include "data/instruction_dataset.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/synthetic.h"
#include "data/text_source.h"
#include "train/run_setup.h"

namespace fs = std::filesystem;

namespace lathe::train {

using configs::ConfigError;

namespace {

std::string read_source_text(const std::string& field, const std::string& path) {
  try {
    return data::read_text(path);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {field + ": " + e.message()});
  }
}

std::shared_ptr<const data::TokenIds> tokenize(const std::string& text, const data::Tokenizer& tok) {
  MemCategoryGuard g(MemCategory::other);
  auto ids = std::make_shared<data::TokenIds>();
  ids->reserve(text.size() / 2);
  // Raw corpora may contain text that looks like a special token; it stays plain text.
  tok.encode_append(text, *ids, /*allow_special=*/false);
  return ids;
}

int64_t seq_len_of(const RunConfig& cfg) {
  return cfg.train().seq_len() > 0 ? cfg.train().seq_len() : cfg.model().max_seq_len();
}

// SYNTHETIC and TEXT: the corpus is tokenized here and packed into windows.
void load_text_data(const RunConfig& cfg, const data::Tokenizer& tok, RunData& out) {
  const auto& d = cfg.data();
  const int64_t T = seq_len_of(cfg);
  std::string text;
  if (d.source() == DataConfig::SYNTHETIC) {
    text = data::synthetic_corpus(d.synthetic().seed(), static_cast<size_t>(d.synthetic().bytes()));
    out.description = "synthetic corpus (seed " + std::to_string(d.synthetic().seed()) + ", " +
                      std::to_string(d.synthetic().bytes()) + " bytes)";
  } else {
    text = read_source_text("data.path", d.path());
    out.description = "text " + d.path() + " (" + std::to_string(text.size()) + " bytes)";
  }
  out.tokens = tokenize(text, tok);
  const int64_t n = static_cast<int64_t>(out.tokens->size());
  for (int32_t id : *out.tokens)
    if (id < 0 || id >= cfg.model().vocab_size())
      throw ConfigError("config", {"model.vocab_size: the data holds token id " + std::to_string(id) +
                                   ", outside the model's vocabulary of " +
                                   std::to_string(cfg.model().vocab_size())});
  data::PackedLMDataset all(out.tokens, T);
  if (!d.val_path().empty()) {
    out.train = all;
    auto val_tokens = tokenize(read_source_text("data.val_path", d.val_path()), tok);
    out.val = data::PackedLMDataset(val_tokens, T);
    if (out.val.size() == 0)
      throw ConfigError("config", {"data.val_path: " + d.val_path() + " holds " +
                                   std::to_string(val_tokens->size()) + " tokens, fewer than one window of " +
                                   std::to_string(T + 1)});
  } else if (d.val_fraction() > 0) {
    try {
      std::tie(out.train, out.val) = all.split(d.val_fraction());
    } catch (const lathe::Error& e) {
      throw ConfigError("config", {"data.val_fraction: cannot split " + std::to_string(n) + " tokens into windows of " +
                                   std::to_string(T) + ": " + e.message()});
    }
  } else {
    out.train = all;
  }
  if (out.train.size() == 0)
    throw ConfigError("config", {"data: " + out.description + " gives " + std::to_string(n) +
                                 " tokens, not one training window of train.seq_len + 1 = " + std::to_string(T + 1)});
  out.description += ", " + std::to_string(n) + " tokens: " + std::to_string(out.train.size()) + " train / " +
                     std::to_string(out.val.size()) + " val windows of " + std::to_string(T);
}

// Whether a prepared directory lists shards for `split` in its index.json (a single shard
// file counts as having none: it is one split already).
bool has_split(const std::string& dir, const std::string& split) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  std::ifstream in(fs::path(dir) / "index.json");
  if (!in) return false;
  try {
    const nlohmann::json index = nlohmann::json::parse(in);
    return !index.at("splits").at(split).at("shards").empty();
  } catch (const nlohmann::json::exception&) {
    return false;  // open_shards reports a broken index with its own message
  }
}

data::ShardSet open_split(const std::string& field, const std::string& path, const std::string& split,
                          const RunConfig& cfg, const data::Tokenizer& tok) {
  // A single shard file is opened whatever its split; a directory by the split asked for.
  std::error_code ec;
  const std::string s = fs::is_directory(path, ec) ? split : "";
  try {
    return data::open_shards(path, s, tok);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {field + ": " + e.message() + " (data.tokenizer is \"" + cfg.data().tokenizer() +
                                 "\", id " + tok.id() + ")"});
  }
}

// Documents [first, last) of a loaded split as a stand-alone (tokens, mask, offsets) triple.
struct DocRange {
  std::shared_ptr<const data::TokenIds> tokens;
  std::shared_ptr<const std::vector<uint8_t>> mask;
  std::vector<int64_t> offsets;
};
DocRange doc_range(const data::ShardSet& s, const std::shared_ptr<const std::vector<uint8_t>>& mask, int64_t first,
                   int64_t last) {
  const int64_t b = s.doc_offsets[first], e = s.doc_offsets[last];
  DocRange r;
  r.tokens = std::make_shared<data::TokenIds>(s.tokens->begin() + b, s.tokens->begin() + e);
  r.mask = std::make_shared<std::vector<uint8_t>>(mask->begin() + b, mask->begin() + e);
  for (int64_t d = first; d <= last; ++d) r.offsets.push_back(s.doc_offsets[d] - b);
  return r;
}

// The loss mask a run trains with: the shards' (response tokens only), or every token when
// data.mask_prompt is off.
std::shared_ptr<const std::vector<uint8_t>> run_mask(const data::ShardSet& s, const RunConfig& cfg) {
  if (cfg.data().mask_prompt()) return s.loss_mask;
  return std::make_shared<std::vector<uint8_t>>(s.loss_mask->size(), uint8_t{1});
}

// Prepared shards (train, and val when there is one) -> the datasets of the run.
void load_prepared(const RunConfig& cfg, const data::Tokenizer& tok, const std::string& path,
                   const std::string& val_path, const std::string& origin, RunData& out) {
  const auto& d = cfg.data();
  const int64_t T = seq_len_of(cfg);
  data::ShardSet train = open_split("data.path", path, "train", cfg, tok);
  std::optional<data::ShardSet> val;
  std::string val_origin;
  if (!val_path.empty()) {
    val = open_split("data.val_path", val_path, has_split(val_path, "val") ? "val" : "train", cfg, tok);
    val_origin = val_path + " (" + val->split + " split)";
  } else if (has_split(path, "val")) {
    val = open_split("data.path", path, "val", cfg, tok);
    val_origin = "its val split";
  }
  out.instruction = train.has_loss_mask();
  if (d.format() != DataConfig::PLAIN && !out.instruction)
    throw ConfigError("config", {"data.format: " + DataConfig::Format_Name(d.format()) + " asks for instruction data, but " +
                                 path + " holds plain (\"" + train.format +
                                 "\") shards without a loss mask; prepare prompt/response, alpaca or chat "
                                 "records, or set data.format: PLAIN"});
  if (val && val->has_loss_mask() != out.instruction)
    throw ConfigError("config", {"data.val_path: " + val_path + " holds " + val->format + " data but " + path +
                                 " holds " + train.format + " data; both must be the same kind"});
  std::string val_note;
  if (!out.instruction) {
    out.tokens = train.tokens;
    data::PackedLMDataset all = train.packed(T);
    if (val) {
      out.train = all;
      out.val = val->packed(T);
      val_note = "val from " + val_origin;
    } else if (d.val_fraction() > 0) {
      try {
        std::tie(out.train, out.val) = all.split(d.val_fraction());
      } catch (const lathe::Error& e) {
        throw ConfigError("config", {"data.val_fraction: cannot split the " + std::to_string(train.num_tokens()) +
                                     " tokens of " + path + " into windows of " + std::to_string(T) + ": " +
                                     e.message()});
      }
      val_note = "val = the last " + std::to_string(out.val.size()) + " windows (data.val_fraction, no prepared "
                 "val split)";
    } else {
      out.train = all;
    }
    if (out.train.size() == 0)
      throw ConfigError("config", {"data.path: " + path + " holds " + std::to_string(train.num_tokens()) +
                                   " training tokens, not one window of train.seq_len + 1 = " + std::to_string(T + 1)});
    if (val && out.val.size() == 0)
      throw ConfigError("config", {"data.val_path: the validation split (" + val_origin + ") holds " +
                                   std::to_string(val->num_tokens()) + " tokens, fewer than one window of " +
                                   std::to_string(T + 1)});
    out.description = origin + ": " + std::to_string(train.num_tokens()) + " tokens (" + train.tokenizer_id +
                      "): " + std::to_string(out.train.size()) + " train / " + std::to_string(out.val.size()) +
                      " val windows of " + std::to_string(T) + (val_note.empty() ? "" : "; " + val_note);
    return;
  }
  // Padding is never trained on (its targets are ignored) and, with causal attention, never
  // seen by a real token; the tokenizer's pad or EOS id just keeps the ids meaningful.
  const int32_t pad = tok.pad_id().value_or(tok.eos_id().value_or(0));
  const auto mask = run_mask(train, cfg);
  if (val) {
    out.train_instr = data::InstructionDataset(train.tokens, mask, train.doc_offsets, T, pad);
    out.val_instr = data::InstructionDataset(val->tokens, run_mask(*val, cfg), val->doc_offsets, T, pad);
    val_note = "val from " + val_origin;
  } else if (d.val_fraction() > 0) {
    // The last round(D * val_fraction) documents (at least one, and one left to train on).
    const int64_t D = train.num_documents();
    if (D < 2)
      throw ConfigError("config", {"data.val_fraction: " + path + " holds " + std::to_string(D) +
                                   " document(s), too few to hold some out; set data.val_fraction: 0"});
    const int64_t n_val =
        std::min<int64_t>(D - 1, std::max<int64_t>(1, std::llround(static_cast<double>(D) * d.val_fraction())));
    DocRange a = doc_range(train, mask, 0, D - n_val), b = doc_range(train, mask, D - n_val, D);
    out.train_instr = data::InstructionDataset(a.tokens, a.mask, a.offsets, T, pad);
    out.val_instr = data::InstructionDataset(b.tokens, b.mask, b.offsets, T, pad);
    val_note = "val = the last " + std::to_string(n_val) + " documents (data.val_fraction, no prepared val split)";
  } else {
    out.train_instr = data::InstructionDataset(train.tokens, mask, train.doc_offsets, T, pad);
  }
  if (out.train_instr.size() == 0)
    throw ConfigError("config", {"train.seq_len: every one of the " + std::to_string(out.train_instr.num_documents()) +
                                 " training documents of " + path + " has a prompt of " + std::to_string(T) +
                                 " tokens or more, so no response token falls inside a sample; raise "
                                 "train.seq_len"});
  if (val && out.val_instr.size() == 0)
    throw ConfigError("config", {"train.seq_len: no validation document (" + val_origin +
                                 ") has a response token inside the first " + std::to_string(T) + " tokens"});
  out.description = origin + ": instruction data (" + train.tokenizer_id + (d.mask_prompt() ? ", loss on responses" : ", loss on every token") +
                    "): " + std::to_string(out.train_instr.size()) + " train / " + std::to_string(out.val_instr.size()) +
                    " val samples of " + std::to_string(T) + " tokens";
  const int64_t dropped = out.train_instr.dropped() + out.val_instr.dropped();
  if (dropped > 0)
    out.description += " (" + std::to_string(dropped) + " document(s) left out: prompt longer than train.seq_len)";
  if (!val_note.empty()) out.description += "; " + val_note;
}

data::RecordExpect record_kind(DataConfig::Format f) {
  switch (f) {
    case DataConfig::PLAIN: return data::RecordExpect::kText;
    case DataConfig::PROMPT_RESPONSE: return data::RecordExpect::kPromptResponse;
    case DataConfig::ALPACA: return data::RecordExpect::kAlpaca;
    case DataConfig::CHAT: return data::RecordExpect::kChat;
  }
  return data::RecordExpect::kAny;
}

// Tokenizes a JSONL source into `out_dir` (lathe prepare); "" on success, else the error.
std::string prepare_jsonl(const RunConfig& cfg, const std::string& field, const std::string& input,
                          const std::string& out_dir, double val_fraction) {
  data::PrepareOptions o;
  o.inputs = {input};
  o.output_dir = out_dir;
  o.tokenizer = cfg.data().tokenizer();
  o.format = data::InputFormat::kJsonl;
  o.record_kind = record_kind(cfg.data().format());
  o.val_fraction = val_fraction;
  o.seed = cfg.train().seed();
  o.quiet = true;
  try {
    std::error_code ec;
    if (!fs::exists(input, ec)) return field + ": " + input + " does not exist";
    data::prepare(o);
  } catch (const lathe::Error& e) {
    return field + ": preparing " + input + " into " + out_dir + ": " + e.message();
  }
  return "";
}

}  // namespace

RunData load_run_data(const RunConfig& cfg, const data::Tokenizer& tok, parallel::Communicator* comm) {
  const auto& d = cfg.data();
  RunData out;
  switch (d.source()) {
    case DataConfig::SYNTHETIC:
    case DataConfig::TEXT:
      load_text_data(cfg, tok, out);
      break;
    case DataConfig::HDF5:
      load_prepared(cfg, tok, d.path(), d.val_path(), "prepared data " + d.path(), out);
      break;
    case DataConfig::JSONL: {
      const std::string dir = cfg.run_dir() + "/data", val_dir = dir + "/val_path";
      const int rank = comm ? comm->rank() : 0;
      std::string error;
      if (rank == 0) {
        error = prepare_jsonl(cfg, "data.path", d.path(), dir, d.val_path().empty() ? d.val_fraction() : 0.0);
        if (error.empty() && !d.val_path().empty()) error = prepare_jsonl(cfg, "data.val_path", d.val_path(), val_dir, 0.0);
      }
      if (comm && comm->size() > 1) {  // the barrier before the other ranks read the shards
        Tensor failed = Tensor::scalar(error.empty() ? 0.0 : 1.0, DType::f32);
        comm->all_reduce(failed, parallel::ReduceOp::max);
        if (failed.item() != 0.0 && error.empty()) error = "data.path: rank 0 could not prepare " + d.path();
      }
      if (!error.empty()) throw ConfigError("config", {error});
      load_prepared(cfg, tok, dir, d.val_path().empty() ? "" : val_dir,
                    "JSONL " + d.path() + " (" + DataConfig::Format_Name(d.format()) + ", prepared into " + dir + ")",
                    out);
      break;
    }
  }
  return out;
}

}  // namespace lathe::train
