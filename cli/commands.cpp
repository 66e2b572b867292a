// The subcommand table of `lathe`.
#include "cli/commands.h"

#include <cstdio>

namespace lathe::cli {

// Defined in cli/cmd_<name>.cpp.
extern const Command kCmdTrain, kCmdFinetune, kCmdEval, kCmdGenerate, kCmdPrepare, kCmdExport, kCmdTokenizer,
    kCmdInspect, kCmdValidate, kCmdFederate;

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {kCmdTrain,  kCmdFinetune,  kCmdEval,    kCmdGenerate, kCmdPrepare,
                                             kCmdExport, kCmdTokenizer, kCmdInspect, kCmdValidate,
                                             kCmdFederate};
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
