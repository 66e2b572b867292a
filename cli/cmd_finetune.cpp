// lathe finetune CONFIG [--init-from PATH] [--set a.b=c ...] [--resume [PATH]] [--steps N]
#include "cli/commands.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe finetune CONFIG [--init-from PATH] [--set a.b=c ...] [--resume [PATH]] [--steps N]\n"
    "\n"
    "lathe train, starting from pretrained weights: model.init_from (or --init-from) must name\n"
    "a Hugging Face model directory (config.json + *.safetensors, e.g. a download of gpt2 or\n"
    "Qwen2-0.5B, or the output of lathe export) or a lathe checkpoint (step directory,\n"
    "checkpoint directory or run directory).\n"
    "\n"
    "The source defines the architecture: its config replaces the config file's model fields\n"
    "(all but model.dropout; a note lists what was replaced). data.tokenizer \"auto\" (the\n"
    "default) uses the source's tokenizer: the Hugging Face directory's tokenizer.json, or the\n"
    "tokenizer the lathe run used. train.seq_len 0 means the source's context length. The\n"
    "banner says what was loaded. Instruction data (data.source JSONL with data.format\n"
    "PROMPT_RESPONSE, ALPACA or CHAT, or HDF5 shards from lathe prepare) is trained on the\n"
    "response tokens only (data.mask_prompt).\n"
    "\n"
    "With a peft section (e.g. peft { method: LORA r: 8 target_modules: \"all-linear\" }) only\n"
    "LoRA adapters train, with Hugging Face peft's matching rules; checkpoints hold the adapters\n"
    "(the base is reloaded from model.init_from on --resume) and the run ends by writing\n"
    "<run_dir>/adapter (adapter_model.safetensors + adapter_config.json, the peft layout).\n"
    "lathe export --adapter-only or --merge writes the adapter or the merged model.\n"
    "\n"
    "options:\n"
    "  --init-from PATH  the same as --set model.init_from=PATH\n"
    "  --set a.b=c       override a config field (repeatable)\n"
    "  --resume [PATH]   continue a fine-tuning run from its checkpoint (the pretrained weights\n"
    "                    are not loaded again); as for lathe train\n"
    "  --steps N         stop after global step N with a checkpoint; as for lathe train\n"
    "\n"
    "Under mpirun each rank loads the weights and trains on its shard of every batch.\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage/config error (also: no model.init_from, data\n"
    "tokenized with another tokenizer), 3 checkpoint/IO error, 130/143 stopped by a signal.\n";

int run(const std::vector<std::string>& args) { return run_training("finetune", args, true); }

}  // namespace

extern const Command kCmdFinetune = {"finetune", "fine-tune pretrained weights (HF or lathe) from a config", kHelp,
                                     run};

}  // namespace lathe::cli
