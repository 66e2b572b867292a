// The peft section of a RunConfig (configs/lathe.proto PeftConfig) as peft::PeftOptions, and
// where a run writes its adapter. The Trainer injects the adapters after the base weights are
// loaded (train/trainer.h).
#pragma once

#include <string>

#include "configs/config.h"
#include "peft/inject.h"

namespace lathe::train {

// Whether the run fine-tunes adapters (peft.method is not OFF).
bool peft_enabled(const RunConfig& cfg);
// cfg.peft() -> options (method LORA; the config was validated). The map fields have no order
// in protobuf: rank_pattern / alpha_pattern keys are tried longest first, then by name.
peft::PeftOptions peft_options(const RunConfig& cfg);
// peft.adapter_dir, or <run_dir>/adapter.
std::string adapter_dir(const RunConfig& cfg);

}  // namespace lathe::train
