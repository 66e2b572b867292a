// Console progress line; see progress.h.
#include "train/progress.h"

#include <unistd.h>

#include <chrono>
#include <cmath>

namespace lathe::train {
namespace {

double steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// 950 -> "950", 12345 -> "12.3k", 4.2e6 -> "4.20M"
std::string human_rate(double v) {
  if (!std::isfinite(v)) return fmt("%g", v);
  if (v >= 1e9) return fmt("%.2fG", v / 1e9);
  if (v >= 1e6) return fmt("%.2fM", v / 1e6);
  if (v >= 1e4) return fmt("%.1fk", v / 1e3);
  return fmt("%.0f", v);
}

}  // namespace

Progress::Progress(ProgressOptions opt) : opt_(opt) {
  if (!opt_.out) opt_.out = stdout;
  if (opt_.log_interval < 1) opt_.log_interval = 1;
  tty_ = opt_.tty < 0 ? ::isatty(::fileno(opt_.out)) != 0 : opt_.tty != 0;
}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto n = static_cast<long long>(std::llround(s));
  char buf[48];
  if (n < 60) {
    std::snprintf(buf, sizeof(buf), "%llds", n);
  } else if (n < 3600) {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", n / 60, n % 60);
  } else if (n < 86400) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", n / 3600, (n % 3600) / 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%lldd%02lldh", n / 86400, (n % 86400) / 3600);
  }
  return buf;
}

std::string Progress::format(int64_t step, const std::map<std::string, double>& values, double eta_s) const {
  std::string line = "step " + std::to_string(step);
  if (opt_.total_steps > 0) line += "/" + std::to_string(opt_.total_steps);
  auto get = [&](const char* k, double& v) {
    auto it = values.find(k);
    if (it == values.end()) return false;
    v = it->second;
    return true;
  };
  double v = 0;
  if (get("loss", v)) line += " | loss " + fmt("%.4f", v);
  if (get("lr", v)) line += " | lr " + fmt("%.2e", v);
  if (get("grad_norm", v)) line += " | gnorm " + fmt("%.3f", v);
  if (get("tokens_per_s", v)) line += " | " + human_rate(v) + " tok/s";
  if (get("mfu", v)) line += " | MFU " + fmt("%.1f", v * 100) + "%";
  if (opt_.total_steps > 0) line += " | ETA " + format_duration(eta_s);
  return line;
}

void Progress::update(int64_t step, const std::map<std::string, double>& values) {
  update_at(step, values, steady_seconds());
}

void Progress::update_at(int64_t step, const std::map<std::string, double>& values, double now_s) {
  if (!have_start_) {
    have_start_ = true;
    start_step_ = step;
    start_time_ = now_s;
  }
  double eta = -1;
  if (opt_.total_steps > 0 && step > start_step_)
    eta = (now_s - start_time_) / static_cast<double>(step - start_step_) *
          static_cast<double>(std::max<int64_t>(opt_.total_steps - step, 0));
  last_ = format(step, values, eta);
  if (tty_) {
    std::fprintf(opt_.out, "\r%s\x1b[K", last_.c_str());
    live_ = true;
  } else if (step % opt_.log_interval == 0 || step == opt_.total_steps) {
    std::fprintf(opt_.out, "%s\n", last_.c_str());
  }
  std::fflush(opt_.out);
}

void Progress::message(const std::string& line) {
  if (tty_ && live_) {
    std::fprintf(opt_.out, "\r\x1b[K%s\n%s", line.c_str(), last_.c_str());
  } else {
    std::fprintf(opt_.out, "%s\n", line.c_str());
  }
  std::fflush(opt_.out);
}

void Progress::finish() {
  if (tty_ && live_) {
    std::fputc('\n', opt_.out);
    std::fflush(opt_.out);
  }
  live_ = false;
}

}  // namespace lathe::train
