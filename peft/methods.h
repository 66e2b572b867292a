// The members of the LoRA family behind one switch (PeftOptions::method): which layer a
// planned adapter becomes, how many parameters it trains, and the work some of them need
// around training (LoRA-SB's gradient init before it, SoRA's proximal step after every update).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "peft/inject.h"

namespace lathe::peft {

// The adapter for one planned module (rank and alpha already resolved into `lo`). `gen` is the
// injection's init stream (LoRA's A, SoRA's A and gate, LoRA-XS's R); NOLA keys its bases by
// (opts.seed, name) instead.
std::shared_ptr<LoraLinear> make_adapter(std::shared_ptr<models::LinearLayer> base, const std::string& name,
                                         const LoraOptions& lo, const PeftOptions& opts, Generator& gen,
                                         Generator* dropout_gen);

// Trainable elements of one planned adapter, from the method's formula (no model needed):
//   LoRA r (in + out), LoRA-SB / LoRA-XS r^2, SoRA r (in + out) + r, NOLA k_A + k_B.
int64_t adapter_parameter_count(const PeftOptions& opts, const PlannedAdapter& a);

}  // namespace lathe::peft
