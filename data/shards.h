// Tokenized HDF5 shards, the output of `lathe prepare` (data/prepare.h), and their loading.
//
// A directory of prepared data holds
//   <dir>/train_00000.h5, train_00001.h5, ...   (and val_00000.h5, ... when there is a split)
//   <dir>/index.json                            shards, counts and the tokenizer identity
// Each shard holds whole documents:
//   tokens       int32 [N]     the documents' token ids, one after another
//   doc_offsets  int64 [D+1]   document d is tokens[doc_offsets[d], doc_offsets[d+1]);
//                              doc_offsets[0] = 0, doc_offsets[D] = N
//   loss_mask    uint8 [N]     instruction data only: 1 on response tokens (trained on)
// and these attributes on the root group:
//   tokenizer_id (string, Tokenizer::id()), vocab_size (int64), format ("lm" or
//   "instruction"), split, shard_index (int64), sources (string: JSON array of input
//   files), template (string), eos_id and bos_id (int64, -1: none appended),
//   num_documents and num_tokens (int64), lathe_version (string), shard_format (int64).
// With h5py: f["tokens"][:], f.attrs["tokenizer_id"].
//
// Files are written under a temporary name and renamed into place, so a crash never
// leaves a half-written shard or index under the final name; index.json is written last.
#pragma once

#include "core/fs.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/lm_dataset.h"
#include "data/tokenizer.h"

namespace lathe::data {

// The lathe version written into shards and index.json (tracks project(VERSION) in CMake).
inline constexpr const char* kLatheVersion = "0.1.0";
// Version of the shard layout above; readers reject other versions.
inline constexpr int64_t kShardFormat = 1;

struct ShardMeta {
  std::string tokenizer_id;
  int64_t vocab_size = 0;
  std::string format;  // "lm" or "instruction"
  std::string split;   // "train" or "val"
  int64_t shard_index = 0;
  std::vector<std::string> sources;  // the input files the run read
  std::string prompt_template;       // "default" or "raw" (instruction data), "" for lm
  int64_t eos_id = -1;               // EOS id appended to documents/responses, -1: none
  int64_t bos_id = -1;               // BOS id put first in documents, -1: none
  int64_t num_documents = 0;
  int64_t num_tokens = 0;
  std::string lathe_version = kLatheVersion;
  int64_t shard_format = kShardFormat;
};

struct ShardData {
  std::vector<int32_t> tokens;
  std::vector<int64_t> doc_offsets{0};  // always starts with 0
  std::vector<uint8_t> loss_mask;       // empty for lm data
  int64_t num_documents() const { return static_cast<int64_t>(doc_offsets.size()) - 1; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
};

// Writes a shard atomically (a temporary file in the same directory, fsync, rename).
// meta.num_documents/num_tokens are taken from `data`. Throws naming the path on failure
// and when `data` is inconsistent (offsets, mask length).
void write_shard(const std::string& path, ShardMeta meta, const ShardData& data);

// The attributes of a shard; throws naming the file when it is missing, truncated, not
// HDF5, lacks an attribute, or has another shard_format.
ShardMeta read_shard_meta(const std::string& path);
// The whole shard, checked: dtypes and shapes as above, offsets that start at 0, never
// decrease and end at N, counts equal to the attributes, token ids in [0, vocab_size),
// mask values 0/1 and present exactly for instruction data.
ShardData read_shard(const std::string& path, ShardMeta* meta = nullptr);

// Writes `text` to `path` atomically (temporary file, fsync, rename).
using lathe::write_file_atomic;

// One split of prepared data, loaded into memory: every shard's documents in shard order.
struct ShardSet {
  std::string path;  // the directory or file that was opened
  std::string split;
  std::string tokenizer_id;
  int64_t vocab_size = 0;
  std::string format;  // "lm" or "instruction"
  std::string prompt_template;
  int64_t eos_id = -1;
  int64_t bos_id = -1;
  std::vector<std::string> files;  // the shards read, in order
  std::shared_ptr<const TokenIds> tokens;                 // all shards' tokens, concatenated
  std::shared_ptr<const std::vector<uint8_t>> loss_mask;  // null for lm data
  std::vector<int64_t> doc_offsets;                       // global, D+1 entries

  int64_t num_documents() const { return static_cast<int64_t>(doc_offsets.size()) - 1; }
  int64_t num_tokens() const { return tokens ? static_cast<int64_t>(tokens->size()) : 0; }
  bool has_loss_mask() const { return loss_mask != nullptr; }
  // Document d's tokens [begin, end) in `tokens`.
  std::pair<int64_t, int64_t> document(int64_t d) const;
  // Packed LM windows over the concatenated tokens (document boundaries and mask ignored).
  PackedLMDataset packed(int64_t seq_len) const;
};

// Opens one split of prepared data:
//   dir_or_file a directory written by `lathe prepare` (read through its index.json), or
//               a single shard file (its split attribute must equal `split` unless
//               `split` is empty);
//   split       "train" or "val";
//   expected_tokenizer_id  Tokenizer::id() of the model's tokenizer; when non-empty, a
//               shard tokenized otherwise is an error naming both ids. "" skips the check.
// Every shard is read with read_shard's checks and compared with the index (counts,
// tokenizer). A split with no documents is an error naming the directory.
ShardSet open_shards(const std::string& dir_or_file, const std::string& split,
                     const std::string& expected_tokenizer_id = "");
// The same, checking both the id and the vocabulary size against `tokenizer`.
ShardSet open_shards(const std::string& dir_or_file, const std::string& split, const Tokenizer& tokenizer);

}  // namespace lathe::data
