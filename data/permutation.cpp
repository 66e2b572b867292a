#include "data/permutation.h"

#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace lathe::data {

namespace {
// Must stay equal to the tag and stride in lm_dataset.cpp so that loader_epoch_order and
// LMLoader::epoch_order agree (tests/data/test_instruction_loader.cpp checks it).
constexpr uint64_t kLoaderShuffleTag = 0x6c6d2d6c6f616465ull;
constexpr uint64_t kEpochStride = uint64_t{1} << 40;
}  // namespace

std::vector<int64_t> philox_permutation(int64_t n, uint64_t key, uint64_t offset) {
  LATHE_CHECK(n >= 0) << "philox_permutation: negative size " << n;
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  Generator gen(key);
  gen.set_state(key, offset);
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t hi = gen.next_u32(), lo = gen.next_u32();
    const uint64_t r = (hi << 32) | lo;
    const int64_t j = static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<int64_t> loader_epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  LATHE_CHECK(epoch >= 0) << "loader_epoch_order: negative epoch " << epoch;
  return philox_permutation(n, seed ^ kLoaderShuffleTag, static_cast<uint64_t>(epoch) * kEpochStride);
}

SelectionSampler::SelectionSampler(int64_t n, int64_t k, uint64_t key) : n_(n), k_(k), key_(key) {
  LATHE_CHECK(n >= 0 && k >= 0 && k <= n) << "SelectionSampler: cannot select " << k << " of " << n << " items";
}

bool SelectionSampler::next() {
  LATHE_CHECK(seen_ < n_) << "SelectionSampler: all " << n_ << " items were already decided";
  // Algorithm S: select item `seen_` with probability (k - selected) / (n - seen).
  Generator gen(key_);
  const uint64_t pos = 2 * static_cast<uint64_t>(seen_);
  // j uniform in [0, n - seen) from 64 random bits by multiply-high (integer, so the
  // last items are taken surely when k - selected == n - seen).
  const uint64_t r = (static_cast<uint64_t>(gen.at(pos)) << 32) | gen.at(pos + 1);
  const uint64_t j = static_cast<uint64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(n_ - seen_)) >> 64);
  const bool take = j < static_cast<uint64_t>(k_ - selected_);
  ++seen_;
  if (take) ++selected_;
  return take;
}

}  // namespace lathe::data
