// lathe eval CONFIG|RUN_DIR [--checkpoint PATH] [--set a.b=c ...] [--batches N]
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "parallel/communicator.h"
#include "train/inference.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe eval CONFIG|RUN_DIR [--checkpoint PATH] [--set a.b=c ...] [--batches N]\n"
    "\n"
    "Loss (mean next-token cross-entropy, nats) and perplexity of a trained model on the\n"
    "validation split. With CONFIG, its data section and checkpoint.dir are used; with a run\n"
    "or checkpoint directory, the config stored in the checkpoint.\n"
    "\n"
    "options:\n"
    "  --checkpoint PATH  a step number, step directory or rank file (default: the newest\n"
    "                     complete checkpoint)\n"
    "  --set a.b=c        override a config field (repeatable)\n"
    "  --batches N        score only the first N batches (default: the whole split)\n";

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("eval", args,
                            {{"--checkpoint", ArgKind::value}, {"--set", ArgKind::repeated}, {"--batches", ArgKind::value}});
  if (a.positional.size() != 1) throw UsageError("lathe eval: expected one CONFIG file or RUN_DIR");
  const int64_t batches = a.get_int("--batches", 0);
  if (batches < 0) throw UsageError("lathe eval: --batches must be >= 0");
  auto comm = parallel::world();
  train::EvalRunResult r =
      train::eval_run(a.positional[0], a.get("--checkpoint").value_or(""), a.all("--set"), batches, *comm);
  if (comm->rank() == 0) {
    std::printf("checkpoint: %s (step %lld)\n", r.checkpoint.c_str(), static_cast<long long>(r.step));
    std::printf("data:       %s\n", r.data.c_str());
    std::printf("val loss:   %.6f\n", r.eval.loss);
    std::printf("perplexity: %.6f\n", r.eval.perplexity);
    std::printf("tokens:     %lld in %lld batches\n", static_cast<long long>(r.eval.tokens),
                static_cast<long long>(r.eval.batches));
  }
  return kExitOk;
}

}  // namespace

extern const Command kCmdEval = {"eval", "validation loss and perplexity of a trained run", kHelp, run};

}  // namespace lathe::cli
