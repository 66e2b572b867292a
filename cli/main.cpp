// lathe: the command-line entry point. Dispatches to a subcommand (commands.cpp) and maps
// errors to the documented exit codes.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "configs/config.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/threads.h"
#include "train/checkpoint.h"

namespace {

using namespace lathe::cli;

void print_usage(std::FILE* f) {
  std::fprintf(f, "usage: lathe <command> [options]   (lathe <command> --help for its options)\n\ncommands:\n");
  for (const auto& c : commands()) std::fprintf(f, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(f,
               "\nexit codes:\n"
               "  0    success\n"
               "  1    runtime error\n"
               "  2    usage or config error (bad flag, bad config file, failed validation)\n"
               "  3    checkpoint or file I/O error (unreadable/incompatible checkpoint, disk)\n"
               "  130  train stopped by SIGINT after saving a checkpoint (resume with --resume)\n"
               "  143  train stopped by SIGTERM after saving a checkpoint\n"
               "\nRun under MPI for data parallelism: mpirun -np N lathe train run.pbtxt\n");
}

}  // namespace

namespace {
int run_main(int argc, char** argv) {
  // With the pthreads OpenBLAS, idle OpenMP and OpenBLAS workers sleep instead of spinning, so
  // the other pool gets the cores (parallel/threads.h; bench/README.md sections 4, 6 and 20).
  // Both runtimes read the variables when they are loaded, before main: hence one re-exec
  // with them set. Explicit values are kept; if the exec fails lathe simply runs on.
  if (lathe::parallel::set_runtime_env_defaults()) execv("/proc/self/exe", argv);
  std::string prefix = "lathe: ";
  try {
    if (lathe::parallel::launched_by_mpi()) {
      auto comm = lathe::parallel::init_mpi(&argc, &argv);
      if (comm->size() > 1) prefix = "lathe[rank " + std::to_string(comm->rank()) + "]: ";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lathe: cannot initialize MPI: %s\n", e.what());
    return kExitRuntime;
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    print_usage(stderr);
    return kExitUsage;
  }
  if (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    print_usage(stdout);
    return kExitOk;
  }
  if (args[0] == "--version") {
    std::printf("lathe 0.1.0\n");
    return kExitOk;
  }
  const Command* cmd = nullptr;
  std::vector<std::string> names;
  for (const auto& c : commands()) {
    names.push_back(c.name);
    if (args[0] == c.name) cmd = &c;
  }
  if (!cmd) {
    std::string hint = closest_name(args[0], names);
    std::fprintf(stderr, "lathe: unknown command '%s'%s; run 'lathe --help' for the list\n", args[0].c_str(),
                 hint.empty() ? "" : (" (did you mean '" + hint + "'?)").c_str());
    return kExitUsage;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (print_help_if_asked(rest, cmd->help)) return kExitOk;
    return cmd->run(rest);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s%s\nrun 'lathe %s --help' for usage\n", prefix.c_str(), e.what(), cmd->name);
    return kExitUsage;
  } catch (const lathe::configs::ConfigError& e) {
    std::fprintf(stderr, "%sconfig error: %s\n", prefix.c_str(), e.what());
    return kExitUsage;
  } catch (const lathe::train::IoError& e) {
    std::fprintf(stderr, "%serror: %s\n", prefix.c_str(), e.what());
    return kExitIo;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%serror: %s\n", prefix.c_str(), e.what());
    return kExitRuntime;
  }
}
}  // namespace

int main(int argc, char** argv) {
  const int status = run_main(argc, argv);
  // MPI is finalized at exit; if that can hang on a dead rank, its watchdog exits with this.
  lathe::parallel::note_exit_status(status);
  return status;
}
