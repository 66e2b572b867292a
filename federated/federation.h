// Federated fine-tuning over MPI (`mpirun -np N lathe federate run.pbtxt`): rank 0 is the
// server, ranks 1..N-1 host the clients (configs/lathe.proto FederatedConfig has the knobs).
//
// Setup (collective): every rank plans the run (train/run_plan.h; the schedule spans one
// local round: train.steps = federated.local_steps), builds the model and injects the adapters
// (peft section), and computes the same partition of the training split; the server then
// broadcasts every adapter tensor (LoRA-SB's data-derived frozen factors, FFA-LoRA's shared A,
// or the state of a resumed federation), so every rank starts from its model.
//
// A round: the server samples max(min_clients, round(fraction * clients)) clients (a seeded
// draw of the round number, so a resumed federation samples the same), sends each client rank
// one ServerMessage (federated/federated.proto) with the global tensors of the strategy and
// its clients; the rank trains them one after another on its one model (adapter reset to the
// global one, fresh optimizer state, the client's data position carried from earlier rounds)
// and uploads one ClientUpdate per client. The server takes what arrives before the round's
// deadline (late or failed clients are left out and logged), averages with weights p_k = n_k
// / sum n_j, evaluates, logs and checkpoints. Strategies (../shared/specs/federated.md):
//   FEDAVG    A <- sum p_k A_k, B <- sum p_k B_k (inexact: misses sum p_k (B_k - B)(A_k - A))
//   FFA_LORA  A frozen at its shared init, B <- sum p_k B_k (exact)
//   FLORA     per-client ranks r_k, fresh adapters each round; the server stacks
//             [p_1 A_1; ...] and [s B_1, ...], merges B_stk A_stk = sum p_k s B_k A_k into the
//             base of every rank (exact), adapters re-initialised
//   FED_SB    LoRA-SB (A, B frozen), R <- sum p_k R_k (exact; r^2 per matrix each way)
//
// Process death (Open MPI 4.1 has no ULFM; launch with mpirun --enable-recovery so that a dead
// process does not end the job): the server tracks what each client rank owes it (uploads, the
// final goodbye); a rank silent for federated.server_timeout_s while owing is declared dead
// (logged with its rank), its clients are left out of that and later rounds and it is never sent
// to again; the federation finishes without it. A client rank that hears nothing from the server
// for server_timeout_s aborts (exit 70) naming the receive from rank 0. Limit: a rank that dies
// half-way through sending an upload leaves the server's payload receive to the communicator
// timeout (abort), which the tests do not cover.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "core/tensor.h"
#include "models/model.h"
#include "parallel/communicator.h"

namespace lathe::federated {

struct FederateOptions {
  std::shared_ptr<parallel::Communicator> comm;  // null = parallel::world()
  // "" or "never": fresh; "latest": the newest round checkpoint in checkpoint.dir (must exist);
  // "auto": the newest if any.
  std::string resume;
  // > 0: the server stops after this round's checkpoint (as a crash would), telling clients to stop.
  int stop_after_round = 0;
  std::FILE* out = stdout;  // rank 0's console; null = quiet
  // Tests: keep the last round's accepted updates and the effective weights before and after it.
  bool keep_updates = false;
};

struct RoundRecord {
  int round = 0;
  std::vector<int> sampled, aggregated, dropped;  // client ids
  double val_loss = -1;                           // -1 when not evaluated
  double train_loss = 0;                          // weighted mean of the aggregated clients'
  int64_t bytes_up = 0, bytes_down = 0;
  double seconds = 0;
  double epsilon = 0;  // DP: the largest epsilon any client has spent so far (0 without DP)
};

struct ReceivedUpdate {
  int client = 0;
  int64_t num_examples = 0;
  int rank = 0;  // FLORA: its LoRA rank
  std::map<std::string, Tensor> tensors;
};

struct FederationResult {
  int start_round = 0;  // rounds done before this call (resume)
  std::vector<RoundRecord> rounds;
  std::vector<int64_t> client_sizes;  // partition: samples per client
  double initial_val_loss = -1;      // the global model before the first round (fresh start)
  int64_t setup_bytes = 0;            // the initial broadcast of the adapter tensors (per client rank)
  double scale = 1;                   // the adapters' s = alpha / r
  // keep_updates (rank 0): the last round's accepted updates, and module -> W + s B (R) A.
  std::vector<ReceivedUpdate> last_updates;
  std::map<std::string, Tensor> weights_before, weights_after;
  std::map<std::string, Tensor> global_before;  // the adapter tensors before that round
  // Rank 0: the global adapter tensors at the end (name -> tensor), for comparisons.
  std::map<std::string, Tensor> global;
};

// Runs the federation; collective over opts.comm (size >= 2). Config errors are
// configs::ConfigError; checkpoint problems train::CheckpointError.
FederationResult federate(const RunConfig& cfg, const FederateOptions& opts = {});

// module name -> base weight + s B (R) A of every adapted layer (f32 CPU copies).
std::map<std::string, Tensor> effective_weights(models::CausalLM& model);

}  // namespace lathe::federated
