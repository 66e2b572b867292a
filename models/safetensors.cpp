#include "models/safetensors.h"

#include "core/fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

namespace lathe::models {

// The format is little-endian and tensors are exposed by reinterpreting mapped bytes.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
// The safetensors reference implementation refuses headers above 100 MB; so do we, so
// that a corrupt length cannot make us parse gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string errno_str() { return std::strerror(errno); }
}  // namespace

// ---- dtypes ----------------------------------------------------------------------------

const char* safetensors_dtype_name(DType dt) {
  switch (dt) {
    case DType::f64: return "F64";
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i64: return "I64";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
    case DType::i8: return "I8";
  }
  LATHE_FAIL() << "safetensors: unknown DType value " << static_cast<int>(dt);
  return "";
}

DType safetensors_dtype_from_name(const std::string& name, const std::string& context) {
  static const std::map<std::string, DType> table = {
      {"F64", DType::f64}, {"F32", DType::f32}, {"BF16", DType::bf16}, {"F16", DType::f16},
      {"I64", DType::i64}, {"I32", DType::i32}, {"U8", DType::u8},     {"I8", DType::i8},
      {"BOOL", DType::u8},  // one byte per element, 0 or 1
  };
  auto it = table.find(name);
  LATHE_CHECK(it != table.end()) << context << ": unsupported dtype \"" << name
                                 << "\" (lathe reads F64, F32, BF16, F16, I64, I32, U8, I8, BOOL)";
  return it->second;
}

// ---- memory mapping ----------------------------------------------------------------------

namespace detail {
struct MappedFile {
  void* base = nullptr;
  size_t size = 0;
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (base) munmap(base, size);
  }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(base); }
};
}  // namespace detail

namespace {

std::shared_ptr<detail::MappedFile> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LATHE_CHECK(fd >= 0) << "safetensors: cannot open " << path << ": " << errno_str();
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    std::string e = errno_str();
    ::close(fd);
    LATHE_FAIL() << "safetensors: cannot stat " << path << ": " << e;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    LATHE_FAIL() << "safetensors: " << path << " is not a regular file";
  }
  auto m = std::make_shared<detail::MappedFile>();
  m->size = static_cast<size_t>(st.st_size);
  if (m->size < 8) {
    ::close(fd);
    LATHE_FAIL() << "safetensors: " << path << " is truncated: " << m->size
                 << " bytes, but a safetensors file starts with an 8-byte header length";
  }
  // Private (copy-on-write) mapping of a read-only descriptor: the file can never be
  // modified through it, and an in-place op on a loaded tensor does not fault.
  void* p = mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  std::string e = errno_str();
  ::close(fd);
  LATHE_CHECK(p != MAP_FAILED) << "safetensors: mmap of " << path << " (" << m->size << " bytes) failed: " << e;
  m->base = p;
  return m;
}

// Parses JSON and reports duplicate keys (nlohmann silently keeps the last one; the
// safetensors format forbids duplicates, and a duplicate tensor name is ambiguous).
json parse_json_strict(const std::string& text, const std::string& what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, cb);
  } catch (const json::exception& ex) {
    LATHE_FAIL() << what << ": malformed JSON: " << ex.what();
  }
  LATHE_CHECK(duplicate.empty()) << what << ": duplicate key \"" << duplicate << "\"";
  return j;
}

uint64_t json_u64(const json& v, const std::string& what) {
  LATHE_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0))
      << what << " must be a non-negative integer, got " << v.dump();
  return v.get<uint64_t>();
}

}  // namespace

// ---- reader ------------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = map_file(path);
  const uint64_t file_size = map_->size;
  uint64_t n = 0;
  std::memcpy(&n, map_->bytes(), 8);  // little-endian u64 (host is little-endian)
  LATHE_CHECK(n <= file_size - 8) << "safetensors: " << path << ": header length " << n
                                   << " exceeds the file size (" << file_size
                                   << " bytes); the file is truncated or not a safetensors file";
  LATHE_CHECK(n <= kMaxHeaderBytes) << "safetensors: " << path << ": header length " << n
                                    << " is above the 100 MB limit of the format";
  LATHE_CHECK(n >= 2) << "safetensors: " << path << ": header length " << n << " is too small for a JSON object";
  data_start_ = 8 + n;
  const uint64_t buffer_size = file_size - data_start_;

  std::string text(reinterpret_cast<const char*>(map_->bytes() + 8), static_cast<size_t>(n));
  const std::string where = "safetensors: " + path;
  json header = parse_json_strict(text, where + ": header");
  LATHE_CHECK(header.is_object()) << where << ": header must be a JSON object, got " << header.type_name();

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      LATHE_CHECK(v.is_object()) << where << ": __metadata__ must be an object of strings";
      for (auto m = v.begin(); m != v.end(); ++m) {
        LATHE_CHECK(m.value().is_string()) << where << ": __metadata__[\"" << m.key()
                                           << "\"] must be a string, got " << m.value().dump();
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string ctx = where + ": tensor \"" + name + "\"";
    LATHE_CHECK(v.is_object()) << ctx << ": entry must be an object with dtype, shape, data_offsets";
    for (const char* key : {"dtype", "shape", "data_offsets"})
      LATHE_CHECK(v.contains(key)) << ctx << ": missing \"" << key << "\"";
    LATHE_CHECK(v["dtype"].is_string()) << ctx << ": dtype must be a string, got " << v["dtype"].dump();

    SafetensorsEntry e;
    e.name = name;
    e.dtype_name = v["dtype"].get<std::string>();
    e.dtype = safetensors_dtype_from_name(e.dtype_name, ctx);

    const json& shape = v["shape"];
    LATHE_CHECK(shape.is_array()) << ctx << ": shape must be an array, got " << shape.dump();
    // numel * element size in 128 bits so that absurd shapes cannot overflow into a match.
    unsigned __int128 bytes = dtype_size(e.dtype);
    for (const json& d : shape) {
      uint64_t dim = json_u64(d, ctx + ": shape entry");
      LATHE_CHECK(dim < (1ull << 62)) << ctx << ": shape entry " << dim << " is too large";
      e.shape.push_back(static_cast<int64_t>(dim));
      bytes *= dim;
      if (bytes > (static_cast<unsigned __int128>(1) << 64)) bytes = static_cast<unsigned __int128>(1) << 64;
    }

    const json& off = v["data_offsets"];
    LATHE_CHECK(off.is_array() && off.size() == 2) << ctx << ": data_offsets must be [begin, end], got " << off.dump();
    e.begin = json_u64(off[0], ctx + ": data_offsets begin");
    e.end = json_u64(off[1], ctx + ": data_offsets end");
    LATHE_CHECK(e.begin <= e.end) << ctx << ": data_offsets [" << e.begin << ", " << e.end << "] has begin > end";
    LATHE_CHECK(static_cast<unsigned __int128>(e.end - e.begin) == bytes)
        << ctx << ": data_offsets [" << e.begin << ", " << e.end << "] span " << (e.end - e.begin)
        << " bytes, but shape " << shape_str(e.shape) << " of " << e.dtype_name << " needs "
        << (bytes >= (static_cast<unsigned __int128>(1) << 64) ? std::string("more than 2^64")
                                                                  : std::to_string(static_cast<uint64_t>(bytes)));
    LATHE_CHECK(e.end <= buffer_size) << ctx << ": data_offsets [" << e.begin << ", " << e.end
                                      << "] run past the data buffer, which has only " << buffer_size
                                      << " bytes (file size " << file_size << "): the file is truncated";
    entries_.emplace(name, std::move(e));
  }

  // The format requires the tensors to fill the data buffer exactly: sorted by offset, each
  // starts where the previous ends, the first at 0 and the last at the end of the file. A
  // header length that is off by a few bytes shifts every tensor and is caught here (the
  // JSON itself may still parse, e.g. when only padding spaces were cut off).
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& kv : entries_) by_offset.push_back(&kv.second);
  std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expect = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* b : by_offset) {
    LATHE_CHECK(b->begin >= expect) << where << ": tensors \"" << prev->name << "\" [" << prev->begin << ", "
                                    << prev->end << ") and \"" << b->name << "\" [" << b->begin << ", " << b->end
                                    << ") overlap in the data buffer";
    LATHE_CHECK(b->begin == expect)
        << where << ": tensor \"" << b->name << "\" starts at byte " << b->begin << " of the data buffer, but "
        << (prev ? "the previous tensor \"" + prev->name + "\" ends at " + std::to_string(expect)
                 : std::string("the first tensor must start at 0"))
        << "; safetensors tensors must fill the buffer without gaps (is the header length at the start of the "
           "file wrong?)";
    expect = b->end;
    prev = b;
  }
  LATHE_CHECK(expect == buffer_size)
      << where << ": the tensors end at byte " << expect << " of the data buffer, but the buffer (file size "
      << file_size << " - 8 - header length " << n << ") has " << buffer_size
      << " bytes; safetensors tensors must fill it exactly (a wrong header length or trailing bytes)";
}

namespace {
// Index of the first NaN or infinity among `n` elements of a floating dtype at `p`, or -1.
// Works on the bit patterns (exponent all ones), so no element is converted.
template <typename Bits>
int64_t first_all_ones_exponent(const uint8_t* p, uint64_t n, Bits mask) {
  for (uint64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, p + i * sizeof(Bits), sizeof(Bits));
    if ((b & mask) == mask) return static_cast<int64_t>(i);
  }
  return -1;
}
}  // namespace

int64_t SafetensorsFile::first_non_finite(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint8_t* p = map_->bytes() + data_start_ + e.begin;
  const uint64_t n = e.nbytes() / dtype_size(e.dtype);
  switch (e.dtype) {
    case DType::f64: return first_all_ones_exponent<uint64_t>(p, n, 0x7ff0000000000000ull);
    case DType::f32: return first_all_ones_exponent<uint32_t>(p, n, 0x7f800000u);
    case DType::bf16: return first_all_ones_exponent<uint16_t>(p, n, 0x7f80u);
    case DType::f16: return first_all_ones_exponent<uint16_t>(p, n, 0x7c00u);
    default: return -1;  // integers are always finite
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  LATHE_CHECK(it != entries_.end()) << "safetensors: " << path_ << ": no tensor named \"" << name << "\" ("
                                    << entries_.size() << " tensors in the file)";
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  uint8_t* p = static_cast<uint8_t*>(map_->base) + data_start_ + e.begin;
  const size_t esize = dtype_size(e.dtype);
  if (reinterpret_cast<uintptr_t>(p) % esize != 0) {
    // A misaligned tensor cannot be viewed as typed elements without undefined behaviour;
    // copy it into an aligned buffer instead.
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.nbytes()) std::memcpy(t.raw_data(), p, e.nbytes());
    return t;
  }
  // The release only drops this storage's reference to the mapping; the last one unmaps.
  std::shared_ptr<detail::MappedFile> keep = map_;
  auto storage = Storage::wrap(p, e.nbytes(), Device::cpu(), [keep](void*) mutable { keep.reset(); });
  return Tensor::from_storage(std::move(storage), e.shape, e.dtype);
}

// ---- sharded loader -------------------------------------------------------------------------

SafetensorsLoader::SafetensorsLoader(const std::string& path) : root_(path) {
  std::error_code ec;
  LATHE_CHECK(fs::exists(path, ec)) << "safetensors: checkpoint path " << path << " does not exist";
  fs::path index_path;
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    if (fs::exists(dir / kIndexName, ec)) {
      index_path = dir / kIndexName;
    } else if (fs::exists(dir / kSingleName, ec)) {
      shards_.push_back(std::make_unique<SafetensorsFile>((dir / kSingleName).string()));
    } else {
      LATHE_FAIL() << "safetensors: directory " << path << " holds neither " << kIndexName << " nor " << kSingleName;
    }
  } else if (fs::path(path).extension() == ".json") {
    index_path = path;
  } else {
    shards_.push_back(std::make_unique<SafetensorsFile>(path));
  }

  if (index_path.empty()) {
    for (const auto& name : shards_[0]->names()) where_[name] = 0;
    metadata_ = shards_[0]->metadata();
    return;
  }

  // Sharded: {"metadata": {...}, "weight_map": {tensor: shard file}}.
  const std::string where = "safetensors index " + index_path.string();
  std::string text;
  {
    FILE* f = std::fopen(index_path.c_str(), "rb");
    LATHE_CHECK(f) << where << ": cannot open: " << errno_str();
    char buf[65536];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
    bool bad = std::ferror(f);
    std::fclose(f);
    LATHE_CHECK(!bad) << where << ": read error";
  }
  json index = parse_json_strict(text, where);
  LATHE_CHECK(index.is_object()) << where << ": must be a JSON object";
  LATHE_CHECK(index.contains("weight_map") && index["weight_map"].is_object())
      << where << ": missing the \"weight_map\" object {tensor name: shard file}";
  if (index.contains("metadata")) {
    const json& m = index["metadata"];
    LATHE_CHECK(m.is_object()) << where << ": \"metadata\" must be an object";
    for (auto it = m.begin(); it != m.end(); ++it)
      metadata_[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }
  const fs::path folder = index_path.parent_path();
  std::map<std::string, size_t> shard_of_file;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    LATHE_CHECK(it.value().is_string()) << where << ": weight_map[\"" << it.key() << "\"] must be a file name, got "
                                        << it.value().dump();
    const std::string file = it.value().get<std::string>();
    auto sf = shard_of_file.find(file);
    if (sf == shard_of_file.end()) {
      fs::path shard_path = folder / file;
      LATHE_CHECK(fs::exists(shard_path, ec)) << where << ": shard " << shard_path.string() << " (for tensor \""
                                              << it.key() << "\") does not exist";
      shards_.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
      sf = shard_of_file.emplace(file, shards_.size() - 1).first;
    }
    LATHE_CHECK(shards_[sf->second]->contains(it.key()))
        << where << ": weight_map puts tensor \"" << it.key() << "\" in " << shards_[sf->second]->path()
        << ", which has no such tensor";
    where_[it.key()] = sf->second;
  }
}

std::vector<std::string> SafetensorsLoader::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const std::string& SafetensorsLoader::file_of(const std::string& name) const {
  auto it = where_.find(name);
  LATHE_CHECK(it != where_.end()) << "safetensors: checkpoint " << root_ << " has no tensor named \"" << name
                                  << "\" (" << where_.size() << " tensors)";
  return shards_[it->second]->path();
}

const SafetensorsEntry& SafetensorsLoader::entry(const std::string& name) const {
  file_of(name);  // checks presence
  return shards_[where_.at(name)]->entry(name);
}

int64_t SafetensorsLoader::first_non_finite(const std::string& name) const {
  file_of(name);
  return shards_[where_.at(name)]->first_non_finite(name);
}

Tensor SafetensorsLoader::get(const std::string& name) const {
  file_of(name);
  return shards_[where_.at(name)]->get(name);
}

std::vector<std::string> SafetensorsLoader::files() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->path());
  return out;
}

// ---- writer ---------------------------------------------------------------------------------

namespace {

struct Prepared {
  std::string name;
  Tensor t;  // contiguous, CPU
};

std::vector<Prepared> prepare(const NamedTensors& tensors, SafetensorsOrder order, const std::string& where) {
  std::vector<Prepared> out;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    LATHE_CHECK(!name.empty()) << where << ": tensor names must be non-empty";
    LATHE_CHECK(name != "__metadata__") << where << ": \"__metadata__\" is reserved and cannot name a tensor";
    LATHE_CHECK(seen.insert(name).second) << where << ": tensor \"" << name << "\" given twice";
    LATHE_CHECK(t.defined()) << where << ": tensor \"" << name << "\" is undefined";
    out.push_back({name, t.to(Device::cpu()).contiguous()});
  }
  if (order == SafetensorsOrder::by_name) {
    std::sort(out.begin(), out.end(), [](const Prepared& a, const Prepared& b) { return a.name < b.name; });
  } else if (order == SafetensorsOrder::aligned) {
    // Sizes are powers of two, so after all tensors of size s (each a multiple of s bytes)
    // the running offset stays a multiple of every smaller size.
    std::sort(out.begin(), out.end(), [](const Prepared& a, const Prepared& b) {
      const size_t sa = a.t.element_size(), sb = b.t.element_size();
      return sa != sb ? sa > sb : a.name < b.name;
    });
  }
  return out;
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, 1u << 30));
    if (w < 0 && errno == EINTR) continue;
    LATHE_CHECK(w > 0) << "safetensors: write to " << path << " failed: " << errno_str();
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Writes through a temporary file and commits it (core/fs.h); on failure the temp file is
// removed and the error names the path.
template <typename WriteBody>
void atomic_write(const std::string& path, WriteBody body) {
  write_file_atomic_with(path, [&](int fd, const std::string& tmp) { body(fd, tmp); });
}

void write_file(const std::string& path, const std::vector<Prepared>& ts,
                const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& p : ts) {
    nlohmann::ordered_json e;
    e["dtype"] = safetensors_dtype_name(p.t.dtype());
    e["shape"] = p.t.shape();
    e["data_offsets"] = {offset, offset + p.t.nbytes()};
    header[p.name] = std::move(e);
    offset += p.t.nbytes();
  }
  std::string text = header.dump();
  // Pad with spaces (valid JSON whitespace) so the buffer starts 8-byte aligned.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  const uint64_t n = text.size();
  atomic_write(path, [&](int fd, const std::string& tmp) {
    write_all(fd, &n, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const auto& p : ts)
      if (p.t.nbytes()) write_all(fd, p.t.raw_data(), p.t.nbytes(), tmp);
  });
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors, const SafetensorsWriteOptions& options) {
  write_file(path, prepare(tensors, options.order, "save_safetensors(" + path + ")"), options.metadata);
}

std::vector<std::string> save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                                  uint64_t max_shard_bytes, const SafetensorsWriteOptions& options) {
  const std::string where = "save_safetensors_sharded(" + dir + ")";
  std::vector<Prepared> ts = prepare(tensors, options.order, where);
  std::error_code ec;
  fs::create_directories(dir, ec);
  LATHE_CHECK(fs::is_directory(dir)) << where << ": cannot create the directory: " << ec.message();

  // Greedy packing in layout order; a tensor that does not fit starts a new shard.
  std::vector<std::vector<Prepared>> shards(1);
  uint64_t cur = 0, total = 0;
  for (auto& p : ts) {
    const uint64_t nb = p.t.nbytes();
    if (max_shard_bytes > 0 && nb > 0 && !shards.back().empty() && cur + nb > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    cur += nb;
    total += nb;
    shards.back().push_back(std::move(p));
  }

  const fs::path folder(dir);
  if (shards.size() == 1) {
    write_file((folder / kSingleName).string(), shards[0], options.metadata);
    // A stale index from an earlier sharded save would take precedence when loading.
    fs::remove(folder / kIndexName, ec);
    return {kSingleName};
  }

  std::vector<std::string> written;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    write_file((folder / name).string(), shards[i], options.metadata);
    for (const auto& p : shards[i]) weight_map[p.name] = name;
    written.push_back(name);
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = std::move(weight_map);
  const std::string text = index.dump(2) + "\n";
  const std::string index_path = (folder / kIndexName).string();
  write_file_atomic(index_path, text);
  written.push_back(kIndexName);
  return written;
}

}  // namespace lathe::models
