// Devices: the CPU and CUDA GPUs by index ("cpu", "cuda:0").
#pragma once

#include <string>

namespace lathe {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  Device() = default;
  Device(DeviceType t, int i = 0) : type(t), index(i) {}
  static Device cpu() { return Device(DeviceType::cpu, 0); }
  static Device cuda(int i = 0) { return Device(DeviceType::cuda, i); }
  // Parses "cpu", "cuda" or "cuda:N"; throws with the text on anything else.
  static Device parse(const std::string& s);

  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  std::string str() const;
  bool operator==(const Device& o) const { return type == o.type && (type == DeviceType::cpu || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

}  // namespace lathe
