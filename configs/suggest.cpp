#include "configs/suggest.h"

#include <algorithm>
#include <cctype>

#include "configs/lathe.pb.h"

namespace lathe::configs::detail {

namespace gp = google::protobuf;

int edit_distance(const std::string& a, const std::string& b) {
  auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  const size_t n = a.size(), m = b.size();
  // d[i][j] = distance between the first i chars of a and the first j chars of b.
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const int cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

std::string closest(const std::string& typed, const std::vector<std::string>& candidates) {
  // A typo is plausible within about a third of the word, and always within 2 edits for
  // words long enough that 2 edits do not turn them into something unrelated.
  const int limit = std::max(typed.size() >= 4 ? 2 : 1, static_cast<int>(typed.size()) / 3);
  std::string best;
  int best_d = limit + 1;
  for (const auto& c : candidates) {
    const int dist = edit_distance(typed, c);
    if (dist < best_d) {
      best_d = dist;
      best = c;
    }
  }
  return best;
}

const gp::FieldDescriptor* find_field(const gp::Descriptor* msg, const std::string& name) {
  if (const auto* f = msg->FindFieldByName(name)) return f;
  for (int i = 0; i < msg->field_count(); ++i)
    if (msg->field(i)->json_name() == name) return msg->field(i);
  return nullptr;
}

namespace {
// Every field reachable from RunConfig, by dotted path from the root.
void collect_paths(const gp::Descriptor* msg, const std::string& prefix, int depth,
                   std::vector<std::pair<std::string, const gp::FieldDescriptor*>>* out) {
  if (depth > 8) return;  // recursive schemas: paths this deep are not what anyone typed
  for (int i = 0; i < msg->field_count(); ++i) {
    const auto* f = msg->field(i);
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    out->emplace_back(path, f);
    if (f->type() == gp::FieldDescriptor::TYPE_MESSAGE) collect_paths(f->message_type(), path, depth + 1, out);
  }
}
}  // namespace

std::string field_hint(const gp::Descriptor* msg, const std::string& typed) {
  if (msg == nullptr) return "";
  std::vector<std::string> names;
  for (int i = 0; i < msg->field_count(); ++i) names.push_back(msg->field(i)->name());
  const std::string near = closest(typed, names);
  if (!near.empty()) return " (did you mean \"" + near + "\"?)";
  // Right name, wrong section: `train { lr: 3e-4 }`.
  std::vector<std::pair<std::string, const gp::FieldDescriptor*>> all;
  collect_paths(RunConfig::descriptor(), "", 0, &all);
  std::vector<std::string> hits;
  for (const auto& [path, f] : all)
    if (f->name() == typed) hits.push_back(path);
  if (hits.size() == 1) return " (did you mean \"" + hits[0] + "\"? it belongs to another section)";
  return "";
}

std::string enum_hint(const gp::EnumDescriptor* e, const std::string& typed) {
  if (e == nullptr) return "";
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) names.push_back(e->value(i)->name());
  const std::string near = closest(typed, names);
  if (!near.empty()) return " (did you mean \"" + near + "\"?)";
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return " (valid values: " + list + ")";
}

}  // namespace lathe::configs::detail
