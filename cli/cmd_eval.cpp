// lathe eval CONFIG|RUN_DIR|HF_DIR [--checkpoint PATH] [--set a.b=c ...] [--batches N] [--json]
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "parallel/communicator.h"
#include "train/inference.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe eval CONFIG|RUN_DIR|HF_DIR [--checkpoint PATH] [--set a.b=c ...] [--batches N] [--json]\n"
    "\n"
    "Loss (mean next-token cross-entropy, nats) and perplexity of a trained model on the\n"
    "validation split. With CONFIG, its data section and checkpoint.dir are used; with a run\n"
    "or checkpoint directory, the config stored in the checkpoint. A Hugging Face model\n"
    "directory (config.json + *.safetensors + tokenizer files, e.g. a download or a lathe\n"
    "export) is scored as it is: as HF_DIR with the data given by --set (e.g. --set\n"
    "data.source=TEXT --set data.path=corpus.txt), or as --checkpoint HF_DIR with a CONFIG\n"
    "that supplies the data. The loss is printed at full precision (%.17g).\n"
    "\n"
    "options:\n"
    "  --checkpoint PATH  a step number, step directory or rank file (default: the newest\n"
    "                     complete checkpoint), or a Hugging Face model directory\n"
    "  --set a.b=c        override a config field (repeatable)\n"
    "  --batches N        score only the first N batches (default: the whole split)\n"
    "  --json             print one JSON object (checkpoint, step, data, loss, perplexity,\n"
    "                     tokens, batches) instead of the text lines\n";

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("eval", args,
                            {{"--checkpoint", ArgKind::value}, {"--set", ArgKind::repeated}, {"--batches", ArgKind::value}, {"--json", ArgKind::flag}});
  if (a.positional.size() != 1) throw UsageError("lathe eval: expected one CONFIG file or RUN_DIR");
  const int64_t batches = a.get_int("--batches", 0);
  if (batches < 0) throw UsageError("lathe eval: --batches must be >= 0");
  auto comm = parallel::world();
  train::EvalRunResult r =
      train::eval_run(a.positional[0], a.get("--checkpoint").value_or(""), a.all("--set"), batches, comm);
  if (comm->rank() == 0 && a.has("--json")) {
    nlohmann::ordered_json j;
    j["checkpoint"] = r.checkpoint;
    j["step"] = r.step;
    j["data"] = r.data;
    if (!r.layout.empty()) j["layout"] = r.layout;
    j["loss"] = r.eval.loss;  // nlohmann writes doubles so that they read back exactly
    j["perplexity"] = r.eval.perplexity;
    j["tokens"] = r.eval.tokens;
    j["batches"] = r.eval.batches;
    std::printf("%s\n", j.dump().c_str());
  } else if (comm->rank() == 0) {
    std::printf("checkpoint: %s (step %lld)\n", r.checkpoint.c_str(), static_cast<long long>(r.step));
    std::printf("data:       %s\n", r.data.c_str());
    if (!r.layout.empty()) std::printf("layout:     %s\n", r.layout.c_str());
    // Full precision, so that two evaluations can be compared exactly.
    std::printf("val loss:   %.17g\n", r.eval.loss);
    std::printf("perplexity: %.17g\n", r.eval.perplexity);
    std::printf("tokens:     %lld in %lld batches\n", static_cast<long long>(r.eval.tokens),
                static_cast<long long>(r.eval.batches));
  }
  return kExitOk;
}

}  // namespace

extern const Command kCmdEval = {"eval", "validation loss and perplexity of a trained run", kHelp, run};

}  // namespace lathe::cli
