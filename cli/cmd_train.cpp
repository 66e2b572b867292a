// lathe train CONFIG [--set a.b=c ...] [--resume [PATH]] [--steps N]
#include <atomic>
#include <csignal>
#include <cstdio>
#include <unistd.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "configs/config.h"
#include "train/trainer.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe train CONFIG [--set a.b=c ...] [--resume [PATH]] [--steps N]\n"
    "\n"
    "Trains the model a config file describes (configs/lathe.proto): prints the resolved config,\n"
    "the parameter count and the FLOPs formula, logs to <run_dir>/metrics.jsonl (and TensorBoard\n"
    "with logging.tensorboard), evaluates and samples as configured, and writes checkpoints to\n"
    "checkpoint.dir (default <run_dir>/checkpoints). With model.init_from set it starts from those\n"
    "weights (as lathe finetune does).\n"
    "\n"
    "options:\n"
    "  --set a.b=c      override a config field (repeatable), e.g. --set optimizer.lr=1e-3\n"
    "  --resume [PATH]  continue from a checkpoint: alone, the newest complete one in\n"
    "                   checkpoint.dir (an error if there is none); with PATH, a step number,\n"
    "                   step directory, rank file or checkpoint directory (--resume=PATH is\n"
    "                   unambiguous). Without --resume the config's checkpoint.resume applies:\n"
    "                   \"auto\" (the default) continues from the newest complete checkpoint when\n"
    "                   there is one, \"never\" starts fresh.\n"
    "  --steps N        stop after global step N, saving a checkpoint there; unlike\n"
    "                   --set train.steps=N the LR schedule still spans the whole run, so a later\n"
    "                   --resume continues it exactly\n"
    "\n"
    "A resumed run continues the exact loss curve of one that never stopped (same world size).\n"
    "SIGINT/SIGTERM finish the current step, save a checkpoint and exit with 130/143; a second\n"
    "signal ends the process at once. Exit codes: 0 ok, 1 runtime error, 2 usage/config error,\n"
    "3 checkpoint/IO error, 130/143 stopped by a signal.\n";


std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  static const char msg[] =
      "\nlathe: stopping after the current step and saving a checkpoint (signal again to abort)\n";
  ssize_t n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)n;
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // the second signal gets the default action (terminate)
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// `--resume run.pbtxt` would be a config, not a checkpoint: leave it as the positional.
bool is_resume_value(const std::string& next) {
  for (const char* ext : {".pbtxt", ".prototxt", ".txtpb", ".textproto", ".json"}) {
    const std::string e(ext);
    if (next.size() >= e.size() && next.compare(next.size() - e.size(), e.size(), e) == 0) return false;
  }
  return true;
}


int run(const std::vector<std::string>& args) { return run_training("train", args, false); }

}  // namespace

int run_training(const char* command, const std::vector<std::string>& args, bool finetune) {
  const std::string cmd = command;
  std::vector<FlagSpec> flags = {{"--set", ArgKind::repeated},
                                 {"--resume", ArgKind::optional, is_resume_value},
                                 {"--steps", ArgKind::value}};
  if (finetune) flags.push_back({"--init-from", ArgKind::value});
  ParsedArgs a = parse_args(cmd, args, flags);
  if (a.positional.size() != 1)
    throw UsageError("lathe " + cmd + ": expected one CONFIG file, got " + std::to_string(a.positional.size()) +
                     " positional argument(s)");
  std::vector<std::string> overrides = a.all("--set");
  if (auto init = a.get("--init-from")) overrides.push_back("model.init_from=" + *init);
  RunConfig cfg = configs::load_config(a.positional[0], overrides);
  if (finetune && cfg.model().init_from().empty())
    throw UsageError("lathe finetune: " + a.positional[0] +
                     " has no model.init_from; set it to a Hugging Face model directory or a lathe checkpoint (or "
                     "pass --init-from PATH), or use lathe train to start from random weights");
  train::TrainOptions opts;
  if (a.has("--resume")) {
    std::string v = a.all("--resume").back();
    opts.resume = v.empty() ? "latest" : v;
  }
  opts.stop_after = a.get_int("--steps", 0);
  if (a.has("--steps") && opts.stop_after <= 0) throw UsageError("lathe " + cmd + ": --steps must be > 0");
  install_stop_handlers();
  opts.stop_flag = &g_stop_signal;
  train::TrainResult r = train::train(cfg, opts);
  if (r.stop_signal == SIGINT) return kExitSigint;
  if (r.stop_signal == SIGTERM) return kExitSigterm;
  if (r.stop_signal != 0) return 128 + r.stop_signal;
  return kExitOk;
}

extern const Command kCmdTrain = {"train", "train a model from a config file (resumable)", kHelp, run};

}  // namespace lathe::cli
