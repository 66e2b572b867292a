// The subcommand table of `lathe`.
#include "cli/commands.h"

#include <cstdio>

namespace lathe::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"train", "train a model from a config file (resumable)", kTrainHelp, run_train},
      {"eval", "validation loss and perplexity of a trained run", kEvalHelp, run_eval},
      {"generate", "sample text from a checkpoint", kGenerateHelp, run_generate},
      {"inspect", "show a checkpoint's step, config and tensors", kInspectHelp, run_inspect},
      {"validate", "check a config file without training", kValidateHelp, run_validate},
  };
  return table;
}

bool print_help_if_asked(const std::vector<std::string>& args, const char* help) {
  for (const auto& a : args) {
    if (a == "--") break;
    if (a == "-h" || a == "--help") {
      std::fputs(help, stdout);
      return true;
    }
  }
  return false;
}

}  // namespace lathe::cli
