// lathe generate --checkpoint PATH|RUN_DIR [--prompt TEXT] [--max-new-tokens N] ...
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "parallel/communicator.h"
#include "train/inference.h"
#include "train/trainer.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe generate --checkpoint PATH|RUN_DIR [--prompt TEXT] [--max-new-tokens N]\n"
    "                      [--temperature T] [--top-k K] [--top-p P] [--seed S] [--set a.b=c ...]\n"
    "\n"
    "Continues a prompt with a trained model and prints prompt + continuation. Defaults come\n"
    "from the sample section of the config stored in the checkpoint. The same checkpoint,\n"
    "prompt and seed give the same text. PATH may also be a Hugging Face model directory\n"
    "(config.json + *.safetensors + tokenizer files, e.g. a download or a lathe export),\n"
    "sampled as it is with the default sample settings.\n"
    "Under mpirun -np N the model runs tensor-parallel with the config's\n"
    "parallel.tensor_parallel (override with --set): each rank reads its own shard of a\n"
    "checkpoint written with that degree, or slices a whole one (another degree, a Hugging\n"
    "Face directory); the KV cache, Ladder residual's asynchronous all-reduce included, runs on\n"
    "the shards, and rank 0 prints. Greedy output equals the one-process output.\n"
    "\n"
    "options:\n"
    "  --checkpoint PATH   rank file, step directory, checkpoint directory, run directory\n"
    "                      (newest complete step) or Hugging Face model directory; may also\n"
    "                      be given as the only positional\n"
    "  --prompt TEXT       text to continue (empty: start from a newline)\n"
    "  --max-new-tokens N  tokens to generate\n"
    "  --temperature T     0 = greedy (argmax); higher = more random\n"
    "  --top-k K           sample among the K most likely tokens (0 = all)\n"
    "  --top-p P           nucleus sampling: the smallest set with probability >= P (1 = off)\n"
    "  --seed S            sampling seed\n"
    "  --set a.b=c         override a field of the stored config (e.g. data.tokenizer)\n";

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("generate", args,
                            {{"--checkpoint", ArgKind::value},
                             {"--prompt", ArgKind::value},
                             {"--max-new-tokens", ArgKind::value},
                             {"--temperature", ArgKind::value},
                             {"--top-k", ArgKind::value},
                             {"--top-p", ArgKind::value},
                             {"--seed", ArgKind::value},
                             {"--set", ArgKind::repeated}});
  std::string path = a.get("--checkpoint").value_or("");
  if (path.empty() && a.positional.size() == 1) path = a.positional[0];
  if (path.empty() || a.positional.size() > (a.has("--checkpoint") ? 0u : 1u))
    throw UsageError("lathe generate: expected --checkpoint PATH (a checkpoint or run directory)");
  auto world = parallel::world();
  train::LoadedRun run = train::load_trained(path, a.all("--set"), world);
  SampleConfig s = run.cfg.sample();
  if (auto p = a.get("--prompt")) s.set_prompt(*p);
  s.set_max_new_tokens(static_cast<int32_t>(a.get_int("--max-new-tokens", s.max_new_tokens())));
  s.set_temperature(a.get_double("--temperature", s.temperature()));
  s.set_top_k(static_cast<int32_t>(a.get_int("--top-k", s.top_k())));
  s.set_top_p(a.get_double("--top-p", s.top_p()));
  s.set_seed(static_cast<uint64_t>(a.get_int("--seed", static_cast<int64_t>(s.seed()))));
  if (s.max_new_tokens() < 0) throw UsageError("lathe generate: --max-new-tokens must be >= 0");
  if (s.temperature() < 0) throw UsageError("lathe generate: --temperature must be >= 0");
  if (s.top_k() < 0) throw UsageError("lathe generate: --top-k must be >= 0");
  if (!(s.top_p() > 0 && s.top_p() <= 1)) throw UsageError("lathe generate: --top-p must be in (0, 1]");
  if (run.layout && run.layout->tensor_parallel() > 1 && world->rank() == 0)
    std::fprintf(stderr, "lathe generate: tensor parallel (%s)\n", run.layout->name().c_str());
  std::string text = train::sample_text(*run.model, *run.tokenizer, s);
  // Every rank decodes (the tensor-parallel ranks together; replicas the same tokens).
  if (world->rank() == 0) std::fputs((s.prompt() + text + "\n").c_str(), stdout);
  return kExitOk;
}

}  // namespace

extern const Command kCmdGenerate = {"generate", "sample text from a checkpoint", kHelp, run};

}  // namespace lathe::cli
