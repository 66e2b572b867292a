#include "core/device.h"

#include "core/error.h"

namespace lathe {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    std::string n = s.substr(5);
    LATHE_CHECK(!n.empty() && n.find_first_not_of("0123456789") == std::string::npos)
        << "bad device '" << s << "': expected cpu, cuda or cuda:N";
    return cuda(std::stoi(n));
  }
  LATHE_FAIL() << "bad device '" << s << "': expected cpu, cuda or cuda:N";
  return cpu();
}

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

}  // namespace lathe
