// lathe prepare INPUT... --out DIR [--tokenizer SPEC] [--format auto|text|jsonl] ...
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe prepare INPUT... --out DIR [--tokenizer SPEC] [--format auto|text|jsonl]\n"
    "                     [--template default|raw] [--val-fraction F] [--seed S]\n"
    "                     [--shard-tokens N] [--split file|blank_lines]\n"
    "\n"
    "Tokenizes text or JSONL files into HDF5 shards for data.source HDF5 (data.path: DIR):\n"
    "DIR/train_00000.h5 ..., DIR/val_00000.h5 ... and DIR/index.json (which records the\n"
    "tokenizer, so a run with another tokenizer refuses the data). An INPUT directory\n"
    "contributes its .txt/.text/.md/.jsonl/.ndjson files (recursively, in name order).\n"
    "\n"
    "JSONL records are {\"text\": ...} (plain language-model data) or instruction records:\n"
    "{\"prompt\": ..., \"response\": ...}, alpaca {\"instruction\", \"input\", \"output\"} or chat\n"
    "{\"messages\": [{\"role\", \"content\"}, ...]}. Instruction shards carry a loss mask that is 1\n"
    "on response tokens only; the trainer trains on those.\n"
    "\n"
    "options:\n"
    "  --out DIR           output directory (created; shards of an earlier run are replaced)\n"
    "  --tokenizer SPEC    \"byte\" (default), a tokenizer.json, or a directory holding\n"
    "                      tokenizer.json or vocab.json + merges.txt (e.g. a Hugging Face model)\n"
    "  --format F          auto (default: .jsonl/.ndjson are JSONL, the rest text), text, jsonl\n"
    "  --template T        instruction template: default (### Instruction / ### Response\n"
    "                      headers) or raw (the fields as they are)\n"
    "  --val-fraction F    fraction of the documents held out as the val split (default 0)\n"
    "  --seed S            seed of the val selection (default 0)\n"
    "  --shard-tokens N    tokens per shard (default 16777216)\n"
    "  --split S           text documents: file (one per file, default) or blank_lines\n"
    "                      (paragraphs separated by blank lines)\n"
    "\n"
    "Threads: OMP_NUM_THREADS (default: every core); the shards are the same for any count.\n"
    "\n"
    "Exit codes: 0 ok, 1 bad data (e.g. an invalid JSONL line: file:line and field named),\n"
    "2 usage error or unknown tokenizer, 3 an INPUT that does not exist or cannot be written.\n";

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("prepare", args,
                            {{"--out", ArgKind::value},
                             {"--tokenizer", ArgKind::value},
                             {"--format", ArgKind::value},
                             {"--template", ArgKind::value},
                             {"--val-fraction", ArgKind::value},
                             {"--seed", ArgKind::value},
                             {"--shard-tokens", ArgKind::value},
                             {"--split", ArgKind::value}});
  if (a.positional.empty()) throw UsageError("lathe prepare: expected at least one INPUT file or directory");
  data::PrepareOptions o;
  o.inputs = a.positional;
  o.output_dir = a.get("--out").value_or("");
  if (o.output_dir.empty()) throw UsageError("lathe prepare: --out DIR is required");
  o.tokenizer = a.get("--tokenizer").value_or("byte");
  const std::string format = a.get("--format").value_or("auto");
  if (format == "auto") o.format = data::InputFormat::kAuto;
  else if (format == "text") o.format = data::InputFormat::kText;
  else if (format == "jsonl") o.format = data::InputFormat::kJsonl;
  else throw UsageError("lathe prepare: --format must be auto, text or jsonl (got \"" + format + "\")");
  const std::string tmpl = a.get("--template").value_or("default");
  if (tmpl != "default" && tmpl != "raw")
    throw UsageError("lathe prepare: --template must be default or raw (got \"" + tmpl + "\")");
  o.prompt_template = data::parse_template(tmpl);
  o.val_fraction = a.get_double("--val-fraction", 0.0);
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))
    throw UsageError("lathe prepare: --val-fraction must be in [0, 1) (got " + *a.get("--val-fraction") + ")");
  const int64_t seed = a.get_int("--seed", 0);
  if (seed < 0) throw UsageError("lathe prepare: --seed must be >= 0");
  o.seed = static_cast<uint64_t>(seed);
  o.shard_tokens = a.get_int("--shard-tokens", o.shard_tokens);
  if (o.shard_tokens < 1) throw UsageError("lathe prepare: --shard-tokens must be >= 1");
  const std::string split = a.get("--split").value_or("file");
  if (split == "file") o.text_split = data::TextSplit::kFile;
  else if (split == "blank_lines") o.text_split = data::TextSplit::kBlankLines;
  else throw UsageError("lathe prepare: --split must be file or blank_lines (got \"" + split + "\")");
  for (const auto& in : o.inputs) {
    std::error_code ec;
    if (!std::filesystem::exists(in, ec)) throw train::IoError("prepare", "input " + in + " does not exist");
  }
  // Loaded here, once, so that a bad spec is a usage error before any file is read;
  // prepare() uses this instance.
  std::unique_ptr<data::Tokenizer> tok;
  try {
    tok = data::load_tokenizer(o.tokenizer);
  } catch (const lathe::Error& e) {
    throw UsageError("lathe prepare: --tokenizer " + o.tokenizer + ": " + e.message());
  }
  o.loaded_tokenizer = tok.get();
  o.progress_out = stdout;
  data::PrepareStats st = data::prepare(o);
  std::printf("wrote %s/index.json (%s data, %lld train / %lld val documents)\n", o.output_dir.c_str(),
              st.format.c_str(), static_cast<long long>(st.train.documents), static_cast<long long>(st.val.documents));
  return kExitOk;
}

}  // namespace

extern const Command kCmdPrepare = {"prepare", "tokenize text/JSONL files into HDF5 shards", kHelp, run};

}  // namespace lathe::cli
