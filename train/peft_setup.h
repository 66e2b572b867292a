// The peft section of a RunConfig (configs/lathe.proto PeftConfig) as peft::PeftOptions, and
// where a run writes its adapter. The Trainer injects the adapters after the base weights are
// loaded (train/trainer.h).
#pragma once

#include <string>

#include "configs/config.h"
#include "core/device.h"
#include "models/model.h"
#include "parallel/communicator.h"
#include "peft/inject.h"
#include "train/checkpoint.h"
#include "train/parallel_layout.h"

namespace lathe::train {

class TrainBatches;

// Whether the run fine-tunes adapters (peft.method is not OFF).
bool peft_enabled(const RunConfig& cfg);
// cfg.peft() -> options (method and its options; the config was validated). The map fields have no order
// in protobuf: rank_pattern / alpha_pattern keys are tried longest first, then by name.
peft::PeftOptions peft_options(const RunConfig& cfg);
// peft.adapter_dir, or <run_dir>/adapter.
std::string adapter_dir(const RunConfig& cfg);

// LoRA-SB's gradient init (peft/lora_sb.h), run once before training on a fresh start: the
// gradients of every LoraSbLinear's base weight summed over the next `num_batches`
// micro-batches of `batches` (a loader of its own, so the run's data position is untouched:
// they are the run's first batches), in eval mode (no dropout drawn), each micro-batch's mean
// token loss as the trainer computes it (bf16 compute under Autocast when `bf16`), summed
// over the ranks; then init_from_gradient(G, eta) on every such layer. The base weights are
// frozen again and every gradient dropped afterwards. Returns how many layers it initialised.
// With a tensor-parallel `layout` (comm then its data-parallel group): each rank's gradient
// slices are gathered over the TP group into the whole G, the init is computed from it as in
// one process, and each rank keeps its slices of A and B (parallel/tp_lora.h).
int64_t init_adapters_from_gradients(models::CausalLM& model, const peft::PeftOptions& opts, TrainBatches& batches,
                                     int64_t num_batches, double eta, Device device, bool bf16,
                                     parallel::Communicator& comm, const ParallelLayout* layout = nullptr);

// LoRA-SB's frozen A and B of every layer, by parameter name (stored under "peft/").
std::vector<std::pair<std::string, Tensor>> frozen_adapter_factors(models::CausalLM& model);
// The checkpoint part of an adapter's frozen but data-dependent tensors (LoRA-SB's A and B,
// computed from the base and the first batches): peft/<module>.lora_A.weight, ..., so a
// resumed run has them without recomputing. Null when the model has none.
std::shared_ptr<CheckpointPart> frozen_adapter_part(models::CausalLM& model);

// After every optimizer update: the method's own step (SoRA's proximal step on the gates).
void after_optimizer_step(models::CausalLM& model, const peft::PeftOptions& opts, double lr, int64_t step);

}  // namespace lathe::train
