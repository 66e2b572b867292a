// The semantic checks behind validate(), with the field path of each problem kept apart
// so load_config() can point at the line that set the field. Internal to lathe_configs.
#pragma once

#include <string>
#include <vector>

#include "configs/lathe.pb.h"

namespace lathe::configs::detail {

struct Issue {
  std::string path;     // "train.micro_batch" (a section, e.g. "train", for a cross-field rule)
  std::string message;  // the full message, starting with a field path
};

std::vector<Issue> check(const RunConfig& cfg);

}  // namespace lathe::configs::detail
