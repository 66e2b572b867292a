// lathe federate CONFIG [--set a.b=c ...] [--resume] [--stop-after-round N]   (under mpirun)
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "configs/config.h"
#include "federated/federation.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: mpirun -np N lathe federate CONFIG [--set a.b=c ...] [--resume] [--stop-after-round R]\n"
    "\n"
    "Federated fine-tuning (the config's federated section; configs/lathe.proto FederatedConfig):\n"
    "rank 0 is the server, ranks 1..N-1 host the clients (client k on rank 1 + k % (N-1), trained one\n"
    "after another), N >= 2. Strategies FEDAVG, FFA_LORA, FLORA (peft.method LORA) and FED_SB\n"
    "(peft.method LORA_SB). Each round is logged to <run_dir>/federated.jsonl (per-client lines too),\n"
    "and the server writes checkpoint.dir/round_NNNNNN.h5 after every round.\n"
    "\n"
    "options:\n"
    "  --set a.b=c             override a config field (repeatable)\n"
    "  --resume                continue from the newest round checkpoint in checkpoint.dir (bit-exact\n"
    "                          with a federation that never stopped)\n"
    "  --stop-after-round R    stop after round R's checkpoint (clients are told to stop)\n"
    "\n"
    "Clients that fail or miss federated.round_deadline_s are left out of that round; a client rank\n"
    "that hears nothing from the server for federated.server_timeout_s ends the job (exit 70).\n"
    "Launch with `mpirun --enable-recovery ...` so that a client process that dies does not end the\n"
    "job: a client rank that owes messages and is silent for server_timeout_s is declared dead, its\n"
    "clients are left out from then on (logged with the rank) and the federation finishes.\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage/config error, 3 checkpoint/IO error.\n";

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("federate", args,
                            {{"--set", ArgKind::repeated}, {"--resume", ArgKind::flag}, {"--stop-after-round", ArgKind::value}});
  if (a.positional.size() != 1)
    throw UsageError("lathe federate: expected one CONFIG file, got " + std::to_string(a.positional.size()) +
                     " positional argument(s)");
  RunConfig cfg = configs::load_config(a.positional[0], a.all("--set"));
  federated::FederateOptions o;
  if (a.has("--resume")) o.resume = "latest";
  o.stop_after_round = static_cast<int>(a.get_int("--stop-after-round", 0));
  if (a.has("--stop-after-round") && o.stop_after_round <= 0)
    throw UsageError("lathe federate: --stop-after-round must be > 0");
  federated::federate(cfg, o);
  return kExitOk;
}

}  // namespace

extern const Command kCmdFederate = {"federate", "federated fine-tuning under mpirun (server + clients)", kHelp, run};

}  // namespace lathe::cli
