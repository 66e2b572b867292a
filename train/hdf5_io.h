// HDF5 reading and writing of tensors, strings and attributes (the checkpoint format).
//
// Names are HDF5 paths: slashes make groups (created on demand), dots are plain
// characters, so a parameter "layers.0.attn.q_proj.weight" written under "model/"
// reads back in h5py as f["model"]["layers.0.attn.q_proj.weight"].
//
// Dtypes on disk: f64/f32/i64/i32/u8/i8 as the matching native HDF5 types; f16 as a
// 2-byte IEEE half float type (h5py reads it as numpy float16); bf16 as uint16 bit
// patterns with the attribute dtype="bf16" (HDF5 has no bfloat16 type), so every dtype
// round-trips bit-exactly. 0-d tensors use a scalar dataspace, empty tensors a
// zero-sized one.
//
// Checksums: every dataset the writer makes carries the attribute crc32c (an int64 holding
// the CRC-32C of its little-endian element bytes, or of a string's UTF-8 bytes), checked by
// every read; a mismatch is an error naming the file and the dataset. Datasets without the
// attribute (files written before it existed, or by other tools) read unverified.
// Files use the HDF5 1.8 object format (readable by HDF5 >= 1.8, h5py, h5dump), whose
// object headers and superblock carry HDF5's own metadata checksums.
//
// Every failure throws lathe::Error naming the file and the object path; HDF5's own
// error stack printing is switched off and its innermost message is appended instead.
// A failed write (a full disk) throws lathe::IoError; the writer then closes every HDF5 id
// and deletes its file, because HDF5 cannot close a file whose flush failed (see abandon()).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lathe::train {

// Owns one HDF5 identifier (file, group, dataset, ...) and closes it on destruction.
class H5Handle {
 public:
  H5Handle() = default;
  explicit H5Handle(int64_t id) : id_(id) {}
  ~H5Handle() { reset(); }
  H5Handle(H5Handle&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  H5Handle& operator=(H5Handle&& o) noexcept;
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  int64_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  int64_t release() {  // gives up ownership without closing
    int64_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  int64_t id_ = -1;  // hid_t
};

class H5Writer {
 public:
  // Creates (or truncates) the file at `path`.
  explicit H5Writer(const std::string& path);
  // Closes the file if close() was not called; errors on this path are swallowed (call
  // close() to see them). A file whose writes or final flush failed is deleted.
  ~H5Writer();
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  // Writes `t` (any device, any strides: it is copied to a contiguous CPU tensor)
  // as the dataset `name`; intermediate groups are created. Fails if `name` exists.
  void write_tensor(const std::string& name, const Tensor& t);
  // A scalar UTF-8 string dataset (e.g. the resolved config).
  void write_string(const std::string& name, const std::string& value);
  // Creates the group `name` (and its parents) if missing.
  void create_group(const std::string& name);
  // Attributes on an existing object (group or dataset; "/" is the file's root group).
  // An existing attribute of the same name is replaced.
  void set_attr(const std::string& object, const std::string& key, const std::string& value);
  void set_attr(const std::string& object, const std::string& key, const char* value) {
    set_attr(object, key, std::string(value));
  }
  void set_attr(const std::string& object, const std::string& key, int64_t value);
  void set_attr(const std::string& object, const std::string& key, double value);

  // Flushes and closes the file; later calls are errors. Idempotent. When a write failed
  // earlier or the flush fails, the file is deleted and an IoError thrown.
  void close();
  const std::string& path() const { return path_; }
  // True once an HDF5 write has failed: the file is garbage and is deleted on close.
  bool failed() const { return failed_; }

 private:
  void check_open(const std::string& name) const;
  // Throws IoError(what + HDF5's message) after abandoning the file.
  [[noreturn]] void fail(const std::string& what);
  // After a failed write: points HDF5's descriptor at an in-memory scratch file, so that the
  // closes that follow cannot fail (a failed H5Fclose leaves a half-destroyed id that
  // crashes HDF5's exit-time cleanup).
  void abandon();
  // Closes an abandoned file and deletes it from disk.
  void close_abandoned();
  // Creates (replacing) a scalar attribute on an open object.
  void write_attr(int64_t obj, const std::string& object, const std::string& key, int64_t type, const void* buf);
  void set_attr_by_name(const std::string& object, const std::string& key, int64_t type, const void* buf);

  std::string path_;
  H5Handle file_;
  bool failed_ = false;
};

// Test hook: while on, every new H5Writer's descriptor is pointed at /dev/full right after
// the file is created, so its later writes fail with ENOSPC as on a disk that just filled.
void h5writer_full_disk_for_testing(bool on);

class H5Reader {
 public:
  // Opens an existing file read-only; throws naming the file when it is missing,
  // truncated or not HDF5.
  explicit H5Reader(const std::string& path);
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  bool exists(const std::string& name) const;  // any object at this path
  bool is_group(const std::string& name) const;
  bool is_dataset(const std::string& name) const;
  // Names of the direct children of a group (sorted by name).
  std::vector<std::string> list(const std::string& group = "/") const;
  // Paths of every dataset below a group, relative to it ("a/b.c"), sorted.
  std::vector<std::string> list_datasets(const std::string& group = "/") const;

  DType dtype(const std::string& name) const;
  Shape shape(const std::string& name) const;
  // Reads a dataset into a new contiguous CPU tensor. When expect_dtype/expect_shape are
  // given and differ from what is stored, throws naming file, path, expected and found.
  Tensor read_tensor(const std::string& name, std::optional<DType> expect_dtype = std::nullopt,
                     const std::optional<Shape>& expect_shape = std::nullopt) const;
  // Reads a dataset into `dst` (any device or strides), which must have exactly the
  // stored dtype and shape.
  void read_into(const std::string& name, const Tensor& dst) const;
  std::string read_string(const std::string& name) const;
  // Whether a dataset carries a crc32c attribute (reads of it are verified).
  bool has_checksum(const std::string& name) const;

  bool has_attr(const std::string& object, const std::string& key) const;
  std::string attr_string(const std::string& object, const std::string& key) const;
  int64_t attr_int(const std::string& object, const std::string& key) const;
  double attr_double(const std::string& object, const std::string& key) const;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  H5Handle file_;
};

}  // namespace lathe::train
