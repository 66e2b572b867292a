// TensorBoard scalar event files, written without TensorFlow or a .proto.
//
// A file `events.out.tfevents.<unix time>.<hostname>` is a sequence of TFRecords:
//   uint64 length (little-endian), uint32 masked_crc32c(length bytes),
//   data[length], uint32 masked_crc32c(data)
// where each data is a serialized tensorflow.Event, hand-encoded in the protobuf wire
// format (only the fields TensorBoard needs for scalars):
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first record carries file_version "brain.Event:2", as TensorBoard expects.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace lathe::train {

class TensorBoardWriter {
 public:
  // Creates `logdir` if needed and a new event file in it (a suffix .1, .2, ... is
  // added if a file of that name already exists).
  explicit TensorBoardWriter(const std::string& logdir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event holding the scalar; wall_time < 0 means now.
  void add_scalar(const std::string& tag, int64_t step, double value, double wall_time = -1);
  // One Event holding every (tag, value) pair.
  void add_scalars(int64_t step, const std::map<std::string, double>& values, double wall_time = -1);
  void flush();  // stdio flush (TensorBoard polls the file)
  void close();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* f_ = nullptr;
};

// ---- encoding pieces (exposed for tests and the reader) ------------------------
// Serialized tensorflow.Event. Empty `file_version` and empty `scalars` are omitted.
std::string encode_tb_event(double wall_time, int64_t step, const std::string& file_version,
                            const std::vector<std::pair<std::string, float>>& scalars);
// TFRecord framing of one record.
std::string encode_tfrecord(const std::string& data);

// ---- reader (tests, tools) ----------------------------------------------------------
struct TbEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::vector<std::pair<std::string, float>> scalars;  // (tag, simple_value)
};
// Parses every record of an event file, verifying both CRCs of each; throws lathe::Error
// naming the file, the record index and its byte offset on a truncated record, a CRC
// mismatch ("length CRC mismatch" / "data CRC mismatch") or a malformed Event.
std::vector<TbEvent> read_tb_events(const std::string& path);
// Decodes one serialized Event (throws on malformed input).
TbEvent decode_tb_event(const std::string& data);

}  // namespace lathe::train
