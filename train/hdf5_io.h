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
// Every failure throws lathe::Error naming the file and the object path; HDF5's own
// error stack printing is switched off and its innermost message is appended instead.
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
  ~H5Writer();  // closes; errors on this path are swallowed, call close() to see them
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

  // Flushes and closes the file; later calls are errors. Idempotent.
  void close();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  H5Handle file_;
};

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
