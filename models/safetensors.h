// Hugging Face safetensors: read (memory-mapped, zero-copy), write (atomic), and
// sharded checkpoints (`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`).
//
// File layout (safetensors README): an 8-byte little-endian u64 N, N bytes of UTF-8 JSON,
// then the data buffer. The JSON maps each tensor name to
//   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// with offsets relative to the start of the buffer (end exclusive), plus an optional
// "__metadata__" string->string map. Tensors are little-endian, C order, packed.
//
// Reading validates everything a corrupt or truncated file could get wrong and throws a
// lathe::Error that names the file (and the tensor) instead of reading out of bounds;
// in particular the tensors must fill the data buffer exactly, in offset order, with no
// gap, overlap or trailing byte (what the format requires), so a wrong header length
// cannot shift every tensor unnoticed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lathe::models {

// safetensors dtype strings. BOOL reads as u8; writing u8 always gives "U8".
const char* safetensors_dtype_name(DType dt);  // "F32", "BF16", ...
// Throws (naming `context`) for names lathe has no dtype for (F8_*, U16, C64, ...).
DType safetensors_dtype_from_name(const std::string& name, const std::string& context);

// One tensor's header entry.
struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;  // as written in the file ("BOOL" stays "BOOL")
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data buffer, end exclusive
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

namespace detail {
struct MappedFile;  // an mmap'd file, unmapped when the last tensor viewing it is gone
}

// One .safetensors file, memory-mapped. Tensors returned by get() view the mapping
// directly (no copy) and keep it alive after this object is destroyed. The file is
// opened read-only and mapped copy-on-write (MAP_PRIVATE), so writing into a returned
// tensor changes only this process's pages, never the file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  // Names sorted alphabetically.
  std::vector<std::string> names() const;
  size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Throws naming the file when the tensor is missing.
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  // Zero-copy CPU view of the tensor's bytes (a copy only when the file places a tensor at
  // an offset that is not a multiple of its element size, which no standard writer does).
  Tensor get(const std::string& name) const;
  // Element index of the first NaN or infinity of a floating tensor, -1 when all are finite
  // (and for integer tensors). Reads the mapped bytes without converting them.
  int64_t first_non_finite(const std::string& name) const;
  // The "__metadata__" map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Byte offset of the data buffer in the file (8 + header length).
  uint64_t data_start() const { return data_start_; }

 private:
  std::string path_;
  std::shared_ptr<detail::MappedFile> map_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint that may be sharded. `path` is one of:
//   - a directory holding model.safetensors.index.json (sharded) or model.safetensors;
//   - an index .json file (its weight_map names shards relative to its folder);
//   - a single .safetensors file.
// Every shard is opened (and validated) up front; every weight_map entry must exist in its
// shard, and a tensor name may live in only one shard.
class SafetensorsLoader {
 public:
  explicit SafetensorsLoader(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  size_t size() const { return where_.size(); }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  Tensor get(const std::string& name) const;
  int64_t first_non_finite(const std::string& name) const;  // see SafetensorsFile
  // Shard file paths in the order they were opened.
  std::vector<std::string> files() const;
  // The file that holds `name`.
  const std::string& file_of(const std::string& name) const;
  // The index's "metadata" (values rendered as strings, e.g. total_size) for a sharded
  // checkpoint, the file's "__metadata__" for a single file.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string root_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> where_;  // name -> shard index
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Order of the tensors in the data buffer. The format allows no gaps between tensors
// (the reference reader rejects them), so alignment comes only from the order.
enum class SafetensorsOrder {
  // Larger element sizes first, then by name (what the Hugging Face writer does): every
  // tensor starts at a multiple of its element size, so every read is zero-copy.
  aligned,
  by_name,  // sorted by name
  given,    // in the order given
};

struct SafetensorsWriteOptions {
  std::map<std::string, std::string> metadata;  // stored as "__metadata__"
  SafetensorsOrder order = SafetensorsOrder::aligned;
};

// Writes one file atomically: `path.tmp.<pid>` is written, fsynced and renamed over `path`.
// Tensors may have any dtype, device and strides (they are copied to contiguous CPU bytes).
// Names must be non-empty, unique and not "__metadata__". The header is padded with spaces
// so that the data buffer starts on an 8-byte boundary. The header lists the tensors in
// buffer order, after "__metadata__".
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const SafetensorsWriteOptions& options = {});

// Writes a checkpoint into directory `dir` (created if missing), split into shards of at
// most `max_shard_bytes` of tensor data each (a tensor larger than that gets a shard of its
// own; shards are filled in `options.order`): `model-00001-of-0000N.safetensors`... plus `model.safetensors.index.json`
// ({"metadata": {"total_size": ...}, "weight_map": {name: file}}), written last so that a
// complete index means complete shards. With one shard (or max_shard_bytes == 0) it writes
// a single `model.safetensors` and no index, like Hugging Face. Returns the file names written
// (relative to dir), index last.
std::vector<std::string> save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                                  uint64_t max_shard_bytes,
                                                  const SafetensorsWriteOptions& options = {});

}  // namespace lathe::models
