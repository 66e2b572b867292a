// Reading configs: text format and JSON parsing with every error located at
// file:line:col (1-based), load_config() (parse, override, resolve, validate) and to_text().
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include "configs/checks.h"
#include "configs/config.h"
#include "configs/json_scan.h"
#include "configs/suggest.h"

namespace lathe::configs {

namespace gp = google::protobuf;
using detail::Issue;

namespace {

std::string join_errors(const std::vector<std::string>& errors) {
  std::string out = errors.size() == 1 ? "invalid config:" : "invalid config (" + std::to_string(errors.size()) + " errors):";
  for (const auto& e : errors) out += "\n  " + e;
  return out;
}

std::string at(const std::string& origin, int line, int col) {
  return origin + ":" + std::to_string(line) + ":" + std::to_string(col) + ": ";
}

bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Maps between byte offsets, protobuf's positions (0-based line, 0-based column with tabs
// advancing to the next multiple of 8) and the 1-based line:byte-column we print.
class SourceText {
 public:
  explicit SourceText(const std::string& text) : text_(text) {
    starts_.push_back(0);
    for (size_t i = 0; i < text.size(); ++i)
      if (text[i] == '\n') starts_.push_back(i + 1);
  }
  size_t offset(int line, int col) const {
    if (line < 0) return 0;
    if (static_cast<size_t>(line) >= starts_.size()) return text_.size();
    size_t pos = starts_[line];
    int shown = 0;
    while (pos < text_.size() && text_[pos] != '\n' && shown < col) {
      shown = text_[pos] == '\t' ? (shown / 8 + 1) * 8 : shown + 1;
      ++pos;
    }
    return pos;
  }
  void position(size_t offset, int* line, int* col) const {
    // Binary search: a fuzzed file with thousands of errors must not cost lines x errors.
    const size_t l = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin()) - 1;
    *line = static_cast<int>(l) + 1;
    *col = static_cast<int>(offset - starts_[l]) + 1;
  }
  // The last whole-word occurrence of `token` starting at or before `offset`, or npos.
  size_t token_before(size_t offset, const std::string& token) const {
    if (token.empty()) return std::string::npos;
    size_t pos = text_.rfind(token, offset);
    while (pos != std::string::npos) {
      const bool left = pos == 0 || !is_word_char(text_[pos - 1]);
      const size_t end = pos + token.size();
      const bool right = end >= text_.size() || !is_word_char(text_[end]);
      if (left && right) return pos;
      if (pos == 0) break;
      pos = text_.rfind(token, pos - 1);
    }
    return std::string::npos;
  }

 private:
  const std::string& text_;
  std::vector<size_t> starts_;
};

// The n-th (0-based) double-quoted piece of a protobuf message, "" if absent.
std::string quoted(const std::string& msg, int n) {
  size_t pos = 0;
  for (int i = 0; i <= n; ++i) {
    const size_t open = msg.find('"', pos);
    if (open == std::string::npos) return "";
    const size_t close = msg.find('"', open + 1);
    if (close == std::string::npos) return "";
    if (i == n) return msg.substr(open + 1, close - open - 1);
    pos = close + 1;
  }
  return "";
}

std::string strip_period(std::string s) {
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// All enum-typed fields in RunConfig named `name` (the text parser's enum error names the
// field, not its message).
void enum_fields_named(const gp::Descriptor* msg, const std::string& name, int depth,
                       std::vector<const gp::EnumDescriptor*>* out) {
  if (depth > 8) return;
  for (int i = 0; i < msg->field_count(); ++i) {
    const auto* f = msg->field(i);
    if (f->type() == gp::FieldDescriptor::TYPE_ENUM && f->name() == name) out->push_back(f->enum_type());
    if (f->type() == gp::FieldDescriptor::TYPE_MESSAGE) enum_fields_named(f->message_type(), name, depth + 1, out);
  }
}

// Collects the text parser's errors as "origin:line:col: message". Unknown fields arrive as
// warnings (the parser runs with AllowUnknownField so that it carries on and reports all of
// them), and are errors here all the same. Positions that protobuf puts after the offending
// token (unknown field, repeated field, bad enum value) are moved back onto the token, and
// a spelling suggestion is added where one fits.
class TextErrorCollector : public gp::io::ErrorCollector {
 public:
  TextErrorCollector(const std::string& origin, const std::string& text) : origin_(origin), src_(text) {}

  void AddError(int line, gp::io::ColumnNumber column, const std::string& message) override {
    add(line, column, message);
  }
  void AddWarning(int line, gp::io::ColumnNumber column, const std::string& message) override {
    add(line, column, message);
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  void add(int line, int column, const std::string& message) {
    std::string msg = message;
    std::string token;  // the word the error is about, to point at
    if (message.find("has no field named") != std::string::npos) {
      token = quoted(message, 1);
      const auto* type = gp::DescriptorPool::generated_pool()->FindMessageTypeByName(quoted(message, 0));
      msg = strip_period(message) + detail::field_hint(type, token);
    } else if (message.rfind("Non-repeated field", 0) == 0) {
      token = quoted(message, 0);
    } else if (message.rfind("Unknown enumeration value", 0) == 0) {
      token = quoted(message, 0);
      std::vector<const gp::EnumDescriptor*> enums;
      enum_fields_named(RunConfig::descriptor(), quoted(message, 1), 0, &enums);
      msg = strip_period(message) + (enums.empty() ? "" : detail::enum_hint(enums.front(), token));
    }
    size_t off = src_.offset(line, column);
    if (!token.empty()) {
      const size_t t = src_.token_before(off, token);
      if (t != std::string::npos) off = t;
    }
    int l = 0, c = 0;
    src_.position(off, &l, &c);
    errors_.push_back(at(origin_, l, c) + msg);
  }

  std::string origin_;
  SourceText src_;
  std::vector<std::string> errors_;
};

RunConfig parse_text_impl(const std::string& text, const std::string& origin,
                          gp::TextFormat::ParseInfoTree* tree) {
  RunConfig cfg;
  TextErrorCollector collector(origin, text);
  gp::TextFormat::Parser parser;
  parser.RecordErrorsTo(&collector);
  parser.AllowUnknownField(true);  // reported as warnings, which the collector turns into errors
  if (tree) parser.WriteLocationsTo(tree);
  const bool ok = parser.ParseFromString(text, &cfg);
  if (!ok || !collector.errors().empty()) {
    std::vector<std::string> errors = collector.errors();
    if (errors.empty()) errors.push_back(origin + ": could not parse the text format");
    throw ConfigError(origin, errors);
  }
  return cfg;
}

std::string dotted(const std::vector<std::string>& path) {
  std::string out;
  for (const auto& p : path) out += (out.empty() ? "" : ".") + p;
  return out;
}

// protobuf's JSON tokenizer reports a syntax or number error (one lathe's scanner lets
// through, e.g. 1e999 or 9nan) as "message\n<up to 40 bytes around it>\n<spaces>^",
// without a position. Finds that context in `text`, sets *offset to the caret's byte and
// cuts *msg down to the message; false when the message has no such context.
bool snippet_offset(const std::string& text, std::string* msg, size_t* offset) {
  const size_t first = msg->find('\n'), last = msg->rfind('\n');
  if (first == std::string::npos || last <= first) return false;
  const std::string caret = msg->substr(last + 1);
  if (caret.empty() || caret.back() != '^' || caret.find_first_not_of(' ') != caret.size() - 1) return false;
  const std::string context = msg->substr(first + 1, last - first - 1);
  const size_t pos = text.find(context);
  if (pos == std::string::npos) return false;
  *offset = pos + caret.size() - 1;
  *msg = strip_period(msg->substr(0, first));
  return true;
}

// Where each key of a JSON config sits, by dotted path: both the proto field names
// ("train.micro_batch") and the names as written ("train.microBatch"). The first occurrence
// wins. Built once per file, so locating an error is a lookup, not a pass over every key.
struct KeyIndex {
  std::map<std::string, const detail::JsonKey*> by_path;
  std::map<std::string, const gp::FieldDescriptor*> field;  // the field a proto-name path ends at

  explicit KeyIndex(const std::vector<detail::JsonKey>& keys) {
    for (const auto& k : keys) {
      std::vector<std::string> names;
      const gp::Descriptor* m = RunConfig::descriptor();
      const gp::FieldDescriptor* f = nullptr;
      for (const auto& p : k.path) {
        f = m ? detail::find_field(m, p) : nullptr;
        names.push_back(f ? f->name() : p);
        m = f && f->type() == gp::FieldDescriptor::TYPE_MESSAGE ? f->message_type() : nullptr;
      }
      const std::string proto_path = dotted(names);
      by_path.emplace(proto_path, &k);
      field.emplace(proto_path, f);
      by_path.emplace(dotted(k.path), &k);
      field.emplace(dotted(k.path), f);
    }
  }
  const detail::JsonKey* find(const std::string& path) const {
    auto it = by_path.find(path);
    return it == by_path.end() ? nullptr : it->second;
  }
};

RunConfig parse_json_impl(const std::string& text, const std::string& origin, std::vector<detail::JsonKey>* keys_out) {
  const detail::JsonScan scan = detail::scan_json(text);
  if (!scan.ok) throw ConfigError(origin, {at(origin, scan.line, scan.col) + scan.error});

  // Every unknown key, not just the first one protobuf would stop at.
  std::vector<std::string> errors;
  for (const auto& key : scan.keys) {
    const gp::Descriptor* msg = RunConfig::descriptor();
    for (size_t i = 0; i < key.path.size() && msg != nullptr; ++i) {
      const auto* f = detail::find_field(msg, key.path[i]);
      if (f == nullptr) {
        if (i + 1 == key.path.size())  // an unknown parent was reported at its own key
          errors.push_back(at(origin, key.line, key.col) + "Message type \"" + msg->full_name() +
                           "\" has no field named \"" + key.path[i] + "\"" + detail::field_hint(msg, key.path[i]));
        break;
      }
      msg = f->type() == gp::FieldDescriptor::TYPE_MESSAGE ? f->message_type() : nullptr;
    }
  }
  if (!errors.empty()) throw ConfigError(origin, errors);

  RunConfig cfg;
  const auto status = gp::util::JsonStringToMessage(text, &cfg, gp::util::JsonParseOptions());
  if (!status.ok()) {
    // protobuf says "(train.steps): invalid value ..." without a position; find the key.
    std::string msg(status.message());
    std::string where = origin + ": ";
    if (!msg.empty() && msg[0] == '(') {
      const size_t close = msg.find(')');
      if (close != std::string::npos) {
        const std::string path = msg.substr(1, close - 1);
        std::string rest = msg.substr(close + 1);
        if (!rest.empty() && rest[0] == ':') rest = rest.substr(1);
        while (!rest.empty() && rest[0] == ' ') rest = rest.substr(1);
        const KeyIndex index(scan.keys);
        if (const detail::JsonKey* key = index.find(path)) {
          where = at(origin, key->line, key->col);
          const gp::FieldDescriptor* f = index.field.at(path);
          if (f && f->type() == gp::FieldDescriptor::TYPE_ENUM && rest.rfind("invalid value", 0) == 0)
            rest += detail::enum_hint(f->enum_type(), quoted(rest, 0));
        }
        msg = path + ": " + rest;
      }
    } else if (size_t off = 0; snippet_offset(text, &msg, &off)) {
      int line = 0, col = 0;
      SourceText(text).position(off, &line, &col);
      where = at(origin, line, col);
    }
    throw ConfigError(origin, {where + msg});
  }
  if (keys_out) *keys_out = scan.keys;
  return cfg;
}

std::string read_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    std::string cwd = fs::current_path(ec).string();
    throw ConfigError(path, {path + ": config file not found (working directory " + cwd + ")"});
  }
  if (fs::is_directory(path, ec)) throw ConfigError(path, {path + ": is a directory, expected a config file"});
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path, {path + ": cannot open for reading"});
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_json(const std::string& path, const std::string& text) {
  if (ends_with(path, ".json")) return true;
  for (const char* ext : {".pbtxt", ".prototxt", ".txtpb", ".textproto"})
    if (ends_with(path, ext)) return false;
  const size_t first = text.find_first_not_of(" \t\r\n");
  return first != std::string::npos && text[first] == '{';
}

// The dotted path of an override ("train.steps" of "train.steps=5").
std::string override_path(const std::string& spec) {
  std::string p = spec.substr(0, spec.find('='));
  const size_t b = p.find_first_not_of(" \t"), e = p.find_last_not_of(" \t");
  return b == std::string::npos ? "" : p.substr(b, e - b + 1);
}

bool path_overlaps(const std::string& a, const std::string& b) {
  auto under = [](const std::string& x, const std::string& parent) {
    return x.size() > parent.size() && x.compare(0, parent.size(), parent) == 0 && x[parent.size()] == '.';
  };
  return a == b || under(a, b) || under(b, a);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> out;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) out.push_back(part);
  return out;
}

}  // namespace

namespace {
std::mutex g_loaded_mu;
std::string g_loaded_file;  // the file of the last successful load_config()

// Errors found after loading (by the trainer: a data path that does not exist, a vocabulary
// that does not fit) are raised with the generic origin "config"; they name the file the
// run's config came from instead, so a user knows which file to edit.
std::string with_file(std::string origin) {
  if (origin != "config") return origin;
  std::lock_guard<std::mutex> lock(g_loaded_mu);
  return g_loaded_file.empty() ? origin : g_loaded_file;
}
}  // namespace

std::string loaded_config_file() {
  std::lock_guard<std::mutex> lock(g_loaded_mu);
  return g_loaded_file;
}

ConfigError::ConfigError(std::string origin, std::vector<std::string> errors)
    : lathe::Error(with_file(origin), join_errors(errors)), origin_(with_file(origin)), errors_(std::move(errors)) {}

RunConfig parse_text(const std::string& text, const std::string& origin) {
  return parse_text_impl(text, origin, nullptr);
}

RunConfig parse_json(const std::string& text, const std::string& origin) {
  return parse_json_impl(text, origin, nullptr);
}

std::string to_text(const RunConfig& cfg) {
  std::string out;
  gp::TextFormat::Printer printer;
  LATHE_CHECK(printer.PrintToString(cfg, &out)) << "to_text: protobuf could not print the RunConfig";
  return out;
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string text = read_file(path);
  const SourceText src(text);
  RunConfig cfg;
  // Where the file set a field (1-based), for pointing semantic errors at it.
  std::function<bool(const std::string&, int*, int*)> locate;
  gp::TextFormat::ParseInfoTree tree;
  std::vector<detail::JsonKey> keys;
  if (is_json(path, text)) {
    cfg = parse_json_impl(text, path, &keys);
    auto index = std::make_shared<KeyIndex>(keys);
    locate = [index](const std::string& field_path, int* line, int* col) {
      const detail::JsonKey* k = index->find(field_path);
      if (!k) return false;
      *line = k->line;
      *col = k->col;
      return true;
    };
  } else {
    cfg = parse_text_impl(text, path, &tree);
    locate = [&](const std::string& field_path, int* line, int* col) {
      const gp::TextFormat::ParseInfoTree* t = &tree;
      const gp::Descriptor* m = RunConfig::descriptor();
      const auto parts = split_path(field_path);
      for (size_t i = 0; i < parts.size(); ++i) {
        const auto* f = m ? m->FindFieldByName(parts[i]) : nullptr;
        if (f == nullptr || f->is_repeated()) return false;
        if (i + 1 == parts.size()) {
          const auto loc = t->GetLocation(f, -1);
          if (loc.line < 0) return false;
          src.position(src.offset(loc.line, loc.column), line, col);
          return true;
        }
        if (f->type() != gp::FieldDescriptor::TYPE_MESSAGE) return false;
        t = t->GetTreeForNested(f, -1);
        if (t == nullptr) return false;
        m = f->message_type();
      }
      return false;
    };
  }

  std::vector<std::string> errors;
  for (const auto& spec : overrides) {
    try {
      apply_override(cfg, spec);
    } catch (const ConfigError& e) {
      errors.insert(errors.end(), e.errors().begin(), e.errors().end());
    }
  }
  if (!errors.empty()) throw ConfigError(path, errors);

  resolve(cfg);
  for (const Issue& issue : detail::check(cfg)) {
    const std::string* by = nullptr;  // the last override that set this field, if any
    for (const auto& spec : overrides)
      if (path_overlaps(override_path(spec), issue.path)) by = &spec;
    if (by) {
      errors.push_back(path + ": override \"" + *by + "\": " + issue.message);
      continue;
    }
    // Point at the field, or else at the innermost section the file wrote (a required
    // field that is missing is reported where its section is).
    std::string where = issue.path;
    int line = 0, col = 0;
    bool found = false;
    while (!where.empty() && !(found = locate(where, &line, &col))) {
      const size_t dot = where.rfind('.');
      where = dot == std::string::npos ? "" : where.substr(0, dot);
    }
    errors.push_back(found ? at(path, line, col) + issue.message : path + ": " + issue.message);
  }
  if (!errors.empty()) throw ConfigError(path, errors);
  {
    std::lock_guard<std::mutex> lock(g_loaded_mu);
    g_loaded_file = path;
  }
  return cfg;
}

}  // namespace lathe::configs
