// Running the `lathe` binary from tests: synchronously (exit code + output) or in the
// background (a pid to signal), plus reading metrics.jsonl.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/common/test_helpers.h"

#ifndef LATHE_BIN
#error "LATHE_BIN (path of the lathe executable) must be defined"
#endif

extern char** environ;

namespace lathe::cli_test {

struct Result {
  int rc = -1;  // exit code, or 128 + signal when killed
  std::string out;  // stdout and stderr together
};

// Single-quotes an argument for /bin/sh.
inline std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::string lathe_cmd(const std::string& args) { return sh_quote(LATHE_BIN) + " " + args; }

inline int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Runs `lathe <args>` (args already shell-quoted where needed) and waits for it.
inline Result run_lathe(const std::string& args) {
  Result r;
  std::FILE* p = ::popen((lathe_cmd(args) + " 2>&1").c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "popen failed for " << args;
    return r;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  r.rc = decode_status(::pclose(p));
  return r;
}

#ifdef LATHE_MPIRUN
// Runs `mpirun -np <np> lathe <args>` (one thread per rank, killed after timeout_s) and waits.
// out holds stdout, plus stderr unless `stderr_file` names a file to send it to.
// `env` ("NAME=value") is exported to every rank.
inline Result run_lathe_mpi(int np, const std::string& args, const std::string& stderr_file = "",
                            const std::vector<std::string>& env = {}, int timeout_s = 120) {
  Result r;
  std::string cmd = "timeout -k 5 " + std::to_string(timeout_s) + " " + std::string(LATHE_MPIRUN) + " -np " +
                    std::to_string(np) + " -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1";
  for (const auto& e : env) cmd += " -x " + e;
  cmd += " " + lathe_cmd(args) + (stderr_file.empty() ? std::string(" 2>&1") : " 2>" + sh_quote(stderr_file));
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "popen failed for " << cmd;
    return r;
  }
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  r.rc = decode_status(::pclose(p));
  return r;
}
#endif

// Starts `lathe <args>` in the background with output to `log`; returns its pid (the shell
// execs into lathe, so signals reach lathe itself).
inline pid_t spawn_lathe(const std::string& args, const std::string& log) {
  std::string cmd = "exec " + lathe_cmd(args) + " > " + sh_quote(log) + " 2>&1";
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ);
  EXPECT_EQ(rc, 0) << "posix_spawn failed";
  return pid;
}

// Polls every millisecond until `path` exists or the process exits; true if the file appeared
// while the process was still running.
inline bool wait_for_file(pid_t pid, const std::string& path, double timeout_s = 120) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    if (std::filesystem::exists(path)) return true;
    siginfo_t info{};
    // Exited already? (WNOWAIT leaves it to wait_exit to reap.)
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

inline int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return decode_status(status);
}

// step -> loss from metrics.jsonl; a step logged twice (logged again after a resume from an
// earlier checkpoint) keeps its last record.
inline std::map<int64_t, double> metrics_losses(const std::string& path) {
  std::map<int64_t, double> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && j.contains("step")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

// The last "eval" event's val_loss in metrics.jsonl (NaN when none).
inline double last_val_loss(const std::string& path) {
  double v = std::nan("");
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == "eval") v = j["val_loss"].get<double>();
  }
  return v;
}

// <dir>/corpus.txt: the first 60 kB of Tiny Shakespeare; returns its path.
inline std::string write_corpus(const test::TmpDir& tmp) {
  const std::string path = tmp / "corpus.txt";
  test::write_file(path, test::read_file("../shared/data/tinyshakespeare.txt").substr(0, 60000));
  return path;
}

// <tmp>/<name>.pbtxt: a tiny run (into <tmp>/<name>) of `model` over `data` (a whole data
// section) for `steps` steps; `extra` is appended (e.g. another section). Returns its path.
inline std::string write_config(const test::TmpDir& tmp, const std::string& name, const std::string& data, int steps,
                                const std::string& model = "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 64",
                                const std::string& extra = "") {
  const std::string path = tmp / (name + ".pbtxt");
  test::write_file(path, "name: \"" + name + "\"\nrun_dir: \"" + tmp / name + "\"\nmodel { " + model + " }\n" + data +
                             "\noptimizer { lr: 3e-3 }\ntrain { steps: " + std::to_string(steps) +
                             " micro_batch: 4 seq_len: 64 eval_batches: 2 log_interval: 1 }\n"
                             "logging { progress: NONE }\nparallel { threads_per_rank: 1 }\n" + extra);
  return path;
}

}  // namespace lathe::cli_test
