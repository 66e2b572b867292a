// HDF5 C API wrappers for checkpoints; see hdf5_io.h for the on-disk conventions.
#include "train/hdf5_io.h"

#include <hdf5.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "core/fs.h"
#include "train/crc32c.h"

namespace lathe::train {
namespace {

static_assert(sizeof(hid_t) == sizeof(int64_t), "H5Handle stores hid_t as int64_t");

// HDF5 prints its whole error stack to stderr by default; we throw instead. In a
// thread-safe build the setting is per thread, so every entry point calls this.
void quiet_hdf5() {
  static thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

herr_t innermost_error(unsigned n, const H5E_error2_t* err, void* out) {
  if (n == 0 && err && err->desc) *static_cast<std::string*>(out) = err->desc;
  return 0;
}

// The innermost message of HDF5's error stack for the last failed call (e.g.
// "truncated file: eof = ..."), then clears the stack.
std::string h5_detail() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &msg);
  H5Eclear2(H5E_DEFAULT);
  // The POSIX driver's message is "file write failed: time = <ctime with a newline>,
  // filename = ..., errno = 28, error message = 'No space left on device', buf = ...":
  // keep what failed and the system's reason.
  const size_t t = msg.find(": time = ");
  const size_t em = msg.find("error message = '");
  if (t != std::string::npos && em != std::string::npos) {
    const size_t from = em + 17, to = msg.find('\'', from);
    msg = msg.substr(0, t) + ": " + msg.substr(from, to == std::string::npos ? std::string::npos : to - from);
  }
  return msg.empty() ? std::string() : " (hdf5: " + msg + ")";
}

std::string where(const std::string& file, const std::string& name) {
  return "HDF5 file '" + file + "', object '" + name + "'";
}

// Strips a leading '/', so "" is the root group.
std::string rel(const std::string& name) {
  size_t i = 0;
  while (i < name.size() && name[i] == '/') ++i;
  return name.substr(i);
}

const char* loc_name(const std::string& r) { return r.empty() ? "/" : r.c_str(); }

// IEEE 754 binary16: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9.
// HDF5 1.10 has no predefined half type, so build it from the 32-bit one.
H5Handle make_f16_type() {
  H5Handle t(H5Tcopy(H5T_IEEE_F32LE));
  LATHE_REQUIRE(t.valid()) << "HDF5: cannot create the f16 type" << h5_detail();
  bool ok = H5Tset_fields(t.get(), 15, 10, 5, 0, 10) >= 0 && H5Tset_size(t.get(), 2) >= 0 &&
            H5Tset_precision(t.get(), 16) >= 0 && H5Tset_ebias(t.get(), 15) >= 0;
  LATHE_REQUIRE(ok) << "HDF5: cannot create the f16 type" << h5_detail();
  return t;
}

// Memory type used both to write and read a dtype (bf16 travels as its uint16 bits).
H5Handle mem_type(DType dt) {
  hid_t base = -1;
  switch (dt) {
    case DType::f64: base = H5T_NATIVE_DOUBLE; break;
    case DType::f32: base = H5T_NATIVE_FLOAT; break;
    case DType::f16: return make_f16_type();
    case DType::bf16: base = H5T_NATIVE_UINT16; break;
    case DType::i64: base = H5T_NATIVE_INT64; break;
    case DType::i32: base = H5T_NATIVE_INT32; break;
    case DType::u8: base = H5T_NATIVE_UINT8; break;
    case DType::i8: base = H5T_NATIVE_INT8; break;
  }
  return H5Handle(H5Tcopy(base));
}

// Strings are written fixed-length (NUL-terminated UTF-8 of exactly their size): a
// variable-length string lives in HDF5's global heap, which has no checksum, and a damaged
// heap makes H5Aread/H5Dread crash. Fixed-length bytes sit in the (checksummed) object
// header or in the dataset's data (checked by crc32c). Older files' variable-length strings
// are still read.
H5Handle string_type(const std::string& value) {
  H5Handle t(H5Tcopy(H5T_C_S1));
  H5Tset_size(t.get(), value.size() + 1);
  H5Tset_strpad(t.get(), H5T_STR_NULLTERM);
  H5Tset_cset(t.get(), H5T_CSET_UTF8);
  return t;
}

void reclaim_vlen(hid_t type, hid_t space, void* buf) {
#if H5_VERSION_GE(1, 12, 0)
  H5Treclaim(type, space, H5P_DEFAULT, buf);
#else
  H5Dvlen_reclaim(type, space, H5P_DEFAULT, buf);
#endif
}

// True when every component of `r` exists as a link (H5Lexists needs the parents).
bool path_exists(hid_t file, const std::string& r) {
  if (r.empty()) return true;
  size_t pos = 0;
  while (true) {
    size_t slash = r.find('/', pos);
    std::string prefix = r.substr(0, slash);
    if (!prefix.empty() && prefix.back() != '/') {
      htri_t e = H5Lexists(file, prefix.c_str(), H5P_DEFAULT);
      if (e <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
    }
    if (slash == std::string::npos) break;
    pos = slash + 1;
  }
  htri_t ok = H5Oexists_by_name(file, r.c_str(), H5P_DEFAULT);
  H5Eclear2(H5E_DEFAULT);
  return ok > 0;
}

H5I_type_t object_type(hid_t file, const std::string& r) {
  if (!path_exists(file, r)) return H5I_BADID;
  H5Handle o(H5Oopen(file, loc_name(r), H5P_DEFAULT));
  if (!o.valid()) {
    H5Eclear2(H5E_DEFAULT);
    return H5I_BADID;
  }
  return H5Iget_type(o.get());
}

std::string read_string_value(hid_t obj, bool is_attr, const std::string& file, const std::string& name) {
  H5Handle type(is_attr ? H5Aget_type(obj) : H5Dget_type(obj));
  H5Handle space(is_attr ? H5Aget_space(obj) : H5Dget_space(obj));
  LATHE_REQUIRE(type.valid() && space.valid()) << where(file, name) << ": cannot read its type" << h5_detail();
  LATHE_REQUIRE(H5Tget_class(type.get()) == H5T_STRING) << where(file, name) << ": expected a string";
  LATHE_REQUIRE(H5Sget_simple_extent_npoints(space.get()) == 1)
      << where(file, name) << ": expected a single string, found " << H5Sget_simple_extent_npoints(space.get())
      << " elements";
  if (H5Tis_variable_str(type.get()) > 0) {
    H5Handle mt(H5Tcopy(H5T_C_S1));
    H5Tset_size(mt.get(), H5T_VARIABLE);
    H5Tset_cset(mt.get(), H5Tget_cset(type.get()));
    char* buf = nullptr;
    herr_t st = is_attr ? H5Aread(obj, mt.get(), &buf) : H5Dread(obj, mt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &buf);
    LATHE_REQUIRE(st >= 0) << where(file, name) << ": cannot read the string" << h5_detail();
    std::string out = buf ? std::string(buf) : std::string();
    reclaim_vlen(mt.get(), space.get(), &buf);
    return out;
  }
  size_t n = H5Tget_size(type.get());
  LATHE_REQUIRE(n > 0 && n <= (size_t{1} << 30))
      << where(file, name) << ": implausible string size " << n << " (corrupt file?)";
  H5Handle mt(H5Tcopy(H5T_C_S1));
  H5Tset_size(mt.get(), n);
  H5Tset_cset(mt.get(), H5Tget_cset(type.get()));
  std::string buf(n, '\0');
  herr_t st = is_attr ? H5Aread(obj, mt.get(), &buf[0]) : H5Dread(obj, mt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &buf[0]);
  LATHE_REQUIRE(st >= 0) << where(file, name) << ": cannot read the string" << h5_detail();
  return std::string(buf.c_str());  // fixed-length strings are NUL-padded
}

}  // namespace

// ---- H5Handle ----------------------------------------------------------------

H5Handle& H5Handle::operator=(H5Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    o.id_ = -1;
  }
  return *this;
}

void H5Handle::reset() {
  if (id_ < 0) return;
  hid_t id = id_;
  id_ = -1;
  switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    default: break;
  }
}

// ---- H5Writer ----------------------------------------------------------------

namespace {

uint32_t crc_of(const void* data, size_t n) { return n == 0 ? 0u : crc32c(data, n); }

// Property lists of a new file: the sec2 (POSIX) driver, whose descriptor abandon() swaps,
// and the 1.8 object format, whose headers and superblock carry metadata checksums.
H5Handle writer_fapl() {
  H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  if (fapl.valid()) {
    H5Pset_fapl_sec2(fapl.get());
    H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18);
  }
  return fapl;
}

}  // namespace

namespace {
std::atomic<bool> g_full_disk_for_testing{false};
}  // namespace

void h5writer_full_disk_for_testing(bool on) { g_full_disk_for_testing = on; }

H5Writer::H5Writer(const std::string& path) : path_(path) {
  quiet_hdf5();
  H5Handle fapl = writer_fapl();
  file_ = H5Handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.valid() ? fapl.get() : H5P_DEFAULT));
  if (!file_.valid()) {
    const std::string detail = h5_detail();
    throw IoError("hdf5", "cannot create HDF5 file '" + path + "'" + detail);
  }
  if (g_full_disk_for_testing) {
    void* handle = nullptr;
    int full = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
    if (full >= 0 && H5Fget_vfd_handle(file_.get(), H5P_DEFAULT, &handle) >= 0 && handle)
      ::dup2(full, *static_cast<int*>(handle));
    if (full >= 0) ::close(full);
  }
}

H5Writer::~H5Writer() {
  if (!file_.valid()) return;
  quiet_hdf5();
  // Never H5Fclose a file whose flush fails: flush first, abandon on failure.
  if (!failed_ && H5Fflush(file_.get(), H5F_SCOPE_LOCAL) < 0) abandon();
  H5Eclear2(H5E_DEFAULT);
  if (failed_) {
    close_abandoned();
  } else {
    H5Fclose(static_cast<hid_t>(file_.release()));
    H5Eclear2(H5E_DEFAULT);
  }
}

void H5Writer::abandon() {
  if (failed_) return;
  failed_ = true;
  if (!file_.valid()) return;
  void* handle = nullptr;
  int fd = -1;
  if (H5Fget_vfd_handle(file_.get(), H5P_DEFAULT, &handle) >= 0 && handle) fd = *static_cast<int*>(handle);
  H5Eclear2(H5E_DEFAULT);
  // The rest of HDF5's writes (metadata flushed by the closes) land in this scratch file,
  // sparse and in memory, and succeed whatever the state of the disk.
  int scratch = ::memfd_create("lathe-abandoned-h5", MFD_CLOEXEC);
  if (fd >= 0 && scratch >= 0 && ::dup2(scratch, fd) >= 0) {
    ::close(scratch);
    return;
  }
  if (scratch >= 0) ::close(scratch);
  // No memfd: free the file's blocks instead, so that the closing metadata writes fit on a
  // full disk.
  if (::truncate(path_.c_str(), 0) != 0) {
  }
}

void H5Writer::close_abandoned() {
  if (file_.valid()) H5Fclose(static_cast<hid_t>(file_.release()));
  H5Eclear2(H5E_DEFAULT);
  ::unlink(path_.c_str());
}

void H5Writer::fail(const std::string& what) {
  const std::string detail = h5_detail();  // before abandon() clears the stack
  abandon();
  throw IoError("hdf5", what + detail);
}

void H5Writer::check_open(const std::string& name) const {
  LATHE_REQUIRE(file_.valid()) << where(path_, name) << ": the writer is closed";
  if (failed_)
    throw IoError("hdf5", where(path_, name) + ": an earlier write to this file failed; the file is being discarded");
}

void H5Writer::close() {
  quiet_hdf5();
  if (!file_.valid()) return;
  if (failed_) {
    close_abandoned();
    throw IoError("hdf5", "HDF5 file '" + path_ + "': an earlier write failed; the incomplete file was removed");
  }
  if (H5Fflush(file_.get(), H5F_SCOPE_LOCAL) < 0) {
    const std::string detail = h5_detail();
    abandon();
    close_abandoned();
    throw IoError("hdf5", "cannot flush HDF5 file '" + path_ + "'" + detail + "; the incomplete file was removed");
  }
  if (H5Fclose(static_cast<hid_t>(file_.release())) < 0) {
    const std::string detail = h5_detail();
    ::unlink(path_.c_str());
    throw IoError("hdf5", "cannot close HDF5 file '" + path_ + "'" + detail + "; the incomplete file was removed");
  }
}

void H5Writer::create_group(const std::string& name) {
  quiet_hdf5();
  check_open(name);
  std::string r = rel(name);
  if (r.empty()) return;
  H5I_type_t t = object_type(file_.get(), r);
  if (t == H5I_GROUP) return;
  LATHE_REQUIRE(t == H5I_BADID) << where(path_, name) << ": exists and is not a group";
  H5Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Handle g(H5Gcreate2(file_.get(), r.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!g.valid()) fail(where(path_, name) + ": cannot create the group");
  if (H5Gclose(static_cast<hid_t>(g.release())) < 0) fail(where(path_, name) + ": cannot write the group");
}

void H5Writer::write_tensor(const std::string& name, const Tensor& t) {
  quiet_hdf5();
  check_open(name);
  LATHE_REQUIRE(t.defined()) << where(path_, name) << ": cannot write an undefined tensor";
  std::string r = rel(name);
  LATHE_REQUIRE(!r.empty() && r.back() != '/') << where(path_, name) << ": a dataset needs a name";
  LATHE_REQUIRE(!path_exists(file_.get(), r)) << where(path_, name) << ": already exists";

  Tensor c = t.to(Device::cpu()).contiguous();
  std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
  H5Handle space(c.dim() == 0 ? H5Screate(H5S_SCALAR)
                              : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  if (!space.valid()) fail(where(path_, name) + ": cannot make a dataspace for shape " + c.shape_str());
  H5Handle type = mem_type(c.dtype());
  H5Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Handle dset(H5Dcreate2(file_.get(), r.c_str(), type.get(), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!dset.valid())
    fail(where(path_, name) + ": cannot create the dataset (" + dtype_name(c.dtype()) + " " + c.shape_str() + ")");
  if (c.numel() > 0 && H5Dwrite(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw_data()) < 0)
    fail(where(path_, name) + ": cannot write " + std::to_string(c.nbytes()) + " bytes");
  // The bytes as they lie in memory are the little-endian element bytes on every platform
  // lathe builds for (x86-64, aarch64).
  const int64_t crc = crc_of(c.raw_data(), c.nbytes());
  write_attr(dset.get(), r, "crc32c", H5T_NATIVE_INT64, &crc);
  if (c.dtype() == DType::bf16) {
    H5Handle st = string_type("bf16");
    write_attr(dset.get(), r, "dtype", st.get(), "bf16");
  }
  // Closing writes what HDF5 still buffers: a full disk often shows only here.
  if (H5Dclose(static_cast<hid_t>(dset.release())) < 0)
    fail(where(path_, name) + ": cannot write " + std::to_string(c.nbytes()) + " bytes");
}

void H5Writer::write_string(const std::string& name, const std::string& value) {
  quiet_hdf5();
  check_open(name);
  std::string r = rel(name);
  LATHE_REQUIRE(!r.empty()) << where(path_, name) << ": a dataset needs a name";
  LATHE_REQUIRE(!path_exists(file_.get(), r)) << where(path_, name) << ": already exists";
  LATHE_REQUIRE(value.find('\0') == std::string::npos)
      << where(path_, name) << ": strings with NUL bytes are not supported";
  H5Handle type = string_type(value);
  H5Handle space(H5Screate(H5S_SCALAR));
  H5Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Handle dset(H5Dcreate2(file_.get(), r.c_str(), type.get(), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!dset.valid()) fail(where(path_, name) + ": cannot create the string dataset");
  if (H5Dwrite(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, value.c_str()) < 0)
    fail(where(path_, name) + ": cannot write the string");
  const int64_t crc = crc_of(value.data(), value.size());
  write_attr(dset.get(), r, "crc32c", H5T_NATIVE_INT64, &crc);
  if (H5Dclose(static_cast<hid_t>(dset.release())) < 0) fail(where(path_, name) + ": cannot write the string");
}

void H5Writer::write_attr(int64_t obj_id, const std::string& object, const std::string& key, int64_t type_id,
                          const void* buf) {
  const hid_t obj = static_cast<hid_t>(obj_id);
  const hid_t type = static_cast<hid_t>(type_id);
  htri_t exists = H5Aexists(obj, key.c_str());
  if (exists < 0) fail(where(path_, object) + ": cannot look up attribute '" + key + "'");
  if (exists > 0 && H5Adelete(obj, key.c_str()) < 0)
    fail(where(path_, object) + ": cannot replace attribute '" + key + "'");
  H5Handle space(H5Screate(H5S_SCALAR));
  H5Handle a(H5Acreate2(obj, key.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!a.valid()) fail(where(path_, object) + ": cannot create attribute '" + key + "'");
  if (H5Awrite(a.get(), type, buf) < 0) fail(where(path_, object) + ": cannot write attribute '" + key + "'");
  if (H5Aclose(static_cast<hid_t>(a.release())) < 0)
    fail(where(path_, object) + ": cannot write attribute '" + key + "'");
}

void H5Writer::set_attr_by_name(const std::string& object, const std::string& key, int64_t type, const void* buf) {
  check_open(object);
  std::string r = rel(object);
  LATHE_REQUIRE(path_exists(file_.get(), r)) << where(path_, object) << ": cannot set attribute '" << key
                                             << "': no such object";
  H5Handle o(H5Oopen(file_.get(), loc_name(r), H5P_DEFAULT));
  if (!o.valid()) fail(where(path_, object) + ": cannot open it to set attribute '" + key + "'");
  write_attr(o.get(), object, key, type, buf);
}

void H5Writer::set_attr(const std::string& object, const std::string& key, const std::string& value) {
  quiet_hdf5();
  LATHE_REQUIRE(value.find('\0') == std::string::npos)
      << where(path_, object) << ": attribute '" << key << "': strings with NUL bytes are not supported";
  H5Handle type = string_type(value);
  set_attr_by_name(object, key, type.get(), value.c_str());
}

void H5Writer::set_attr(const std::string& object, const std::string& key, int64_t value) {
  quiet_hdf5();
  set_attr_by_name(object, key, H5T_NATIVE_INT64, &value);
}

void H5Writer::set_attr(const std::string& object, const std::string& key, double value) {
  quiet_hdf5();
  set_attr_by_name(object, key, H5T_NATIVE_DOUBLE, &value);
}

// ---- H5Reader ----------------------------------------------------------------

H5Reader::H5Reader(const std::string& path) : path_(path) {
  quiet_hdf5();
  htri_t is_h5 = H5Fis_hdf5(path.c_str());
  if (is_h5 <= 0) {
    std::string detail = h5_detail();
    FILE* f = std::fopen(path.c_str(), "rb");
    bool exists = f != nullptr;
    if (f) std::fclose(f);
    LATHE_REQUIRE(exists) << "cannot open HDF5 file '" << path << "': no such file or not readable";
    LATHE_FAIL() << "cannot open HDF5 file '" << path << "': not an HDF5 file (corrupt or truncated?)" << detail;
  }
  file_ = H5Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  LATHE_REQUIRE(file_.valid()) << "cannot open HDF5 file '" << path << "' (corrupt or truncated?)" << h5_detail();
}

bool H5Reader::exists(const std::string& name) const {
  quiet_hdf5();
  return path_exists(file_.get(), rel(name));
}

bool H5Reader::is_group(const std::string& name) const {
  quiet_hdf5();
  return object_type(file_.get(), rel(name)) == H5I_GROUP;
}

bool H5Reader::is_dataset(const std::string& name) const {
  quiet_hdf5();
  return object_type(file_.get(), rel(name)) == H5I_DATASET;
}

namespace {

struct ListCtx {
  std::vector<std::string>* names;
};

herr_t collect_link(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<ListCtx*>(data)->names->push_back(name);
  return 0;
}

std::vector<std::string> children(hid_t file, const std::string& fpath, const std::string& group) {
  std::string r = rel(group);
  LATHE_REQUIRE(object_type(file, r) == H5I_GROUP) << where(fpath, group) << ": no such group";
  H5Handle g(H5Gopen2(file, loc_name(r), H5P_DEFAULT));
  LATHE_REQUIRE(g.valid()) << where(fpath, group) << ": cannot open the group" << h5_detail();
  std::vector<std::string> names;
  ListCtx ctx{&names};
  hsize_t idx = 0;
  herr_t st = H5Literate(g.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect_link, &ctx);
  LATHE_REQUIRE(st >= 0) << where(fpath, group) << ": cannot list the group" << h5_detail();
  return names;
}

void walk_datasets(hid_t file, const std::string& fpath, const std::string& group, const std::string& prefix,
                   std::vector<std::string>& out) {
  for (const std::string& n : children(file, fpath, group)) {
    std::string full = rel(group).empty() ? n : rel(group) + "/" + n;
    H5I_type_t t = object_type(file, full);
    if (t == H5I_GROUP) {
      walk_datasets(file, fpath, full, prefix + n + "/", out);
    } else if (t == H5I_DATASET) {
      out.push_back(prefix + n);
    }
  }
}

}  // namespace

std::vector<std::string> H5Reader::list(const std::string& group) const {
  quiet_hdf5();
  return children(file_.get(), path_, group);
}

std::vector<std::string> H5Reader::list_datasets(const std::string& group) const {
  quiet_hdf5();
  std::vector<std::string> out;
  walk_datasets(file_.get(), path_, group, "", out);
  return out;
}

namespace {

H5Handle open_dataset(hid_t file, const std::string& fpath, const std::string& name) {
  std::string r = rel(name);
  H5I_type_t t = object_type(file, r);
  LATHE_REQUIRE(t != H5I_BADID) << where(fpath, name) << ": no such dataset";
  LATHE_REQUIRE(t == H5I_DATASET) << where(fpath, name) << ": is a group, not a dataset";
  H5Handle d(H5Dopen2(file, r.c_str(), H5P_DEFAULT));
  LATHE_REQUIRE(d.valid()) << where(fpath, name) << ": cannot open the dataset" << h5_detail();
  return d;
}

DType classify(hid_t dset, const std::string& fpath, const std::string& name) {
  H5Handle type(H5Dget_type(dset));
  LATHE_REQUIRE(type.valid()) << where(fpath, name) << ": cannot read its type" << h5_detail();
  H5T_class_t cls = H5Tget_class(type.get());
  size_t size = H5Tget_size(type.get());
  if (cls == H5T_FLOAT) {
    if (size == 8) return DType::f64;
    if (size == 4) return DType::f32;
    if (size == 2) return DType::f16;
  } else if (cls == H5T_INTEGER) {
    bool is_signed = H5Tget_sign(type.get()) == H5T_SGN_2;
    if (size == 8 && is_signed) return DType::i64;
    if (size == 4 && is_signed) return DType::i32;
    if (size == 1) return is_signed ? DType::i8 : DType::u8;
    if (size == 2 && !is_signed && H5Aexists(dset, "dtype") > 0) {
      H5Handle a(H5Aopen(dset, "dtype", H5P_DEFAULT));
      if (a.valid() && read_string_value(a.get(), true, fpath, name + "@dtype") == "bf16") return DType::bf16;
    }
    LATHE_FAIL() << where(fpath, name) << ": unsupported integer type (" << size << " bytes, "
                 << (is_signed ? "signed" : "unsigned") << "); lathe reads i64, i32, u8, i8 and bf16 "
                 << "(uint16 with attribute dtype=\"bf16\")";
  }
  LATHE_FAIL() << where(fpath, name) << ": unsupported HDF5 type class " << static_cast<int>(cls) << " of "
               << size << " bytes; lathe reads f64, f32, f16, bf16, i64, i32, u8, i8";
  return DType::f32;  // unreachable
}

Shape dataset_shape(hid_t dset, const std::string& fpath, const std::string& name) {
  H5Handle space(H5Dget_space(dset));
  LATHE_REQUIRE(space.valid()) << where(fpath, name) << ": cannot read its dataspace" << h5_detail();
  H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  if (cls == H5S_SCALAR) return {};
  LATHE_REQUIRE(cls == H5S_SIMPLE) << where(fpath, name) << ": has a null dataspace (no shape)";
  int rank = H5Sget_simple_extent_ndims(space.get());
  LATHE_REQUIRE(rank >= 0) << where(fpath, name) << ": cannot read its rank" << h5_detail();
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

// Compares the CRC-32C of `n` bytes read from a dataset with its crc32c attribute; a
// dataset without one (an older file) is not checked.
void verify_checksum(hid_t dset, const std::string& fpath, const std::string& name, const void* data, size_t n) {
  htri_t has = H5Aexists(dset, "crc32c");
  H5Eclear2(H5E_DEFAULT);
  if (has <= 0) return;
  H5Handle a(H5Aopen(dset, "crc32c", H5P_DEFAULT));
  int64_t stored = -1;
  LATHE_REQUIRE(a.valid() && H5Aread(a.get(), H5T_NATIVE_INT64, &stored) >= 0)
      << where(fpath, name) << ": cannot read its checksum attribute crc32c (corrupt file?)" << h5_detail();
  const uint32_t got = n == 0 ? 0u : crc32c(data, n);
  if (stored != static_cast<int64_t>(got)) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "stored crc32c 0x%08llx, computed 0x%08x", static_cast<unsigned long long>(stored),
                  got);
    LATHE_FAIL() << where(fpath, name) << ": checksum mismatch (" << buf
                 << "): the data is corrupt (a damaged disk or copy); use another checkpoint or a good copy";
  }
}

}  // namespace

bool H5Reader::has_checksum(const std::string& name) const {
  quiet_hdf5();
  H5Handle d = open_dataset(file_.get(), path_, name);
  htri_t has = H5Aexists(d.get(), "crc32c");
  H5Eclear2(H5E_DEFAULT);
  return has > 0;
}

DType H5Reader::dtype(const std::string& name) const {
  quiet_hdf5();
  H5Handle d = open_dataset(file_.get(), path_, name);
  return classify(d.get(), path_, name);
}

Shape H5Reader::shape(const std::string& name) const {
  quiet_hdf5();
  H5Handle d = open_dataset(file_.get(), path_, name);
  return dataset_shape(d.get(), path_, name);
}

Tensor H5Reader::read_tensor(const std::string& name, std::optional<DType> expect_dtype,
                             const std::optional<Shape>& expect_shape) const {
  quiet_hdf5();
  H5Handle d = open_dataset(file_.get(), path_, name);
  DType dt = classify(d.get(), path_, name);
  Shape shape = dataset_shape(d.get(), path_, name);
  LATHE_REQUIRE(!expect_dtype || *expect_dtype == dt)
      << where(path_, name) << ": expected dtype " << dtype_name(*expect_dtype) << ", found " << dtype_name(dt);
  LATHE_REQUIRE(!expect_shape || *expect_shape == shape)
      << where(path_, name) << ": expected shape " << shape_str(*expect_shape) << ", found " << shape_str(shape);
  Tensor out = Tensor::empty(shape, dt);
  if (out.numel() > 0) {
    H5Handle type = mem_type(dt);
    herr_t st = H5Dread(d.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.raw_data());
    LATHE_REQUIRE(st >= 0) << where(path_, name) << ": cannot read " << dtype_name(dt) << " " << shape_str(shape)
                         << " (corrupt or truncated file?)" << h5_detail();
  }
  verify_checksum(d.get(), path_, name, out.raw_data(), out.nbytes());
  return out;
}

void H5Reader::read_into(const std::string& name, const Tensor& dst) const {
  LATHE_REQUIRE(dst.defined()) << where(path_, name) << ": read_into an undefined tensor";
  Tensor t = read_tensor(name, dst.dtype(), dst.shape());
  dst.copy_(t);
}

std::string H5Reader::read_string(const std::string& name) const {
  quiet_hdf5();
  H5Handle d = open_dataset(file_.get(), path_, name);
  std::string v = read_string_value(d.get(), false, path_, name);
  verify_checksum(d.get(), path_, name, v.data(), v.size());
  return v;
}

namespace {

H5Handle open_attr(hid_t file, const std::string& fpath, const std::string& object, const std::string& key) {
  std::string r = rel(object);
  LATHE_REQUIRE(path_exists(file, r)) << where(fpath, object) << ": no such object (reading attribute '" << key
                                    << "')";
  const char* obj = loc_name(r);
  LATHE_REQUIRE(H5Aexists_by_name(file, obj, key.c_str(), H5P_DEFAULT) > 0)
      << where(fpath, object) << ": no attribute '" << key << "'";
  H5Handle a(H5Aopen_by_name(file, obj, key.c_str(), H5P_DEFAULT, H5P_DEFAULT));
  LATHE_REQUIRE(a.valid()) << where(fpath, object) << ": cannot open attribute '" << key << "'" << h5_detail();
  return a;
}

template <typename T>
T read_numeric_attr(hid_t file, const std::string& fpath, const std::string& object, const std::string& key,
                    hid_t memtype, bool allow_float) {
  H5Handle a = open_attr(file, fpath, object, key);
  H5Handle type(H5Aget_type(a.get()));
  H5Handle space(H5Aget_space(a.get()));
  H5T_class_t cls = H5Tget_class(type.get());
  LATHE_REQUIRE(cls == H5T_INTEGER || (allow_float && cls == H5T_FLOAT))
      << where(fpath, object) << ": attribute '" << key << "' is not " << (allow_float ? "a number" : "an integer");
  LATHE_REQUIRE(H5Sget_simple_extent_npoints(space.get()) == 1)
      << where(fpath, object) << ": attribute '" << key << "' is not a scalar";
  T v{};
  LATHE_REQUIRE(H5Aread(a.get(), memtype, &v) >= 0)
      << where(fpath, object) << ": cannot read attribute '" << key << "'" << h5_detail();
  return v;
}

}  // namespace

bool H5Reader::has_attr(const std::string& object, const std::string& key) const {
  quiet_hdf5();
  std::string r = rel(object);
  if (!path_exists(file_.get(), r)) return false;
  htri_t e = H5Aexists_by_name(file_.get(), loc_name(r), key.c_str(), H5P_DEFAULT);
  H5Eclear2(H5E_DEFAULT);
  return e > 0;
}

std::string H5Reader::attr_string(const std::string& object, const std::string& key) const {
  quiet_hdf5();
  H5Handle a = open_attr(file_.get(), path_, object, key);
  return read_string_value(a.get(), true, path_, object + "@" + key);
}

int64_t H5Reader::attr_int(const std::string& object, const std::string& key) const {
  quiet_hdf5();
  return read_numeric_attr<int64_t>(file_.get(), path_, object, key, H5T_NATIVE_INT64, false);
}

double H5Reader::attr_double(const std::string& object, const std::string& key) const {
  quiet_hdf5();
  return read_numeric_attr<double>(file_.get(), path_, object, key, H5T_NATIVE_DOUBLE, true);
}

}  // namespace lathe::train
