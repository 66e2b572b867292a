// lathe tokenizer train --input FILE... --vocab-size N --out tokenizer.json [--special TOKEN ...]
#include <cstdio>
#include <filesystem>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/bpe_train.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe tokenizer train --input FILE... --vocab-size N --out tokenizer.json\n"
    "                             [--special TOKEN ...]\n"
    "\n"
    "Trains a byte-level BPE tokenizer (GPT-2 style: ids 0-255 are the bytes, then the merges\n"
    "in order, then the special tokens) on text files and writes it as a Hugging Face\n"
    "tokenizer.json, which data.tokenizer, lathe prepare --tokenizer and the transformers /\n"
    "tokenizers libraries load. The same files and options always give the same tokenizer.\n"
    "\n"
    "options:\n"
    "  --input FILE     a training text file (repeatable; files after the options are inputs too)\n"
    "  --vocab-size N   total vocabulary: 256 bytes + merges + special tokens (>= 256 + specials);\n"
    "                   smaller when the text runs out of pairs seen at least twice\n"
    "  --out PATH       where to write tokenizer.json (its directory is created)\n"
    "  --special TOKEN  a special token (repeatable); one named <|endoftext|>, </s> or <eos> is\n"
    "                   the end-of-text token that lathe prepare appends to documents/responses\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 an input that does not exist.\n";

int train_cmd(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("tokenizer train", args,
                            {{"--input", ArgKind::repeated},
                             {"--vocab-size", ArgKind::value},
                             {"--out", ArgKind::value},
                             {"--special", ArgKind::repeated}});
  std::vector<std::string> inputs = a.all("--input");
  inputs.insert(inputs.end(), a.positional.begin(), a.positional.end());
  if (inputs.empty()) throw UsageError("lathe tokenizer train: --input FILE is required");
  const std::string out = a.get("--out").value_or("");
  if (out.empty()) throw UsageError("lathe tokenizer train: --out PATH is required");
  if (!a.has("--vocab-size")) throw UsageError("lathe tokenizer train: --vocab-size N is required");
  const int64_t vocab = a.get_int("--vocab-size", 0);
  const std::vector<std::string> specials = a.all("--special");
  if (vocab < 256 + static_cast<int64_t>(specials.size()) || vocab > (int64_t{1} << 30))
    throw UsageError("lathe tokenizer train: --vocab-size must be at least 256 + the number of special tokens (" +
                     std::to_string(256 + specials.size()) + "), got " + std::to_string(vocab));
  for (const auto& f : inputs) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec))
      throw train::IoError("tokenizer train", "input " + f + " is not a readable file");
  }
  {
    std::error_code ec;
    const std::filesystem::path parent = std::filesystem::path(out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) throw train::IoError("tokenizer train", "cannot create " + parent.string() + ": " + ec.message());
  }
  data::BpeTrainOptions o;
  o.vocab_size = static_cast<int32_t>(vocab);
  o.special_tokens = specials;
  data::BpeTrainStats st = data::train_bpe(inputs, o, out);
  auto tok = data::load_tokenizer(out);  // what users will load: check it does
  std::printf("wrote %s: vocab %d (%d merges, %zu special) from %lld bytes, %lld words (%lld distinct); id %s\n",
              out.c_str(), st.vocab_size, st.num_merges, specials.size(), static_cast<long long>(st.corpus_bytes),
              static_cast<long long>(st.num_words), static_cast<long long>(st.num_unique_words), tok->id().c_str());
  if (st.vocab_size < vocab)
    std::printf("note: the text has no more pairs seen twice, so the vocabulary stopped at %d of %lld\n",
                st.vocab_size, static_cast<long long>(vocab));
  return kExitOk;
}

int run(const std::vector<std::string>& args) {
  if (args.empty()) throw UsageError("lathe tokenizer: expected a subcommand: train");
  if (args[0] == "train") return train_cmd(std::vector<std::string>(args.begin() + 1, args.end()));
  const std::string hint = closest_name(args[0], {"train"});
  throw UsageError("lathe tokenizer: unknown subcommand '" + args[0] + "'" +
                   (hint.empty() ? "" : " (did you mean '" + hint + "'?)") + "; available: train");
}

}  // namespace

extern const Command kCmdTokenizer = {"tokenizer", "train a BPE tokenizer (tokenizer.json) on text files", kHelp, run};

}  // namespace lathe::cli
