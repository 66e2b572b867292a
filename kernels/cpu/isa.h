// Hot f32 row loops compiled for three x86-64 levels and chosen at run time.
//
// lathe's own code is built for baseline x86-64 (SSE2, 4 float lanes) so one binary runs
// everywhere. Loops bound by arithmetic (an exp per element: GELU, softmax rows of attention,
// cross-entropy) are also compiled for AVX2 (8 lanes) and AVX-512 (16 lanes), and the best
// level the CPU has is picked once. The three copies give the same bits: lathe is compiled
// with -ffp-contract=off (no multiply-add contraction, which AVX-512 would otherwise allow)
// and without reassociation, so every copy performs the same IEEE operations on every
// element in the same order; only the number of lanes differs. Tests force each level in
// turn (set_level_for_testing) and compare the results bit for bit.
//
// LATHE_ISA_ROW(name, params, args, body) defines `void name params`, which runs `body args`
// (an always-inline function template instance or function) compiled for the chosen level.
#pragma once

namespace lathe::kernels::cpu::isa {

enum class Level { base = 0, avx2 = 1, avx512 = 2 };

// The level the row loops run at: the best the CPU supports (AVX-512 needs F, BW, DQ and
// VL), unless lowered by set_level_for_testing or the LATHE_CPU_ISA environment variable
// (base, avx2 or avx512; read once).
Level level();
// The best level this CPU supports.
Level supported();
// Forces a level (clamped to supported()); returns the previous one. For tests and A/B.
Level set_level_for_testing(Level l);
const char* name(Level l);

}  // namespace lathe::kernels::cpu::isa

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LATHE_ISA_ROW(name, params, args, body)                                                                     \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,prefer-vector-width=512"))) void name##_avx512 params { \
    body args;                                                                                                      \
  }                                                                                                                 \
  __attribute__((target("avx2"))) void name##_avx2 params { body args; }                                            \
  void name##_base params { body args; }                                                                            \
  void name params {                                                                                                \
    switch (::lathe::kernels::cpu::isa::level()) {                                                                 \
      case ::lathe::kernels::cpu::isa::Level::avx512: return name##_avx512 args;                                   \
      case ::lathe::kernels::cpu::isa::Level::avx2: return name##_avx2 args;                                       \
      default: return name##_base args;                                                                            \
    }                                                                                                               \
  }
#else
#define LATHE_ISA_ROW(name, params, args, body) \
  void name params { body args; }
#endif
