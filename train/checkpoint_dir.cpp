// Checkpoint directory protocol; see checkpoint_dir.h.
#include "train/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

const char* kComplete = "COMPLETE";
const char* kLatest = "latest";

std::string parent_of(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Removes a file or tree, reporting failures with the path.
void remove_path(const std::string& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  LATHE_REQUIRE(!ec) << "checkpoint: cannot remove '" << p << "': " << ec.message();
}

struct StepEntry {
  int64_t step;
  std::string dir;
};

// Every step_<digits> directory directly under root.
std::vector<StepEntry> step_dirs(const std::string& root) {
  std::vector<StepEntry> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec)) continue;
    std::optional<int64_t> s = parse_step_dir(e.path().string());
    if (s) out.push_back({*s, e.path().string()});
  }
  LATHE_REQUIRE(!ec) << "checkpoint: cannot list '" << root << "': " << ec.message();
  std::sort(out.begin(), out.end(), [](const StepEntry& a, const StepEntry& b) { return a.step < b.step; });
  return out;
}

// Removes *.tmp files directly inside dir.
void remove_tmp_files(const std::string& dir, std::vector<std::string>& removed) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec) && ends_with(e.path().filename().string(), ".tmp")) {
      remove_path(e.path().string());
      removed.push_back(e.path().string());
    }
  }
}

// Points `latest` at the newest complete step, or removes it when there is none.
void refresh_latest(const std::string& root) {
  std::optional<int64_t> s = latest_complete_step(root);
  if (s) {
    write_latest(root, *s);
  } else {
    std::error_code ec;
    if (fs::remove(fs::path(root) / kLatest, ec)) fsync_dir(root);
  }
}

}  // namespace

std::string step_dir(const std::string& ckpt_root, int64_t step) {
  LATHE_REQUIRE(step >= 0) << "checkpoint: step must be >= 0, got " << step;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return (fs::path(ckpt_root) / buf).string();
}

std::string rank_file_name(int rank) {
  LATHE_REQUIRE(rank >= 0) << "checkpoint: rank must be >= 0, got " << rank;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank_%05d.h5", rank);
  return buf;
}

std::string rank_file(const std::string& step_dir, int rank) {
  return (fs::path(step_dir) / rank_file_name(rank)).string();
}

std::string tmp_path(const std::string& final_path) { return final_path + ".tmp"; }

std::optional<int64_t> parse_step_dir(const std::string& path) {
  fs::path p(path);
  std::string name = p.filename().string();
  if (name.empty()) name = p.parent_path().filename().string();  // trailing slash
  if (name.rfind("step_", 0) != 0) return std::nullopt;
  std::string digits = name.substr(5);
  if (!all_digits(digits) || digits.size() > 18) return std::nullopt;
  return std::stoll(digits);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  lathe::write_file_atomic(path, text, tmp_path(path));
}

std::string prepare_step_dir(const std::string& ckpt_root, int64_t step) {
  std::string dir = step_dir(ckpt_root, step);
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    LATHE_REQUIRE(fs::is_directory(dir, ec)) << "checkpoint: '" << dir << "' exists and is not a directory";
    fs::path marker = fs::path(dir) / kComplete;
    if (fs::exists(marker, ec)) {
      // Un-complete first and make that durable, so a crash while emptying the
      // directory cannot leave a "complete" checkpoint with missing files.
      remove_path(marker.string());
      fsync_dir(dir);
      refresh_latest(ckpt_root);
    }
    for (const auto& e : fs::directory_iterator(dir, ec)) remove_path(e.path().string());
    LATHE_REQUIRE(!ec) << "checkpoint: cannot list '" << dir << "': " << ec.message();
  } else {
    fs::create_directories(dir, ec);
    LATHE_REQUIRE(!ec) << "checkpoint: cannot create '" << dir << "': " << ec.message();
  }
  fsync_dir(ckpt_root);
  return dir;
}

bool is_complete(const std::string& step_dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(step_dir) / kComplete, ec);
}

void mark_complete(const std::string& step_dir_in, const nlohmann::json& index) {
  std::string step_dir = step_dir_in;
  while (step_dir.size() > 1 && step_dir.back() == '/') step_dir.pop_back();
  LATHE_REQUIRE(index.is_object()) << "mark_complete(" << step_dir << "): the index must be a JSON object";
  LATHE_REQUIRE(index.contains("step") && index["step"].is_number_integer())
      << "mark_complete(" << step_dir << "): the index needs an integer \"step\"";
  LATHE_REQUIRE(index.contains("world_size") && index["world_size"].is_number_integer() &&
              index["world_size"].get<int64_t>() >= 1)
      << "mark_complete(" << step_dir << "): the index needs an integer \"world_size\" >= 1";
  int64_t step = index["step"].get<int64_t>();
  std::optional<int64_t> dir_step = parse_step_dir(step_dir);
  LATHE_REQUIRE(!dir_step || *dir_step == step)
      << "mark_complete(" << step_dir << "): index step " << step << " does not match the directory";
  std::error_code ec;
  LATHE_REQUIRE(fs::is_directory(step_dir, ec)) << "mark_complete: '" << step_dir << "' is not a directory";

  nlohmann::json idx = index;
  if (!idx.contains("files")) {
    nlohmann::json files = nlohmann::json::array();
    int64_t ws = idx["world_size"].get<int64_t>();
    for (int64_t r = 0; r < ws; ++r) files.push_back(rank_file_name(static_cast<int>(r)));
    idx["files"] = files;
  }
  LATHE_REQUIRE(idx["files"].is_array()) << "mark_complete(" << step_dir << "): \"files\" must be an array";
  for (const auto& f : idx["files"]) {
    LATHE_REQUIRE(f.is_string()) << "mark_complete(" << step_dir << "): \"files\" must hold file names";
    fs::path p = fs::path(step_dir) / f.get<std::string>();
    LATHE_REQUIRE(fs::is_regular_file(p, ec))
        << "cannot mark " << step_dir << " complete: " << p.string()
        << " is missing (did every rank finish writing its file?)";
  }
  if (!idx.contains("time")) {
    using namespace std::chrono;
    idx["time"] = duration<double>(system_clock::now().time_since_epoch()).count();
  }
  write_file_atomic((fs::path(step_dir) / kComplete).string(), idx.dump(2) + "\n");
  refresh_latest(parent_of(step_dir));
}

nlohmann::json read_complete(const std::string& step_dir) {
  std::string path = (fs::path(step_dir) / kComplete).string();
  std::ifstream f(path, std::ios::binary);
  LATHE_REQUIRE(f.good()) << step_dir << " is not a complete checkpoint (no COMPLETE marker)";
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const std::exception& e) {
    LATHE_FAIL() << "checkpoint: cannot parse '" << path << "': " << e.what();
  }
  return {};
}

std::vector<int64_t> complete_steps(const std::string& ckpt_root) {
  std::vector<int64_t> out;
  for (const StepEntry& e : step_dirs(ckpt_root))
    if (is_complete(e.dir)) out.push_back(e.step);
  return out;
}

std::optional<int64_t> latest_complete_step(const std::string& ckpt_root) {
  std::vector<int64_t> s = complete_steps(ckpt_root);
  if (s.empty()) return std::nullopt;
  return s.back();
}

bool repair_latest(const std::string& ckpt_root) {
  std::error_code ec;
  if (!fs::is_directory(ckpt_root, ec)) return false;
  const std::optional<int64_t> s = latest_complete_step(ckpt_root);
  const fs::path latest = fs::path(ckpt_root) / kLatest;
  std::string current;
  bool have = false;
  if (fs::is_regular_file(latest, ec)) {
    std::ifstream f(latest, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    current = ss.str();
    have = true;
  } else if (fs::is_symlink(latest, ec)) {
    have = true;  // a dangling or foreign symlink: replaced by the pointer file
    remove_path(latest.string());
  } else if (fs::exists(latest, ec)) {
    return false;  // a folder of that name is not ours to replace
  }
  if (!s) {
    if (have) refresh_latest(ckpt_root);
    return have;
  }
  const std::string want = fs::path(step_dir(ckpt_root, *s)).filename().string() + "\n";
  if (have && current == want) return false;
  write_latest(ckpt_root, *s);
  return true;
}

std::optional<std::string> follow_latest(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (p.filename() != kLatest || !fs::is_regular_file(p, ec)) return std::nullopt;
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string name = ss.str();
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  LATHE_REQUIRE(f.good() || f.eof()) << "checkpoint: cannot read '" << path << "'";
  LATHE_REQUIRE(name.find('/') == std::string::npos && parse_step_dir(name))
      << "checkpoint: '" << path << "' should name a step directory (like step_00001000), found \"" << name.substr(0, 80)
      << "\"";
  return (fs::path(parent_of(path)) / name).string();
}

void write_latest(const std::string& ckpt_root, int64_t step) {
  std::string name = fs::path(step_dir(ckpt_root, step)).filename().string();
  write_file_atomic((fs::path(ckpt_root) / kLatest).string(), name + "\n");
}

std::vector<std::string> cleanup_stale(const std::string& ckpt_root, std::optional<int64_t> in_progress) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(ckpt_root, ec)) return removed;
  std::optional<int64_t> latest = latest_complete_step(ckpt_root);
  remove_tmp_files(ckpt_root, removed);  // e.g. latest.tmp
  for (const StepEntry& e : step_dirs(ckpt_root)) {
    if (in_progress && e.step == *in_progress) continue;
    if (is_complete(e.dir)) {
      remove_tmp_files(e.dir, removed);
    } else if (latest && e.step < *latest) {
      remove_path(e.dir);
      removed.push_back(e.dir);
    }
    // An incomplete directory newer than the latest complete one may still be being
    // written by someone; prepare_step_dir empties it when that step is saved again.
  }
  if (!removed.empty()) fsync_dir(ckpt_root);
  repair_latest(ckpt_root);
  return removed;
}

std::vector<std::string> keep_last(const std::string& ckpt_root, int k) {
  LATHE_REQUIRE(k >= 1) << "keep_last(" << ckpt_root << "): k must be >= 1, got " << k;
  std::vector<std::string> removed;
  std::vector<int64_t> steps = complete_steps(ckpt_root);
  if (static_cast<int64_t>(steps.size()) <= k) return removed;
  for (size_t i = 0; i + static_cast<size_t>(k) < steps.size(); ++i) {
    std::string dir = step_dir(ckpt_root, steps[i]);
    remove_path((fs::path(dir) / kComplete).string());
    fsync_dir(dir);
    remove_path(dir);
    removed.push_back(dir);
  }
  fsync_dir(ckpt_root);
  return removed;
}

std::string resolve_resume(const std::string& spec, const std::string& ckpt_root) {
  LATHE_REQUIRE(!spec.empty()) << "resume: empty checkpoint path (use \"latest\", a step number or a path)";
  std::error_code ec;
  auto latest_in = [&](const std::string& root) {
    std::optional<int64_t> s = latest_complete_step(root);
    LATHE_REQUIRE(s) << "no complete checkpoint in " << root
                   << (fs::is_directory(root, ec) ? "" : " (the directory does not exist)");
    return step_dir(root, *s);
  };
  if (spec == "latest") {
    LATHE_REQUIRE(!ckpt_root.empty()) << "resume: \"latest\" needs the checkpoint directory";
    return latest_in(ckpt_root);
  }
  fs::path p(spec);
  if (all_digits(spec) && !ckpt_root.empty()) p = step_dir(ckpt_root, std::stoll(spec));
  if (!fs::exists(p, ec) && !ckpt_root.empty() && p.is_relative() && fs::exists(fs::path(ckpt_root) / p, ec))
    p = fs::path(ckpt_root) / p;
  LATHE_REQUIRE(fs::exists(p, ec)) << "resume: " << p.string() << " does not exist";
  p = p.lexically_normal();
  if (std::optional<std::string> named = follow_latest(p.string())) {
    LATHE_REQUIRE(is_complete(*named)) << p.string() << " names " << *named
                                       << ", which is not a complete checkpoint (no COMPLETE marker); resume from "
                                          "the checkpoint directory to use its newest complete step";
    return *named;
  }
  if (fs::is_regular_file(p, ec)) {
    std::string dir = parent_of(p.string());
    LATHE_REQUIRE(is_complete(dir)) << p.string() << " is not a complete checkpoint (no COMPLETE marker in " << dir
                                  << ")";
    return dir;
  }
  std::string dir = p.string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (is_complete(dir)) return dir;
  LATHE_REQUIRE(!parse_step_dir(dir)) << dir << " is not a complete checkpoint (no COMPLETE marker)";
  return latest_in(dir);
}

}  // namespace lathe::train
