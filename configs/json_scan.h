// A small JSON scanner that knows where things are: protobuf's JSON parser reports neither
// line nor column, so lathe scans the text first to (1) reject syntax errors with an exact
// position and (2) record where every object key sits, so that an unknown field or a bad
// value can be reported at file:line:col. Internal to lathe_configs.
#pragma once

#include <string>
#include <vector>

namespace lathe::configs::detail {

struct JsonKey {
  std::vector<std::string> path;  // object keys from the root; array elements add no entry
  int line = 0;                   // 1-based position of the key's opening quote
  int col = 0;
};

struct JsonScan {
  bool ok = true;
  int line = 0, col = 0;  // 1-based position of the syntax error when !ok
  std::string error;
  std::vector<JsonKey> keys;  // in document order
};

JsonScan scan_json(const std::string& text);

}  // namespace lathe::configs::detail
