// Learning-rate schedules: linear warmup from 0, then constant, cosine or linear decay
// to min_lr_ratio * base_lr at total_steps.
#pragma once

#include <cstdint>
#include <string>

namespace lathe::optim {

enum class ScheduleKind { constant, cosine, linear };

struct Schedule {
  ScheduleKind kind = ScheduleKind::cosine;
  double base_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.1;

  // lr for the update numbered `step` (1-based: the first update is step 1).
  double lr_at(int64_t step) const;
};

}  // namespace lathe::optim
