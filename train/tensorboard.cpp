// TensorBoard event files: TFRecord framing + hand-written protobuf wire format.
#include "train/tensorboard.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "train/crc32c.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

// ---- protobuf wire format: keys are (field << 3) | wire type ---------------------
enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, uint32_t field, Wire w) { put_varint(out, (static_cast<uint64_t>(field) << 3) | w); }
void put_le(std::string& out, uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_bytes(std::string& out, uint32_t field, const std::string& s) {
  put_key(out, field, kBytes);
  put_varint(out, s.size());
  out += s;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// Cursor over a protobuf message; every read checks bounds and names what it read.
struct PbReader {
  const unsigned char* p;
  const unsigned char* end;
  const char* what;

  bool done() const { return p >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      LATHE_REQUIRE(p < end) << what << ": truncated varint";
      unsigned char b = *p++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    LATHE_FAIL() << what << ": varint longer than 10 bytes";
    return 0;
  }
  uint64_t fixed(int nbytes) {
    LATHE_REQUIRE(end - p >= nbytes) << what << ": truncated fixed" << nbytes * 8 << " field";
    uint64_t v = 0;
    for (int i = 0; i < nbytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
    p += nbytes;
    return v;
  }
  std::string bytes() {
    uint64_t n = varint();
    LATHE_REQUIRE(static_cast<uint64_t>(end - p) >= n) << what << ": length-delimited field of " << n
                                                     << " bytes overruns the message";
    std::string s(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
    p += n;
    return s;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case kVarint: varint(); break;
      case kFixed64: fixed(8); break;
      case kBytes: bytes(); break;
      case kFixed32: fixed(4); break;
      default: LATHE_FAIL() << what << ": unsupported wire type " << wire;
    }
  }
};

PbReader reader_of(const std::string& s, const char* what) {
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  return PbReader{b, b + s.size(), what};
}

std::pair<std::string, float> decode_value(const std::string& data) {
  PbReader r = reader_of(data, "tensorflow.Summary.Value");
  std::pair<std::string, float> v{"", 0.0f};
  while (!r.done()) {
    uint64_t key = r.varint();
    uint32_t field = static_cast<uint32_t>(key >> 3), wire = static_cast<uint32_t>(key & 7);
    if (field == 1 && wire == kBytes) {
      v.first = r.bytes();
    } else if (field == 2 && wire == kFixed32) {
      uint32_t bits = static_cast<uint32_t>(r.fixed(4));
      std::memcpy(&v.second, &bits, 4);
    } else {
      r.skip(wire);
    }
  }
  return v;
}

uint64_t load_le(const unsigned char* p, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

std::string encode_tb_event(double wall_time, int64_t step, const std::string& file_version,
                            const std::vector<std::pair<std::string, float>>& scalars) {
  std::string ev;
  uint64_t wt;
  std::memcpy(&wt, &wall_time, 8);
  put_key(ev, 1, kFixed64);
  put_le(ev, wt, 8);
  put_key(ev, 2, kVarint);
  put_varint(ev, static_cast<uint64_t>(step));  // int64: two's complement, as protobuf does
  if (!file_version.empty()) put_bytes(ev, 3, file_version);
  if (!scalars.empty()) {
    std::string summary;
    for (const auto& [tag, value] : scalars) {
      std::string v;
      put_bytes(v, 1, tag);
      uint32_t bits;
      std::memcpy(&bits, &value, 4);
      put_key(v, 2, kFixed32);
      put_le(v, bits, 4);
      put_bytes(summary, 1, v);
    }
    put_bytes(ev, 5, summary);
  }
  return ev;
}

std::string encode_tfrecord(const std::string& data) {
  std::string rec;
  std::string len;
  put_le(len, data.size(), 8);
  rec += len;
  put_le(rec, crc32c_mask(crc32c(len)), 4);
  rec += data;
  put_le(rec, crc32c_mask(crc32c(data)), 4);
  return rec;
}

TbEvent decode_tb_event(const std::string& data) {
  PbReader r = reader_of(data, "tensorflow.Event");
  TbEvent ev;
  while (!r.done()) {
    uint64_t key = r.varint();
    uint32_t field = static_cast<uint32_t>(key >> 3), wire = static_cast<uint32_t>(key & 7);
    if (field == 1 && wire == kFixed64) {
      uint64_t bits = r.fixed(8);
      std::memcpy(&ev.wall_time, &bits, 8);
    } else if (field == 2 && wire == kVarint) {
      ev.step = static_cast<int64_t>(r.varint());
    } else if (field == 3 && wire == kBytes) {
      ev.file_version = r.bytes();
    } else if (field == 5 && wire == kBytes) {
      std::string summary = r.bytes();
      PbReader s = reader_of(summary, "tensorflow.Summary");
      while (!s.done()) {
        uint64_t k = s.varint();
        uint32_t f = static_cast<uint32_t>(k >> 3), w = static_cast<uint32_t>(k & 7);
        if (f == 1 && w == kBytes) {
          ev.scalars.push_back(decode_value(s.bytes()));
        } else {
          s.skip(w);
        }
      }
    } else {
      r.skip(wire);
    }
  }
  return ev;
}

std::vector<TbEvent> read_tb_events(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LATHE_REQUIRE(f.good()) << "tensorboard: cannot open event file '" << path << "'";
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string buf = ss.str();
  const auto* b = reinterpret_cast<const unsigned char*>(buf.data());
  std::vector<TbEvent> out;
  size_t pos = 0;
  for (size_t rec = 0; pos < buf.size(); ++rec) {
    auto where = [&]() {
      std::ostringstream w;
      w << "tensorboard: event file '" << path << "', record " << rec << " at byte " << pos;
      return w.str();
    };
    LATHE_REQUIRE(buf.size() - pos >= 12) << where() << ": truncated header (" << buf.size() - pos << " bytes left)";
    uint64_t len = load_le(b + pos, 8);
    uint32_t len_crc = static_cast<uint32_t>(load_le(b + pos + 8, 4));
    LATHE_REQUIRE(crc32c_mask(crc32c(b + pos, 8)) == len_crc) << where() << ": length CRC mismatch";
    LATHE_REQUIRE(len <= buf.size() - pos - 12 && buf.size() - pos - 12 - len >= 4)
        << where() << ": truncated record (length " << len << ", " << buf.size() - pos - 12 << " bytes left)";
    std::string data = buf.substr(pos + 12, static_cast<size_t>(len));
    uint32_t data_crc = static_cast<uint32_t>(load_le(b + pos + 12 + len, 4));
    LATHE_REQUIRE(crc32c_mask(crc32c(data)) == data_crc) << where() << ": data CRC mismatch";
    try {
      out.push_back(decode_tb_event(data));
    } catch (const Error& e) {
      LATHE_FAIL() << where() << ": " << e.message();
    }
    pos += 12 + static_cast<size_t>(len) + 4;
  }
  return out;
}

// ---- writer ----------------------------------------------------------------------

namespace {
// A failed write (a full disk) is an I/O error: exit code 3 in the CLI, not a crash of the run.
[[noreturn]] void io_fail(const std::string& msg) { throw IoError("tensorboard", msg); }
}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& logdir) {
  std::error_code ec;
  fs::create_directories(logdir, ec);
  if (ec) io_fail("cannot create log directory '" + logdir + "': " + ec.message());
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  std::string base = (fs::path(logdir) / ("events.out.tfevents." + std::to_string(static_cast<int64_t>(now_seconds())) +
                                          "." + host))
                         .string();
  for (int i = 0; i < 1000 && !f_; ++i) {
    path_ = i == 0 ? base : base + "." + std::to_string(i);
    f_ = std::fopen(path_.c_str(), "wbx");  // x: never reuse another writer's file
    if (!f_ && errno != EEXIST) break;
  }
  if (!f_) io_fail("cannot create event file '" + path_ + "': " + std::strerror(errno));
  write_record(encode_tb_event(now_seconds(), 0, "brain.Event:2", {}));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::write_record(const std::string& data) {
  LATHE_REQUIRE(f_) << "tensorboard: writing to closed event file '" << path_ << "'";
  std::string rec = encode_tfrecord(data);
  if (std::fwrite(rec.data(), 1, rec.size(), f_) != rec.size())
    io_fail("cannot write to '" + path_ + "': " + std::strerror(errno));
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value, double wall_time) {
  write_record(encode_tb_event(wall_time < 0 ? now_seconds() : wall_time, step, "",
                               {{tag, static_cast<float>(value)}}));
}

void TensorBoardWriter::add_scalars(int64_t step, const std::map<std::string, double>& values, double wall_time) {
  if (values.empty()) return;
  std::vector<std::pair<std::string, float>> v;
  for (const auto& [tag, x] : values) v.emplace_back(tag, static_cast<float>(x));
  write_record(encode_tb_event(wall_time < 0 ? now_seconds() : wall_time, step, "", v));
}

void TensorBoardWriter::flush() {
  if (!f_) return;
  if (std::fflush(f_) != 0) io_fail("cannot flush '" + path_ + "': " + std::strerror(errno));
}

void TensorBoardWriter::close() {
  if (!f_) return;
  std::FILE* f = f_;
  f_ = nullptr;
  if (std::fclose(f) != 0) io_fail("cannot close '" + path_ + "': " + std::strerror(errno));
}

}  // namespace lathe::train
