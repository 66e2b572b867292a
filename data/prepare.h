// `lathe prepare`: text or JSONL files -> tokenized HDF5 shards (layout in data/shards.h).
//
//   PrepareOptions o;
//   o.inputs = {"corpus/"};  o.output_dir = "prepared/";  o.tokenizer = "models/gpt2";
//   o.val_fraction = 0.01;
//   PrepareStats s = prepare(o);      // prepared/train_00000.h5, ..., val_00000.h5, index.json
//
// Inputs. Each entry of `inputs` is a file or a directory. A directory contributes, in
// byte order of their relative paths and descending into subdirectories, its regular files
// ending in .txt, .text, .md, .jsonl or .ndjson whose names do not start with '.'. A file
// named on its own is taken whatever its extension. Files ending in .jsonl/.ndjson are JSONL
// (format kAuto), every other file is plain text.
//   - Plain text: one file is one document (text_split kFile), or the file is cut at blank
//     lines (kBlankLines: a document is a maximal run of lines that are not blank, i.e. not
//     only spaces/tabs/"\r"; its text keeps the "\n" between its lines but not the last one).
//     Empty documents are skipped.
//   - JSONL: one record per non-blank line, kinds and templates as in data/instruction.h.
//     A record with an empty "text" is skipped. An invalid line is an error naming
//     file:line and the missing or bad field; nothing is written to the final names then.
// A dataset is either plain ("lm": text files and text records) or instruction data (any
// mix of prompt_response, alpaca and chat records); mixing the two is an error.
//
// Documents. Each document's tokens are [BOS] text [EOS] for plain data and the template's
// tokens for instruction data (responses end with EOS); BOS only with prepend_bos, EOS as
// append_eos says. Special-token strings written in the data are ordinary text unless
// special_tokens_in_text is set.
//
// Validation split: exactly round(D * val_fraction) of the D documents (at least 1 and at
// most D - 1 when val_fraction > 0) go to "val", chosen uniformly by selection sampling
// from `seed` (data/permutation.h), so the split depends only on (inputs, seed,
// val_fraction), never on thread count or shard size. Documents keep their input order
// inside each split.
//
// Shards: a split's documents fill <output_dir>/<split>_%05d.h5 in order; a shard is closed
// once it holds at least shard_tokens tokens (documents are never cut, so a shard may hold
// up to one document more). index.json is written last; shards of an earlier run in the same
// directory that the new index does not list are deleted.
//
// Threads: see num_threads; the shards do not depend on it.
//
// Progress goes to `progress_out`: a live line (percent, MB/s, tokens) on a terminal, and
// one summary line at the end in any case (unless quiet).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "data/instruction.h"

namespace lathe::data {

enum class InputFormat { kAuto, kText, kJsonl };  // kAuto: by file extension
enum class TextSplit { kFile, kBlankLines };
enum class EosMode { kAuto, kOn, kOff };  // kAuto: append when the tokenizer has an EOS; kOn: require one

struct PrepareOptions {
  std::vector<std::string> inputs;  // files and/or directories
  std::string output_dir;           // created if missing
  std::string tokenizer = "byte";   // a load_tokenizer() spec; stored in index.json
  // The tokenizer `tokenizer` names, already loaded (the CLI loads it once to check the
  // spec); nullptr: prepare() loads it. Must outlive the call.
  const Tokenizer* loaded_tokenizer = nullptr;
  InputFormat format = InputFormat::kAuto;
  RecordExpect record_kind = RecordExpect::kAny;  // what JSONL records must be
  TextSplit text_split = TextSplit::kFile;
  PromptTemplate prompt_template = PromptTemplate::kDefault;
  double val_fraction = 0.0;  // in [0, 1)
  uint64_t seed = 0;
  int64_t shard_tokens = int64_t{1} << 24;  // tokens per shard (16M int32 = 64 MiB)
  EosMode append_eos = EosMode::kAuto;
  bool prepend_bos = false;  // requires a tokenizer with a BOS token
  bool special_tokens_in_text = false;
  // Tokenizer threads; 0: OpenMP's default (OMP_NUM_THREADS). Documents are encoded in
  // parallel, and a long plain-text document in pieces cut where the tokenizer allows
  // (Tokenizer::next_cut); the output is byte-identical for every thread count.
  int num_threads = 0;
  bool quiet = false;   // no progress and no summary
  std::FILE* progress_out = nullptr;  // nullptr: stderr
  int tty = -1;  // -1: isatty(progress_out); 0/1 forces the live line off/on (tests)
};

struct SplitStats {
  int64_t documents = 0;
  int64_t tokens = 0;
  int64_t trained_tokens = 0;  // tokens with loss mask 1 (instruction data)
  std::vector<std::string> shards;  // file paths, in order
};

struct PrepareStats {
  SplitStats train, val;
  std::string format;        // "lm" or "instruction"
  std::string tokenizer_id;  // Tokenizer::id()
  int64_t vocab_size = 0;
  int64_t eos_id = -1, bos_id = -1;  // appended ids, -1: none
  std::vector<std::string> sources;  // the files read, in order
  int64_t input_bytes = 0;
  int64_t skipped_empty = 0;  // empty documents left out
  int64_t records_text = 0, records_prompt_response = 0, records_alpaca = 0, records_chat = 0;
  double seconds = 0;       // wall time of the whole run
  double load_seconds = 0;  // of which loading the tokenizer
  double mb_per_s = 0;      // input_bytes / 1e6 / (seconds - load_seconds)
  std::string summary() const;  // the one-line summary printed at the end
};

PrepareStats prepare(const PrepareOptions& options);

// The files `inputs` expand to (directory rules above), in the order prepare reads them.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs);

// A text file's documents under `split` (kFile: the whole text, when non-empty).
std::vector<std::string> split_text_documents(const std::string& text, TextSplit split);

}  // namespace lathe::data
