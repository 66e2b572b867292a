// Console progress: one live line on a terminal, plain periodic lines otherwise.
//
// On a tty every update redraws "step 120/1000 | loss 3.2145 | lr 3.00e-04 |
// 12.3k tok/s | ETA 5m10s" in place (\r, clear to end of line); into a file or pipe
// (logs of batch jobs) the same text is printed as its own line every log_interval steps.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>

namespace lathe::train {

struct ProgressOptions {
  int64_t total_steps = 0;   // 0: unknown (no total, no ETA)
  int64_t log_interval = 1;  // non-tty: print when step % log_interval == 0 or step == total
  std::FILE* out = stdout;
  int tty = -1;  // -1: isatty(out); 0 or 1 forces the mode
};

class Progress {
 public:
  explicit Progress(ProgressOptions opt = {});
  // Shows the values of a step; the keys shown are loss, lr, grad_norm, tokens_per_s and mfu
  // (others are ignored here: they go to JSONL/TensorBoard).
  void update(int64_t step, const std::map<std::string, double>& values);
  // Same with an explicit clock in seconds (tests).
  void update_at(int64_t step, const std::map<std::string, double>& values, double now_s);
  // Prints a full line (an eval result, a warning) without garbling the live line.
  void message(const std::string& line);
  // Ends the live line with a newline (tty); idempotent.
  void finish();
  bool is_tty() const { return tty_; }

  // The text of one update; eta_s < 0 means unknown.
  std::string format(int64_t step, const std::map<std::string, double>& values, double eta_s) const;
  // "45s", "3m05s", "2h03m", "4d02h"
  static std::string format_duration(double seconds);

 private:
  ProgressOptions opt_;
  bool tty_ = false;
  bool live_ = false;  // a live line is on screen without its newline
  std::string last_;
  bool have_start_ = false;
  int64_t start_step_ = 0;
  double start_time_ = 0;
};

}  // namespace lathe::train
