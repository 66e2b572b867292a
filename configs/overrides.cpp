// `--set a.b.c=value` overrides: each becomes the text-format snippet `a { b { c: value } }`,
// parsed on its own and merged into the config (so a scalar is replaced and a repeated field
// gets the value appended, exactly as if the file had said it).
#include <cctype>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "configs/config.h"
#include "configs/suggest.h"

namespace lathe::configs {

namespace gp = google::protobuf;

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A text-format string literal holding exactly `raw`.
std::string quote(const std::string& raw) {
  static const char* kOct = "01234567";
  std::string out = "\"";
  for (const char ch : raw) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += '\\';
      out += kOct[(c >> 6) & 7];
      out += kOct[(c >> 3) & 7];
      out += kOct[c & 7];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string type_label(const gp::FieldDescriptor* f) {
  if (f->type() == gp::FieldDescriptor::TYPE_ENUM) return "enum " + f->enum_type()->name();
  if (f->type() == gp::FieldDescriptor::TYPE_MESSAGE) return "message " + f->message_type()->name();
  return f->type_name();
}

// Keeps the first message of a failed parse (its position is within our own snippet and
// means nothing to the user, so it is dropped).
class FirstError : public gp::io::ErrorCollector {
 public:
  void AddError(int, gp::io::ColumnNumber, const std::string& message) override {
    if (first.empty()) first = message;
  }
  void AddWarning(int, gp::io::ColumnNumber, const std::string& message) override {
    if (first.empty()) first = message;
  }
  std::string first;
};

}  // namespace

void apply_override(RunConfig& cfg, const std::string& spec) {
  auto fail = [&](const std::string& msg) {
    throw ConfigError("overrides", {"override \"" + spec + "\": " + msg});
  };
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) fail("expected path=value, e.g. optimizer.lr=3e-4");
  const std::string path = trim(spec.substr(0, eq));
  const std::string raw = spec.substr(eq + 1);
  if (path.empty()) fail("the field path before '=' is empty");

  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }

  const gp::Descriptor* msg = RunConfig::descriptor();
  const gp::FieldDescriptor* field = nullptr;
  std::string walked;  // the path so far, for messages
  std::vector<std::string> names;  // proto names along the path (parts may be camelCase)
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) fail("empty field name in \"" + path + "\"");
    if (msg == nullptr)
      fail(walked + " is a " + type_label(field) + ", not a section; it has no field \"" + parts[i] + "\"");
    field = detail::find_field(msg, parts[i]);
    if (field == nullptr)
      fail((walked.empty() ? std::string("RunConfig") : walked + " (" + msg->full_name() + ")") +
           " has no field \"" + parts[i] + "\"" + detail::field_hint(msg, parts[i]));
    if (i + 1 < parts.size() && field->is_repeated())
      fail(walked + (walked.empty() ? "" : ".") + field->name() +
           " is repeated; set its elements with a {...} block on the field itself");
    walked += (walked.empty() ? "" : ".") + field->name();
    names.push_back(field->name());
    msg = field->type() == gp::FieldDescriptor::TYPE_MESSAGE ? field->message_type() : nullptr;
  }

  // The value as a text-format token.
  std::string value;
  const std::string v = trim(raw);
  switch (field->cpp_type()) {
    case gp::FieldDescriptor::CPPTYPE_STRING:
      value = quote(raw);  // taken literally: no quotes needed, and quotes are kept if given
      break;
    case gp::FieldDescriptor::CPPTYPE_ENUM: {
      const gp::EnumDescriptor* e = field->enum_type();
      for (int i = 0; i < e->value_count() && value.empty(); ++i)
        if (lower(e->value(i)->name()) == lower(v)) value = e->value(i)->name();
      if (value.empty())
        fail("\"" + v + "\" is not a value of " + walked + " (" + e->full_name() + ")" + detail::enum_hint(e, v));
      break;
    }
    case gp::FieldDescriptor::CPPTYPE_BOOL: {
      const std::string b = lower(v);
      if (b == "true" || b == "1" || b == "yes" || b == "on")
        value = "true";
      else if (b == "false" || b == "0" || b == "no" || b == "off")
        value = "false";
      else
        fail(walked + " is a bool: use true or false (got \"" + v + "\")");
      break;
    }
    case gp::FieldDescriptor::CPPTYPE_MESSAGE:
      if (v.size() < 2 || v.front() != '{' || v.back() != '}')
        fail(walked + " is a section (" + field->message_type()->full_name() + "): set one of its fields (" +
             walked + "." + field->message_type()->field(0)->name() + "=...) or give a {...} block");
      value = v;
      break;
    default: {  // numbers: one token, so a value cannot smuggle in other fields
      bool token = !v.empty();
      for (const char c : v)
        token = token && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '-' || c == '_');
      if (!token) fail(walked + " is a " + type_label(field) + " (got \"" + v + "\")");
      value = v;
    }
  }

  // parts[0] { parts[1] { ... last: value } }
  std::string text;
  for (size_t i = 0; i + 1 < names.size(); ++i) text += names[i] + " { ";
  text += names.back() + (field->cpp_type() == gp::FieldDescriptor::CPPTYPE_MESSAGE ? " " : ": ") + value;
  for (size_t i = 0; i + 1 < names.size(); ++i) text += " }";

  RunConfig delta;
  FirstError errors;
  gp::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &delta) || !errors.first.empty())
    fail("invalid value for " + walked + " (" + type_label(field) + "): " + errors.first);
  cfg.MergeFrom(delta);
}

void apply_overrides(RunConfig& cfg, const std::vector<std::string>& specs) {
  std::vector<std::string> errors;
  for (const auto& spec : specs) {
    try {
      apply_override(cfg, spec);
    } catch (const ConfigError& e) {
      errors.insert(errors.end(), e.errors().begin(), e.errors().end());
    }
  }
  if (!errors.empty()) throw ConfigError("overrides", errors);
}

}  // namespace lathe::configs
