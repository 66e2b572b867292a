// HDF5 shard files through the HDF5 C API (data/ may not use train/'s wrappers).
#include "data/shards.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"

namespace lathe::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- HDF5 plumbing ------------------------------------------------------------------------

// HDF5 prints its error stack to stderr by default; we throw instead (per thread in a
// thread-safe build, so every entry point calls this).
void quiet_hdf5() {
  static thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

herr_t innermost(unsigned n, const H5E_error2_t* err, void* out) {
  if (n == 0 && err && err->desc) *static_cast<std::string*>(out) = err->desc;
  return 0;
}

// HDF5's innermost message for the last failure (e.g. "truncated file: eof = ..."), cleared.
std::string h5_detail() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg.empty() ? std::string() : " (hdf5: " + msg + ")";
}

// Owns one HDF5 identifier.
class Id {
 public:
  explicit Id(hid_t id = -1) : id_(id) {}
  ~Id() { reset(); }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id(Id&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  void reset() {
    if (id_ < 0) return;
    switch (H5Iget_type(id_)) {
      case H5I_FILE: H5Fclose(id_); break;
      case H5I_DATASET: H5Dclose(id_); break;
      case H5I_DATASPACE: H5Sclose(id_); break;
      case H5I_DATATYPE: H5Tclose(id_); break;
      case H5I_ATTR: H5Aclose(id_); break;
      case H5I_GROUP: H5Gclose(id_); break;
      default: break;
    }
    id_ = -1;
  }
  hid_t release() {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_;
};

Id string_type() {
  Id t(H5Tcopy(H5T_C_S1));
  H5Tset_size(t.get(), H5T_VARIABLE);
  H5Tset_cset(t.get(), H5T_CSET_UTF8);
  return t;
}

void write_attr_raw(hid_t file, const std::string& path, const char* key, hid_t type, const void* value) {
  Id space(H5Screate(H5S_SCALAR));
  Id a(H5Acreate2(file, key, type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  LATHE_REQUIRE(a.ok()) << "shard " << path << ": cannot create attribute '" << key << "'" << h5_detail();
  LATHE_REQUIRE(H5Awrite(a.get(), type, value) >= 0) << "shard " << path << ": cannot write attribute '" << key << "'"
                                               << h5_detail();
}

void write_attr(hid_t file, const std::string& path, const char* key, const std::string& v) {
  Id t = string_type();
  const char* p = v.c_str();
  write_attr_raw(file, path, key, t.get(), &p);
}

void write_attr(hid_t file, const std::string& path, const char* key, int64_t v) {
  write_attr_raw(file, path, key, H5T_NATIVE_INT64, &v);
}

void write_1d(hid_t file, const std::string& path, const char* name, hid_t file_type, hid_t mem_type,
              const void* data, size_t n) {
  hsize_t dims[1] = {static_cast<hsize_t>(n)};
  Id space(H5Screate_simple(1, dims, nullptr));
  Id d(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  LATHE_REQUIRE(d.ok()) << "shard " << path << ": cannot create dataset '" << name << "'" << h5_detail();
  LATHE_REQUIRE(n == 0 || H5Dwrite(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0)
        << "shard " << path << ": cannot write dataset '" << name << "'" << h5_detail();
}

bool has_attr(hid_t file, const char* key) { return H5Aexists(file, key) > 0; }

std::string read_attr_string(hid_t file, const std::string& path, const char* key) {
  LATHE_REQUIRE(has_attr(file, key)) << "shard " << path << ": attribute '" << key
                               << "' is missing (not a file written by lathe prepare?)";
  Id a(H5Aopen(file, key, H5P_DEFAULT));
  Id type(H5Aget_type(a.get()));
  LATHE_REQUIRE(a.ok() && type.ok() && H5Tget_class(type.get()) == H5T_STRING && H5Tis_variable_str(type.get()) > 0)
      << "shard " << path << ": attribute '" << key << "' is not a string" << h5_detail();
  Id mt = string_type();
  char* buf = nullptr;
  LATHE_REQUIRE(H5Aread(a.get(), mt.get(), &buf) >= 0) << "shard " << path << ": cannot read attribute '" << key << "'"
                                                 << h5_detail();
  std::string out = buf ? buf : "";
  Id space(H5Aget_space(a.get()));
  H5Dvlen_reclaim(mt.get(), space.get(), H5P_DEFAULT, &buf);
  return out;
}

int64_t read_attr_int(hid_t file, const std::string& path, const char* key) {
  LATHE_REQUIRE(has_attr(file, key)) << "shard " << path << ": attribute '" << key
                               << "' is missing (not a file written by lathe prepare?)";
  Id a(H5Aopen(file, key, H5P_DEFAULT));
  Id type(H5Aget_type(a.get()));
  LATHE_REQUIRE(a.ok() && type.ok() && H5Tget_class(type.get()) == H5T_INTEGER)
      << "shard " << path << ": attribute '" << key << "' is not an integer" << h5_detail();
  int64_t v = 0;
  LATHE_REQUIRE(H5Aread(a.get(), H5T_NATIVE_INT64, &v) >= 0) << "shard " << path << ": cannot read attribute '" << key
                                                       << "'" << h5_detail();
  return v;
}

// Reads the 1-D dataset `name`, whose stored type must be an integer of `bytes` bytes and
// the given signedness (so nothing is silently narrowed).
template <typename T>
std::vector<T> read_1d(hid_t file, const std::string& path, const char* name, hid_t mem_type, bool is_signed) {
  LATHE_REQUIRE(H5Lexists(file, name, H5P_DEFAULT) > 0) << "shard " << path << ": dataset '" << name << "' is missing";
  Id d(H5Dopen2(file, name, H5P_DEFAULT));
  LATHE_REQUIRE(d.ok()) << "shard " << path << ": cannot open dataset '" << name << "'" << h5_detail();
  Id type(H5Dget_type(d.get()));
  const bool type_ok = H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_size(type.get()) == sizeof(T) &&
                       (H5Tget_sign(type.get()) == H5T_SGN_2) == is_signed;
  LATHE_REQUIRE(type_ok) << "shard " << path << ": dataset '" << name << "' must be " << (is_signed ? "int" : "uint")
                   << 8 * sizeof(T);
  Id space(H5Dget_space(d.get()));
  LATHE_REQUIRE(H5Sget_simple_extent_ndims(space.get()) == 1) << "shard " << path << ": dataset '" << name
                                                        << "' must be 1-D";
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  std::vector<T> out(static_cast<size_t>(n));
  LATHE_REQUIRE(n == 0 || H5Dread(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0)
        << "shard " << path << ": cannot read dataset '" << name << "' (file damaged or truncated?)" << h5_detail();
  return out;
}

Id open_h5(const std::string& path) {
  quiet_hdf5();
  std::error_code ec;
  LATHE_REQUIRE(fs::exists(path, ec)) << "shard " << path << " does not exist";
  LATHE_REQUIRE(fs::is_regular_file(path, ec)) << "shard " << path << " is not a regular file";
  const htri_t is_h5 = H5Fis_hdf5(path.c_str());
  LATHE_REQUIRE(is_h5 > 0) << "shard " << path << " is not a readable HDF5 file (truncated or damaged?)" << h5_detail();
  Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  LATHE_REQUIRE(f.ok()) << "shard " << path << " cannot be opened (truncated or damaged?)" << h5_detail();
  return f;
}

void check_data(const std::string& path, const ShardData& data, bool instruction) {
  const int64_t n = data.num_tokens();
  LATHE_REQUIRE(!data.doc_offsets.empty() && data.doc_offsets.front() == 0)
      << "shard " << path << ": doc_offsets must start with 0";
  for (size_t i = 1; i < data.doc_offsets.size(); ++i)
    LATHE_REQUIRE(data.doc_offsets[i] >= data.doc_offsets[i - 1])
        << "shard " << path << ": doc_offsets decrease at entry " << i << " (" << data.doc_offsets[i - 1] << " then "
        << data.doc_offsets[i] << ")";
  LATHE_REQUIRE(data.doc_offsets.back() == n) << "shard " << path << ": doc_offsets end at " << data.doc_offsets.back()
                                        << " but there are " << n << " tokens";
  if (instruction) {
    LATHE_REQUIRE(static_cast<int64_t>(data.loss_mask.size()) == n)
        << "shard " << path << ": loss_mask has " << data.loss_mask.size() << " entries for " << n << " tokens";
  } else {
    LATHE_REQUIRE(data.loss_mask.empty()) << "shard " << path << ": lm data carries no loss_mask";
  }
}

}  // namespace

// ---- writing ----------------------------------------------------------------------------------

void write_shard(const std::string& path, ShardMeta meta, const ShardData& data) {
  quiet_hdf5();
  const bool instruction = meta.format == "instruction";
  LATHE_REQUIRE(instruction || meta.format == "lm") << "shard " << path << ": format must be \"lm\" or \"instruction\", got '"
                                              << meta.format << "'";
  check_data(path, data, instruction);
  meta.num_documents = data.num_documents();
  meta.num_tokens = data.num_tokens();
  const std::string tmp = temp_path_for(path);
  {
    Id f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    LATHE_REQUIRE(f.ok()) << "shard " << path << ": cannot create " << tmp << h5_detail();
    const hid_t id = f.get();
    try {
      write_1d(id, path, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, data.tokens.data(), data.tokens.size());
      write_1d(id, path, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, data.doc_offsets.data(),
               data.doc_offsets.size());
      if (instruction)
        write_1d(id, path, "loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, data.loss_mask.data(), data.loss_mask.size());
      write_attr(id, path, "tokenizer_id", meta.tokenizer_id);
      write_attr(id, path, "vocab_size", meta.vocab_size);
      write_attr(id, path, "format", meta.format);
      write_attr(id, path, "split", meta.split);
      write_attr(id, path, "shard_index", meta.shard_index);
      write_attr(id, path, "sources", json(meta.sources).dump());
      write_attr(id, path, "template", meta.prompt_template);
      write_attr(id, path, "eos_id", meta.eos_id);
      write_attr(id, path, "bos_id", meta.bos_id);
      write_attr(id, path, "num_documents", meta.num_documents);
      write_attr(id, path, "num_tokens", meta.num_tokens);
      write_attr(id, path, "lathe_version", meta.lathe_version);
      write_attr(id, path, "shard_format", meta.shard_format);
    } catch (...) {
      f.reset();
      std::error_code ec;
      fs::remove(tmp, ec);
      throw;
    }
    const hid_t raw = f.release();
    const bool ok = H5Fflush(raw, H5F_SCOPE_LOCAL) >= 0;
    const bool closed = H5Fclose(raw) >= 0;
    if (!ok || !closed) {
      std::error_code ec;
      fs::remove(tmp, ec);
      LATHE_FAIL() << "shard " << path << ": cannot flush/close " << tmp << h5_detail();
    }
  }
  commit_file(tmp, path);
}

// ---- reading ----------------------------------------------------------------------------------

namespace {
ShardMeta meta_of(hid_t id, const std::string& path) {
  ShardMeta m;
  m.shard_format = read_attr_int(id, path, "shard_format");
  LATHE_REQUIRE(m.shard_format == kShardFormat) << "shard " << path << " has shard_format " << m.shard_format
                                          << "; this lathe reads format " << kShardFormat
                                          << " (prepare the data again with this version)";
  m.tokenizer_id = read_attr_string(id, path, "tokenizer_id");
  m.vocab_size = read_attr_int(id, path, "vocab_size");
  m.format = read_attr_string(id, path, "format");
  LATHE_REQUIRE(m.format == "lm" || m.format == "instruction")
      << "shard " << path << ": attribute 'format' is '" << m.format << "', expected \"lm\" or \"instruction\"";
  m.split = read_attr_string(id, path, "split");
  m.shard_index = read_attr_int(id, path, "shard_index");
  const std::string sources = read_attr_string(id, path, "sources");
  try {
    m.sources = json::parse(sources).get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    LATHE_FAIL() << "shard " << path << ": attribute 'sources' is not a JSON list of strings: " << e.what();
  }
  m.prompt_template = read_attr_string(id, path, "template");
  m.eos_id = read_attr_int(id, path, "eos_id");
  m.bos_id = read_attr_int(id, path, "bos_id");
  m.num_documents = read_attr_int(id, path, "num_documents");
  m.num_tokens = read_attr_int(id, path, "num_tokens");
  m.lathe_version = read_attr_string(id, path, "lathe_version");
  return m;
}
}  // namespace

ShardMeta read_shard_meta(const std::string& path) {
  Id f = open_h5(path);
  return meta_of(f.get(), path);
}

ShardData read_shard(const std::string& path, ShardMeta* meta_out) {
  Id f = open_h5(path);
  const hid_t id = f.get();
  ShardMeta meta = meta_of(id, path);
  const bool instruction = meta.format == "instruction";
  ShardData d;
  d.tokens = read_1d<int32_t>(id, path, "tokens", H5T_NATIVE_INT32, true);
  d.doc_offsets = read_1d<int64_t>(id, path, "doc_offsets", H5T_NATIVE_INT64, true);
  if (instruction) {
    d.loss_mask = read_1d<uint8_t>(id, path, "loss_mask", H5T_NATIVE_UINT8, false);
  } else {
    LATHE_REQUIRE(H5Lexists(id, "loss_mask", H5P_DEFAULT) <= 0)
        << "shard " << path << ": has a loss_mask but its format is \"lm\"";
  }
  check_data(path, d, instruction);
  LATHE_REQUIRE(d.num_tokens() == meta.num_tokens) << "shard " << path << ": holds " << d.num_tokens()
                                             << " tokens but its num_tokens attribute says " << meta.num_tokens;
  LATHE_REQUIRE(d.num_documents() == meta.num_documents) << "shard " << path << ": holds " << d.num_documents()
                                                   << " documents but its num_documents attribute says "
                                                   << meta.num_documents;
  for (size_t i = 0; i < d.tokens.size(); ++i)
    LATHE_REQUIRE(d.tokens[i] >= 0 && d.tokens[i] < meta.vocab_size)
        << "shard " << path << ": token " << i << " is " << d.tokens[i] << ", outside the vocabulary of "
        << meta.vocab_size;
  for (size_t i = 0; i < d.loss_mask.size(); ++i)
    LATHE_REQUIRE(d.loss_mask[i] <= 1) << "shard " << path << ": loss_mask[" << i << "] is " << int(d.loss_mask[i])
                                 << ", expected 0 or 1";
  if (meta_out) *meta_out = std::move(meta);
  return d;
}

// ---- ShardSet -------------------------------------------------------------------------------

std::pair<int64_t, int64_t> ShardSet::document(int64_t d) const {
  LATHE_REQUIRE(d >= 0 && d < num_documents()) << "ShardSet " << path << " (" << split << "): document " << d
                                         << " out of range (" << num_documents() << " documents)";
  return {doc_offsets[d], doc_offsets[d + 1]};
}

PackedLMDataset ShardSet::packed(int64_t seq_len) const {
  LATHE_REQUIRE(tokens != nullptr) << "ShardSet::packed: no tokens loaded";
  return PackedLMDataset(tokens, seq_len);
}

namespace {

std::string tokenizer_mismatch(const std::string& where, const std::string& found, const std::string& expected) {
  std::ostringstream os;
  os << where << " was tokenized with tokenizer '" << found << "', but tokenizer '" << expected
     << "' is expected; prepare the data again with the model's tokenizer (lathe prepare --tokenizer ...)";
  return os.str();
}

}  // namespace

ShardSet open_shards(const std::string& dir_or_file, const std::string& split, const std::string& expected_id) {
  std::error_code ec;
  LATHE_REQUIRE(fs::exists(dir_or_file, ec)) << "prepared data: " << dir_or_file << " does not exist";
  ShardSet set;
  set.path = dir_or_file;
  set.split = split;
  std::vector<std::string> files;
  std::vector<std::pair<int64_t, int64_t>> expected_counts;  // (documents, tokens) from index.json
  std::string index_tok;
  if (fs::is_directory(dir_or_file, ec)) {
    LATHE_REQUIRE(split == "train" || split == "val") << "prepared data: split must be \"train\" or \"val\", got '"
                                                << split << "'";
    const std::string index_path = (fs::path(dir_or_file) / "index.json").string();
    LATHE_REQUIRE(fs::exists(index_path, ec)) << "prepared data: " << dir_or_file
                                        << " has no index.json (not a lathe prepare output, or it did not finish)";
    json index;
    try {
      std::ifstream in(index_path);
      index = json::parse(in);
      index_tok = index.at("tokenizer").at("id").get<std::string>();
      const json& sp = index.at("splits").at(split);
      for (const json& s : sp.at("shards")) {
        files.push_back((fs::path(dir_or_file) / s.at("file").get<std::string>()).string());
        expected_counts.emplace_back(s.at("documents").get<int64_t>(), s.at("tokens").get<int64_t>());
      }
    } catch (const json::exception& e) {
      LATHE_FAIL() << "prepared data: " << index_path << " is not a valid index: " << e.what();
    }
    LATHE_REQUIRE(expected_id.empty() || index_tok == expected_id) << tokenizer_mismatch("prepared data " + dir_or_file, index_tok, expected_id);
    LATHE_REQUIRE(!files.empty()) << "prepared data: " << dir_or_file << " has no " << split << " shards"
                            << (split == "val" ? " (prepared with val_fraction 0?)" : "");
  } else {
    files.push_back(dir_or_file);
  }

  auto tokens = std::make_shared<TokenIds>();
  std::shared_ptr<std::vector<uint8_t>> mask;
  set.doc_offsets = {0};
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string& file = files[i];
    // The cheap identity check first, so a mismatch is reported before reading tokens.
    const ShardMeta head = read_shard_meta(file);
    LATHE_REQUIRE(expected_id.empty() || head.tokenizer_id == expected_id) << tokenizer_mismatch("shard " + file, head.tokenizer_id, expected_id);
    ShardMeta meta;
    ShardData d = read_shard(file, &meta);
    LATHE_REQUIRE(index_tok.empty() || meta.tokenizer_id == index_tok) << "shard " << file << " has tokenizer '" << meta.tokenizer_id
                                              << "' but its index.json says '" << index_tok << "'";
    LATHE_REQUIRE(split.empty() || meta.split == split) << "shard " << file << " belongs to split '" << meta.split << "', not '" << split
                                   << "'";
    LATHE_REQUIRE(i >= expected_counts.size() || (expected_counts[i].first == d.num_documents() && expected_counts[i].second == d.num_tokens()))
          << "shard " << file << " holds " << d.num_documents() << " documents / " << d.num_tokens()
          << " tokens but index.json lists " << expected_counts[i].first << " / " << expected_counts[i].second
          << " (mixed outputs of two prepare runs?)";
    if (i == 0) {
      set.tokenizer_id = meta.tokenizer_id;
      set.vocab_size = meta.vocab_size;
      set.format = meta.format;
      set.prompt_template = meta.prompt_template;
      set.eos_id = meta.eos_id;
      set.bos_id = meta.bos_id;
      if (set.split.empty()) set.split = meta.split;
      if (meta.format == "instruction") mask = std::make_shared<std::vector<uint8_t>>();
    } else {
      LATHE_REQUIRE(meta.tokenizer_id == set.tokenizer_id && meta.format == set.format &&
              meta.vocab_size == set.vocab_size)
          << "shard " << file << " (tokenizer '" << meta.tokenizer_id << "', format " << meta.format
          << ") does not match " << files[0] << " (tokenizer '" << set.tokenizer_id << "', format " << set.format
          << ")";
    }
    const int64_t base = static_cast<int64_t>(tokens->size());
    tokens->insert(tokens->end(), d.tokens.begin(), d.tokens.end());
    if (mask) mask->insert(mask->end(), d.loss_mask.begin(), d.loss_mask.end());
    for (size_t k = 1; k < d.doc_offsets.size(); ++k) set.doc_offsets.push_back(base + d.doc_offsets[k]);
    set.files.push_back(file);
  }
  LATHE_REQUIRE(set.num_documents() > 0) << "prepared data: " << dir_or_file << " split '" << set.split
                                   << "' holds no documents";
  set.tokens = std::move(tokens);
  set.loss_mask = std::move(mask);
  return set;
}

ShardSet open_shards(const std::string& dir_or_file, const std::string& split, const Tokenizer& tokenizer) {
  ShardSet s = open_shards(dir_or_file, split, tokenizer.id());
  LATHE_REQUIRE(s.vocab_size == tokenizer.vocab_size())
      << "prepared data " << dir_or_file << " has vocab_size " << s.vocab_size << " but the tokenizer '"
      << tokenizer.id() << "' has " << tokenizer.vocab_size();
  return s;
}

}  // namespace lathe::data
