#include "configs/json_scan.h"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace lathe::configs::detail {

namespace {

struct SyntaxError {
  size_t at;
  std::string what;
};

class Scanner {
 public:
  explicit Scanner(const std::string& s) : s_(s) {
    // Line starts, indexed once: position() is then a binary search, so recording the
    // position of every key stays linear in the file (a rescan per key was quadratic).
    line_starts_.push_back(0);
    for (size_t k = 0; k < s_.size(); ++k)
      if (s_[k] == '\n') line_starts_.push_back(k + 1);
  }

  void document(std::vector<JsonKey>* keys) {
    keys_ = keys;
    skip_ws();
    value(0);
    skip_ws();
    if (i_ != s_.size()) throw SyntaxError{i_, "unexpected " + describe() + " after the top-level value"};
  }

  // 1-based line and byte column of offset `at`.
  void position(size_t at, int* line, int* col) const {
    if (at > s_.size()) at = s_.size();
    // The last line start <= at (a '\n' itself belongs to the line it ends).
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), at) - 1;
    *line = static_cast<int>(it - line_starts_.begin()) + 1;
    *col = static_cast<int>(at - *it) + 1;
  }

 private:
  static constexpr int kMaxDepth = 64;

  std::string describe() const {
    if (i_ >= s_.size()) return "end of file";
    return std::string("'") + s_[i_] + "'";
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c, const char* context) {
    skip_ws();
    if (i_ >= s_.size() || s_[i_] != c)
      throw SyntaxError{i_, std::string("expected '") + c + "' " + context + ", found " + describe()};
    ++i_;
  }

  void value(int depth) {
    if (depth > kMaxDepth) throw SyntaxError{i_, "nesting deeper than 64 levels"};
    skip_ws();
    if (i_ >= s_.size()) throw SyntaxError{i_, "expected a value, found end of file"};
    const char c = s_[i_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return (void)string();
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) return number();
    for (const char* lit : {"true", "false", "null"}) {
      const size_t n = std::strlen(lit);
      if (s_.compare(i_, n, lit) == 0) {
        i_ += n;
        return;
      }
    }
    throw SyntaxError{i_, "expected a value, found " + describe()};
  }

  void object(int depth) {
    ++i_;  // '{'
    skip_ws();
    if (i_ < s_.size() && s_[i_] == '}') {
      ++i_;
      return;
    }
    while (true) {
      skip_ws();
      if (i_ >= s_.size() || s_[i_] != '"') throw SyntaxError{i_, "expected a quoted key, found " + describe()};
      const size_t key_at = i_;
      std::string key = string();
      JsonKey k;
      k.path = path_;
      k.path.push_back(key);
      position(key_at, &k.line, &k.col);
      keys_->push_back(k);
      expect(':', "after a key");
      path_.push_back(key);
      value(depth + 1);
      path_.pop_back();
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return;
      }
      throw SyntaxError{i_, "expected ',' or '}' in an object, found " + describe()};
    }
  }

  void array(int depth) {
    ++i_;  // '['
    skip_ws();
    if (i_ < s_.size() && s_[i_] == ']') {
      ++i_;
      return;
    }
    while (true) {
      value(depth + 1);
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return;
      }
      throw SyntaxError{i_, "expected ',' or ']' in an array, found " + describe()};
    }
  }

  // Returns the raw contents (escapes kept as written; keys are plain identifiers).
  std::string string() {
    const size_t start = i_++;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\n') throw SyntaxError{start, "string is not closed on its line"};
      if (s_[i_] == '\\') {
        if (i_ + 1 >= s_.size()) break;
        out += s_[i_++];
      }
      out += s_[i_++];
    }
    if (i_ >= s_.size()) throw SyntaxError{start, "string is not closed"};
    ++i_;  // closing quote
    return out;
  }

  void number() {
    const size_t start = i_;
    if (s_[i_] == '-') ++i_;
    while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' ||
                              ((s_[i_] == '+' || s_[i_] == '-') && (s_[i_ - 1] == 'e' || s_[i_ - 1] == 'E'))))
      ++i_;
    if (i_ == start + (s_[start] == '-' ? 1u : 0u)) throw SyntaxError{start, "expected a number"};
    // The exact number grammar is protobuf's to check (it names the field on failure).
  }

  const std::string& s_;
  std::vector<size_t> line_starts_;
  size_t i_ = 0;
  std::vector<std::string> path_;
  std::vector<JsonKey>* keys_ = nullptr;
};

}  // namespace

JsonScan scan_json(const std::string& text) {
  JsonScan out;
  Scanner sc(text);
  try {
    sc.document(&out.keys);
  } catch (const SyntaxError& e) {
    out.ok = false;
    out.error = e.what;
    sc.position(e.at, &out.line, &out.col);
  }
  return out;
}

}  // namespace lathe::configs::detail
