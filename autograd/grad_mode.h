// Grad mode: a thread-local switch that decides whether differentiable ops record
// nodes on the tape. Backward itself runs with it off (no higher-order graphs).
#pragma once

namespace lathe::autograd {

class GradMode {
 public:
  static bool is_enabled();
  static void set_enabled(bool on);
};

// Turns recording off for the current thread while it lives (evaluation, optimizer
// steps, weight updates), restoring the previous state after.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Turns recording on inside a no-grad region (e.g. recomputation inside a checkpointed block).
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(true); }
  ~EnableGradGuard() { GradMode::set_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace lathe::autograd
