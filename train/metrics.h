// Training metrics: one log() call fans out to a JSONL file, a TensorBoard event file
// and the console progress line.
//
// JSONL (one JSON object per line, flushed after each line, so a crashed run keeps
// everything logged so far):
//   {"config": <resolved config: object or string>, "time": 1712345678.9, "event": "start"}
//   {"step": 10, "time": ..., "loss": 3.21, "lr": 0.0003, "tokens_per_s": 12345, ...}
// Non-finite values (a diverged loss) are written as null, since JSON has no NaN.
// Only rank 0 should own a MetricsLogger.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "train/progress.h"
#include "train/tensorboard.h"

namespace lathe::train {

class JsonlWriter {
 public:
  // Creates parent directories; append=true continues an existing file (resume).
  JsonlWriter(const std::string& path, bool append = false);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  void write(const nlohmann::json& record);  // one line, flushed
  void close();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

struct MetricsOptions {
  std::string jsonl_path;       // empty: no JSONL file
  std::string tensorboard_dir;  // empty: no TensorBoard events
  bool console = true;
  bool append = false;          // resume: append to jsonl_path instead of truncating
  ProgressOptions progress;     // total_steps, log_interval, stream, tty
};

class MetricsLogger {
 public:
  // `config` (an object, a string, or null for none) becomes the first JSONL line of
  // this session.
  explicit MetricsLogger(MetricsOptions opt, const nlohmann::json& config = nullptr);
  ~MetricsLogger();

  void log(int64_t step, const std::map<std::string, double>& values);
  // A line for the console only (eval summaries, warnings).
  void message(const std::string& line);
  // A free-form JSONL record (e.g. {"event": "checkpoint", "step": 100}); adds "time".
  void log_event(nlohmann::json record);
  void finish();  // ends the progress line, flushes and closes the files

  JsonlWriter* jsonl() { return jsonl_.get(); }
  TensorBoardWriter* tensorboard() { return tb_.get(); }
  Progress* progress() { return progress_.get(); }

 private:
  MetricsOptions opt_;
  std::unique_ptr<JsonlWriter> jsonl_;
  std::unique_ptr<TensorBoardWriter> tb_;
  std::unique_ptr<Progress> progress_;
};

}  // namespace lathe::train
