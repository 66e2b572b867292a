// Line-by-line reading of JSONL (and any text) files with line numbers, for error messages
// of the form "file:line: ...". Buffered, so files larger than memory stream through.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace lathe::data {

class LineReader {
 public:
  // Throws naming the path when it cannot be opened.
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its "\n" (and without a "\r" before it); false at the end of the
  // file. A last line without a newline is still returned.
  bool next(std::string& line);
  // 1-based number of the line last returned by next().
  int64_t line_number() const { return line_; }
  // Bytes consumed so far (for progress).
  int64_t bytes_read() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  char* buf_ = nullptr;  // getline's buffer, reused across lines
  size_t cap_ = 0;
  int64_t line_ = 0;
  int64_t bytes_ = 0;
};

// Whether a line holds only spaces, tabs and "\r" (such lines in a JSONL file are skipped).
bool is_blank_line(const std::string& line);

}  // namespace lathe::data
