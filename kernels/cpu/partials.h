// Row sums and maxima with several independent accumulators.
//
// A loop that adds every element into one accumulator runs at the latency of one
// floating-point add per element, because each add waits for the previous one. Keeping
// kParts partial results (element j goes to partial j % kParts) lets the adds overlap and
// the compiler vectorize them; the partials are then combined in one fixed tree. The
// grouping depends only on the row length, never on the thread count, so results stay
// bitwise reproducible.
#pragma once

#include <cstdint>
#include <limits>

namespace lathe::kernels::cpu::partials {

constexpr int kParts = 8;

template <typename S>
inline S combine(const S (&a)[kParts]) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Sum over j in [0, n) of S(f(j)).
template <typename S, typename F>
inline S sum(int64_t n, F f) {
  S a[kParts] = {};
  int64_t j = 0;
  for (; j + kParts <= n; j += kParts)
    for (int k = 0; k < kParts; ++k) a[k] += S(f(j + k));
  for (int k = 0; j < n; ++j, ++k) a[k] += S(f(j));
  return combine(a);
}

// Two sums over one pass: (sum f(j), sum g(j)).
template <typename S, typename F, typename G>
inline void sum2(int64_t n, F f, G g, S& out_f, S& out_g) {
  S a[kParts] = {}, b[kParts] = {};
  int64_t j = 0;
  for (; j + kParts <= n; j += kParts)
    for (int k = 0; k < kParts; ++k) {
      a[k] += S(f(j + k));
      b[k] += S(g(j + k));
    }
  for (int k = 0; j < n; ++j, ++k) {
    a[k] += S(f(j));
    b[k] += S(g(j));
  }
  out_f = combine(a);
  out_g = combine(b);
}

// Max over j in [0, n) of f(j) (-inf for n == 0). NaNs are ignored, as std::max(m, v)
// with m first ignores them; callers that need NaN propagation check separately.
template <typename S, typename F>
inline S max(int64_t n, F f) {
  S a[kParts];
  for (int k = 0; k < kParts; ++k) a[k] = -std::numeric_limits<S>::infinity();
  int64_t j = 0;
  for (; j + kParts <= n; j += kParts)
    for (int k = 0; k < kParts; ++k) {
      const S v = f(j + k);
      a[k] = a[k] < v ? v : a[k];
    }
  for (int k = 0; j < n; ++j, ++k) {
    const S v = f(j);
    a[k] = a[k] < v ? v : a[k];
  }
  S m = a[0];
  for (int k = 1; k < kParts; ++k) m = m < a[k] ? a[k] : m;
  return m;
}

}  // namespace lathe::kernels::cpu::partials
