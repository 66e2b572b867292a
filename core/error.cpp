#include "core/error.h"

#include <cstring>

namespace lathe::detail {

CheckFailure::~CheckFailure() noexcept(false) {
  const char* base = std::strrchr(file_, '/');
  std::string where = std::string(base ? base + 1 : file_) + ":" + std::to_string(line_);
  throw Error(where, os_.str());
}

}  // namespace lathe::detail
