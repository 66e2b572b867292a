// Metrics fan-out; see metrics.h.
#include "train/metrics.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/fs.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

double unix_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// A file that cannot be written (a full disk) is an I/O error: exit code 3 in the CLI.
[[noreturn]] void io_fail(const std::string& msg) { throw IoError("metrics", msg); }

}  // namespace

JsonlWriter::JsonlWriter(const std::string& path, bool append) : path_(path) {
  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec) io_fail("cannot create directory '" + parent.string() + "': " + ec.message());
  }
  f_ = std::fopen(path.c_str(), append ? "ab" : "wb");
  if (!f_) io_fail("cannot open '" + path + "': " + std::strerror(errno));
}

JsonlWriter::~JsonlWriter() {
  if (f_) std::fclose(f_);
}

void JsonlWriter::write(const nlohmann::json& record) {
  LATHE_REQUIRE(f_) << "metrics: writing to closed file '" << path_ << "'";
  // dump() escapes newlines inside strings, so a record is always exactly one line.
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    io_fail("cannot write to '" + path_ + "': " + std::strerror(errno));
}

void JsonlWriter::close() {
  if (!f_) return;
  std::FILE* f = f_;
  f_ = nullptr;
  if (std::fclose(f) != 0) io_fail("cannot close '" + path_ + "': " + std::strerror(errno));
}

MetricsLogger::MetricsLogger(MetricsOptions opt, const nlohmann::json& config) : opt_(std::move(opt)) {
  if (!opt_.jsonl_path.empty()) {
    jsonl_ = std::make_unique<JsonlWriter>(opt_.jsonl_path, opt_.append);
    nlohmann::json head = {{"event", "start"}, {"time", unix_seconds()}};
    if (!config.is_null()) head["config"] = config;
    jsonl_->write(head);
  }
  if (!opt_.tensorboard_dir.empty()) tb_ = std::make_unique<TensorBoardWriter>(opt_.tensorboard_dir);
  if (opt_.console) progress_ = std::make_unique<Progress>(opt_.progress);
}

MetricsLogger::~MetricsLogger() {
  try {
    finish();
  } catch (...) {
  }
}

void MetricsLogger::log(int64_t step, const std::map<std::string, double>& values) {
  if (jsonl_) {
    nlohmann::json rec = {{"step", step}, {"time", unix_seconds()}};
    for (const auto& [k, v] : values) {
      LATHE_REQUIRE(k != "step" && k != "time") << "metrics: '" << k << "' is a reserved key";
      rec[k] = number_or_null(v);
    }
    jsonl_->write(rec);
  }
  if (tb_) {
    tb_->add_scalars(step, values);
    tb_->flush();
  }
  if (progress_) progress_->update(step, values);
}

void MetricsLogger::message(const std::string& line) {
  if (progress_) progress_->message(line);
}

void MetricsLogger::log_event(nlohmann::json record) {
  if (!jsonl_) return;
  LATHE_REQUIRE(record.is_object()) << "metrics: log_event needs a JSON object";
  if (!record.contains("time")) record["time"] = unix_seconds();
  jsonl_->write(record);
}

void MetricsLogger::finish() {
  if (progress_) progress_->finish();
  if (jsonl_) jsonl_->close();
  if (tb_) tb_->close();
}

}  // namespace lathe::train
