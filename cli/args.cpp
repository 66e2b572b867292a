// Command-line parsing; see args.h.
#include "cli/args.h"

#include <algorithm>
#include <cstdlib>

namespace lathe::cli {

std::optional<std::string> ParsedArgs::get(const std::string& flag) const {
  auto it = values.find(flag);
  if (it == values.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> ParsedArgs::all(const std::string& flag) const {
  auto it = values.find(flag);
  return it == values.end() ? std::vector<std::string>{} : it->second;
}

int64_t ParsedArgs::get_int(const std::string& flag, int64_t fallback) const {
  auto v = get(flag);
  if (!v) return fallback;
  char* end = nullptr;
  long long x = std::strtoll(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0') throw UsageError(flag + ": expected an integer, got \"" + *v + "\"");
  return x;
}

double ParsedArgs::get_double(const std::string& flag, double fallback) const {
  auto v = get(flag);
  if (!v) return fallback;
  char* end = nullptr;
  double x = std::strtod(v->c_str(), &end);
  if (v->empty() || *end != '\0') throw UsageError(flag + ": expected a number, got \"" + *v + "\"");
  return x;
}

namespace {

// Levenshtein distance (small strings: flag and command names).
int distance(const std::string& a, const std::string& b) {
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::string closest_name(const std::string& typed, const std::vector<std::string>& candidates) {
  std::string best;
  int best_d = 1 << 30;
  for (const auto& c : candidates) {
    int d = distance(typed, c);
    if (d < best_d) best_d = d, best = c;
  }
  // A typo changes a few characters; beyond a third of the word it is another word.
  return best_d <= std::max<int>(2, static_cast<int>(typed.size()) / 3) ? best : "";
}

ParsedArgs parse_args(const std::string& command, const std::vector<std::string>& args,
                      const std::vector<FlagSpec>& flags) {
  ParsedArgs out;
  std::vector<std::string> names;
  for (const auto& f : flags) names.push_back(f.name);
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positional || a.size() < 2 || a[0] != '-') {
      out.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      out.help = true;
      continue;
    }
    const size_t eq = a.find('=');
    const std::string name = a.substr(0, eq);
    const FlagSpec* spec = nullptr;
    for (const auto& f : flags)
      if (f.name == name) spec = &f;
    if (!spec) {
      std::string hint = closest_name(name, names);
      throw UsageError("lathe " + command + ": unknown option " + name +
                       (hint.empty() ? "" : " (did you mean " + hint + "?)"));
    }
    std::optional<std::string> value;
    if (eq != std::string::npos) value = a.substr(eq + 1);
    switch (spec->kind) {
      case ArgKind::flag:
        if (value) throw UsageError("lathe " + command + ": " + name + " takes no value");
        out.values[name].push_back("");
        break;
      case ArgKind::optional:
        if (!value && i + 1 < args.size() && !args[i + 1].empty() && args[i + 1][0] != '-' &&
            (!spec->accept || spec->accept(args[i + 1])))
          value = args[++i];
        out.values[name].push_back(value.value_or(""));
        break;
      case ArgKind::value:
      case ArgKind::repeated:
        if (!value) {
          if (i + 1 >= args.size()) throw UsageError("lathe " + command + ": " + name + " needs a value");
          value = args[++i];
        }
        if (spec->kind == ArgKind::value) out.values[name].clear();
        out.values[name].push_back(*value);
        break;
    }
  }
  return out;
}

}  // namespace lathe::cli
