#include "kernels/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace lathe::kernels::cpu::isa {

namespace {

Level detect() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return Level::avx512;
  if (__builtin_cpu_supports("avx2")) return Level::avx2;
#endif
  return Level::base;
}

Level clamp(Level l) { return static_cast<int>(l) > static_cast<int>(supported()) ? supported() : l; }

Level initial() {
  const char* env = std::getenv("LATHE_CPU_ISA");
  if (env == nullptr || *env == '\0') return supported();
  for (Level l : {Level::base, Level::avx2, Level::avx512})
    if (std::strcmp(env, name(l)) == 0) return clamp(l);
  LATHE_FAIL() << "LATHE_CPU_ISA must be base, avx2 or avx512, got '" << env << "'";
  return Level::base;
}

std::atomic<int>& current() {
  static std::atomic<int> c{static_cast<int>(initial())};
  return c;
}

}  // namespace

Level supported() {
  static const Level s = detect();
  return s;
}

Level level() { return static_cast<Level>(current().load(std::memory_order_relaxed)); }

Level set_level_for_testing(Level l) {
  return static_cast<Level>(current().exchange(static_cast<int>(clamp(l))));
}

const char* name(Level l) {
  switch (l) {
    case Level::base: return "base";
    case Level::avx2: return "avx2";
    case Level::avx512: return "avx512";
  }
  return "?";
}

}  // namespace lathe::kernels::cpu::isa
