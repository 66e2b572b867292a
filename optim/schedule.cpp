#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace lathe::optim {

double Schedule::lr_at(int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps) return base_lr * static_cast<double>(step) / warmup_steps;
  if (kind == ScheduleKind::constant) return base_lr;
  const double min_lr = base_lr * min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps);
  double frac = std::clamp(static_cast<double>(step - warmup_steps) / decay_steps, 0.0, 1.0);
  if (kind == ScheduleKind::linear) return base_lr + (min_lr - base_lr) * frac;
  return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(M_PI * frac));
}

}  // namespace lathe::optim
