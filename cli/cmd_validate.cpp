// lathe validate CONFIG [--set a.b=c ...]
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "configs/config.h"
#include "train/run_setup.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe validate CONFIG [--set a.b=c ...]\n"
    "\n"
    "Parses the config, applies the overrides, resolves and checks it without training and\n"
    "without a GPU. Prints \"ok\" and exits 0, or prints every problem as file:line:col: message\n"
    "(or field: message) and exits 2. Settings that are valid but that this build cannot run\n"
    "yet (e.g. train.precision BF16) are listed as notes on stderr; they do\n"
    "not change the exit code (lathe train rejects them with exit code 2).\n"
    "\n"
    "options:\n"
    "  --set a.b=c   override a config field (repeatable)\n"
    "  --print       print the resolved config after \"ok\"\n";

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("validate", args, {{"--set", ArgKind::repeated}, {"--print", ArgKind::flag}});
  if (a.positional.size() != 1)
    throw UsageError("lathe validate: expected one CONFIG file, got " + std::to_string(a.positional.size()) +
                     " positional argument(s)");
  RunConfig cfg = configs::load_config(a.positional[0], a.all("--set"));  // throws ConfigError
  std::printf("ok\n");
  for (const auto& issue : train::unsupported_features(cfg))
    std::fprintf(stderr, "note: this build cannot train it yet: %s\n", issue.c_str());
  if (a.has("--print")) std::fputs(configs::to_text(cfg).c_str(), stdout);
  return kExitOk;
}

}  // namespace

extern const Command kCmdValidate = {"validate", "check a config file without training", kHelp, run};

}  // namespace lathe::cli
