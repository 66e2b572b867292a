// Seeded permutations and selections from the Philox stream of core/rng.h, shared by the
// loaders (epoch orders) and by `lathe prepare` (the validation split).
#pragma once

#include <cstdint>
#include <vector>

namespace lathe::data {

// A uniform permutation of [0, n): Fisher-Yates (Durstenfeld) driven by the Philox stream
// with key `key`, starting at stream position `offset` and using 2 values per swap. Position
// i (from n-1 down to 1) swaps with j in [0, i] taken from 64 random bits by multiply-high
// (bias at most n / 2^64).
std::vector<int64_t> philox_permutation(int64_t n, uint64_t key, uint64_t offset);

// The shuffled window order of epoch `epoch` that LMLoader uses (LMLoader::epoch_order with
// shuffle on gives exactly this): key = seed ^ a fixed loader tag, offset = epoch * 2^40.
// Any loader that wants LMLoader's order for the same (seed, epoch) calls this.
std::vector<int64_t> loader_epoch_order(int64_t n, uint64_t seed, int64_t epoch);

// Streaming exact-size random selection (Knuth, TAOCP vol. 2, 3.4.2, Algorithm S): picks
// exactly k of n items, each k-subset equally likely, deciding item by item in order with
// O(1) state. Item i's decision uses stream values 2i and 2i+1 of the key.
class SelectionSampler {
 public:
  SelectionSampler(int64_t n, int64_t k, uint64_t key);
  // Whether the next item (in order 0, 1, ..., n-1) is selected; throws past item n-1.
  bool next();
  int64_t seen() const { return seen_; }
  int64_t selected() const { return selected_; }

 private:
  int64_t n_, k_;
  uint64_t key_;
  int64_t seen_ = 0, selected_ = 0;
};

}  // namespace lathe::data
