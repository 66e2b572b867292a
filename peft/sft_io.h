// SpIEL adapters on disk. Hugging Face peft has no sparse fine-tuning type, so lathe writes
// the layout of the SpIEL reference's peft fork (AlanAnsell/peft, tuners/sft), which is also
// the closest thing to a standard:
//   adapter_config.json        {"peft_type": "SFT", "task_type": "CAUSAL_LM",
//                               "base_model_name_or_path", "target_modules": [HF module names],
//                               "num_deltas": {HF module name: k}, ...}
//   adapter_model.safetensors  base_model.model.<HF module>.sft_delta.values   F32 [k]
//                              base_model.model.<HF module>.sft_delta.indices  I64 [k]
// Indices are flat row-major indices into the Hugging Face weight as stored: [out, in] for a
// Linear, [in, out] for GPT-2's Conv1D (so they are transposed with respect to lathe's
// [out, in]). GPT-2's c_attn holds lathe's q, k and v: their entries are written one after the
// other (q's, then k's, then v's), rows offset by the block; a file read back splits them by
// row, so lathe's own files come back slot for slot. The merged delta is W.flat[indices] +=
// values, which is all a reader needs (e.g. a few lines of numpy on the exported weights).
#pragma once

#include <string>

#include "models/model.h"
#include "peft/inject.h"

namespace lathe::peft {

// Writes dir/adapter_model.safetensors and dir/adapter_config.json for the model's
// SparseDeltaLinear layers (unmerged).
void save_spiel_adapter(models::CausalLM& model, const std::string& dir, const std::string& base_model = "");

// Reads such a directory into `model`: modules that already carry a SparseDeltaLinear must
// have the file's budget and get its indices and values; the others are wrapped. Everything
// but the values is frozen afterwards. Errors name the file and the tensor.
InjectResult load_spiel_adapter(models::CausalLM& model, const std::string& dir);

// True when dir/adapter_config.json says peft_type "SFT".
bool is_spiel_adapter(const std::string& dir);

}  // namespace lathe::peft
