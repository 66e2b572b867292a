// The subcommands of `lathe`. Adding one: a cli/cmd_<name>.cpp defining
// `extern const Command kCmd<Name> = {name, summary, help, run};` and one entry (plus its
// extern line) in the table in commands.cpp.
#pragma once

#include <string>
#include <vector>

namespace lathe::cli {

// Exit codes that scripts can rely on (also listed in `lathe --help`).
constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;     // any other failure
constexpr int kExitUsage = 2;       // bad command line or config (ConfigError)
constexpr int kExitIo = 3;          // checkpoint or file I/O (IoError, CheckpointError)
constexpr int kExitSigint = 130;    // train stopped by SIGINT after saving a checkpoint (128 + 2)
constexpr int kExitSigterm = 143;   // train stopped by SIGTERM after saving a checkpoint (128 + 15)

struct Command {
  const char* name;
  const char* summary;  // one line for `lathe --help`
  const char* help;     // full text for `lathe <name> --help`
  // Runs with the arguments after the subcommand name; returns the exit code. Throws
  // UsageError, ConfigError, IoError or lathe::Error (main maps them to exit codes).
  int (*run)(const std::vector<std::string>& args);
};

const std::vector<Command>& commands();

// `lathe train` and `lathe finetune` (cmd_train.cpp): parses CONFIG, --set, --resume, --steps
// (and for finetune --init-from), trains with SIGINT/SIGTERM handling and returns the exit
// code. finetune requires model.init_from.
int run_training(const char* command, const std::vector<std::string>& args, bool finetune);

// Prints `help` when args hold -h/--help (returns true then).
bool print_help_if_asked(const std::vector<std::string>& args, const char* help);

}  // namespace lathe::cli
