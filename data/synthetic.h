// The built-in synthetic corpus: text of a small made-up language, generated from a seed,
// so that lathe can train a language model with no download.
//
// Its structure is what a tiny model can learn and what a glance at its samples can check:
// one item per line, each of these kinds (weights 5 : 3 : 1 : 1 : 1):
//   story       1-4 sentences with a fixed lexicon and grammar rules:
//                 "the small red fox sees an old cat . it runs . some birds are green ."
//               - subject-verb agreement (the fox sees / the foxes see, is / are),
//                 irregular plurals (mouse/mice, child/children, wolf/wolves);
//               - "a" before a consonant, "an" before a vowel (an old owl, an orange box);
//                 "a" only with singular nouns; "two", "three", "some", "many" only with plurals;
//               - adjective order: size/age before colour (a small red fox, never a red small fox);
//               - "eats" only takes food objects (apple, egg, mouse, bird);
//               - a later sentence may start with "it" / "they", agreeing with the previous
//                 sentence's subject.
//   arithmetic  1-3 facts over single digits, always correct: "3 + 4 = 7 . 9 - 2 = 7 . 6 * 7 = 42 ."
//               ("-" never goes below zero).
//   count       a run of consecutive numbers: "count 5 6 7 8 ."
//   copy        2-4 lexicon words, repeated after a colon: "copy red fox tree : red fox tree ."
//   spell       a lexicon word and its letters: "spell wolves : w o l v e s ."
//
// Entropy floor. Every line is a deterministic function of the random choices that made it,
// and different choices always give different text, so the information in those choices is
// the text's entropy under the true source. generate_synthetic() sums -log2 p of every
// choice; divided by the bytes, that is the lowest cross-entropy any model can reach on this
// corpus (in bits per byte; multiply by ln 2 for nats). Measured: 0.67 bits per byte
// (0.465 nats per byte) for seeds 0 and 1 at 1 and 2 MiB. A byte-level model that has learned
// everything reaches that; one that knows only the byte frequencies sits near 4 bits per byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lathe::data {

constexpr size_t kDefaultSyntheticBytes = size_t{1} << 20;  // 1 MiB

struct SyntheticOptions {
  uint64_t seed = 0;
  size_t bytes = kDefaultSyntheticBytes;  // exact output size; the last line may be cut short
};

struct SyntheticStats {
  // Over complete lines only (the cut last line, if any, is not counted).
  int64_t lines = 0;
  int64_t story_sentences = 0;
  int64_t arithmetic_facts = 0;
  int64_t count_lines = 0;
  int64_t copy_lines = 0;
  int64_t spell_lines = 0;
  int64_t complete_bytes = 0;  // bytes of the complete lines, newlines included
  double choice_bits = 0;      // sum of -log2 p over the choices that made those lines
  // choice_bits / complete_bytes: the entropy floor in bits per byte (see above).
  double bits_per_byte() const { return complete_bytes ? choice_bits / complete_bytes : 0.0; }
};

struct SyntheticCorpus {
  std::string text;
  SyntheticStats stats;
};

// Deterministic in (seed, bytes) on every platform: the choices come from the Philox stream
// of core/rng.h. A shorter corpus is a prefix of a longer one with the same seed.
SyntheticCorpus generate_synthetic(const SyntheticOptions& options);
std::string synthetic_corpus(uint64_t seed, size_t bytes = kDefaultSyntheticBytes);

// Every word a story, copy or spell line can use (nouns in both numbers, adjectives, verbs in
// both forms, determiners, pronouns), sorted; for samplers and tools that inspect the output.
const std::vector<std::string>& synthetic_lexicon();

}  // namespace lathe::data
