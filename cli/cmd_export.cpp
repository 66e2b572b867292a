// lathe export --checkpoint PATH|RUN_DIR --out DIR [--dtype f32|bf16|f16] [--max-shard-mb N] [--merge | --adapter-only]
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/fs.h"
#include "data/hf_tokenizer_files.h"
#include "models/hf_export.h"
#include "peft/adapter_io.h"
#include "peft/sft_io.h"
#include "train/peft_setup.h"
#include "train/inference.h"

namespace fs = std::filesystem;

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe export --checkpoint PATH|RUN_DIR --out DIR [--dtype f32|bf16|f16] [--max-shard-mb N]\n"
    "                    [--merge | --adapter-only]\n"
    "\n"
    "Writes a trained model as a Hugging Face transformers checkpoint: DIR/config.json and\n"
    "DIR/model.safetensors (GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM layout), plus\n"
    "the run's tokenizer files (tokenizer.json, or vocab.json + merges.txt, and\n"
    "tokenizer_config.json when present) when it used one; the byte tokenizer has no Hugging\n"
    "Face file and is noted instead. A GPT-2-format tokenizer (vocab.json + merges.txt) also\n"
    "gets a tokenizer.json, and a tokenizer without tokenizer_config.json gets one naming\n"
    "PreTrainedTokenizerFast and its bos/eos/pad tokens, so AutoTokenizer loads every export.\n"
    "The tokenizer's bos/eos/pad ids go into config.json and generation_config.json.\n"
    "transformers' from_pretrained(DIR) and lathe's model.init_from: DIR both load the result.\n"
    "\n"
    "options:\n"
    "  --checkpoint PATH  rank file, step directory, checkpoint directory or run directory\n"
    "                     (newest complete step); may also be given as the only positional\n"
    "  --out DIR          output directory (created; weight files of an earlier export there\n"
    "                     are replaced)\n"
    "  --dtype D          f32 (default), bf16 or f16 (round to nearest even)\n"
    "  --max-shard-mb N   split the weights into shards of at most N MiB with an index\n"
    "                     (model.safetensors.index.json); 0 = one file (default)\n"
    "  --merge            for an adapter fine-tuning run (a peft section): merge the adapters\n"
    "                     into the base weights (in f32) and write the merged model (the default)\n"
    "  --adapter-only     for such a run: write only the adapter in the Hugging Face peft layout\n"
    "                     (DIR/adapter_model.safetensors + adapter_config.json, for\n"
    "                     PeftModel.from_pretrained(base, DIR)); no tokenizer files. A SPIEL run\n"
    "                     writes its sparse delta in the SFT layout of the SpIEL reference's\n"
    "                     peft fork (values + indices per module; stock peft has no such type)\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime error (e.g. a model with no Hugging Face form, a write that\n"
    "failed), 2 usage error, 3 checkpoint unreadable or tokenizer file not copied.\n";

// The tokenizer files of data.tokenizer `spec` (relative to the working directory), as
// (source path, file name in the export).
std::vector<std::pair<fs::path, std::string>> tokenizer_files(const std::string& spec) {
  std::vector<std::pair<fs::path, std::string>> out;
  std::error_code ec;
  if (spec == "byte" || spec.empty() || spec == "auto") return out;
  fs::path p(spec);
  if (fs::is_directory(p, ec)) {
    for (const char* name : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"})
      if (fs::is_regular_file(p / name, ec)) out.emplace_back(p / name, name);
    // tokenizer.json alone defines the tokenizer; vocab.json + merges.txt only without it.
    bool has_json = false;
    for (const auto& f : out) has_json = has_json || f.second == "tokenizer.json";
    if (has_json)
      out.erase(std::remove_if(out.begin(), out.end(),
                               [](const auto& f) { return f.second == "vocab.json" || f.second == "merges.txt"; }),
                out.end());
  } else if (p.filename() == "vocab.json") {
    out.emplace_back(p, "vocab.json");
    out.emplace_back(p.parent_path() / "merges.txt", "merges.txt");
  } else {
    out.emplace_back(p, "tokenizer.json");
  }
  return out;
}

int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("export", args,
                            {{"--checkpoint", ArgKind::value},
                             {"--out", ArgKind::value},
                             {"--dtype", ArgKind::value},
                             {"--max-shard-mb", ArgKind::value},
                             {"--merge", ArgKind::flag},
                             {"--adapter-only", ArgKind::flag}});
  std::string path = a.get("--checkpoint").value_or("");
  if (path.empty() && a.positional.size() == 1) path = a.positional[0];
  if (path.empty() || a.positional.size() > (a.has("--checkpoint") ? 0u : 1u))
    throw UsageError("lathe export: expected --checkpoint PATH (a checkpoint or run directory)");
  const std::string out = a.get("--out").value_or("");
  if (out.empty()) throw UsageError("lathe export: --out DIR is required");
  const std::string dt = a.get("--dtype").value_or("f32");
  DType dtype;
  if (dt == "f32") dtype = DType::f32;
  else if (dt == "bf16") dtype = DType::bf16;
  else if (dt == "f16") dtype = DType::f16;
  else throw UsageError("lathe export: --dtype must be f32, bf16 or f16 (got \"" + dt + "\")");
  const int64_t shard_mb = a.get_int("--max-shard-mb", 0);
  if (shard_mb < 0) throw UsageError("lathe export: --max-shard-mb must be >= 0");

  const bool adapter_only = a.has("--adapter-only");
  if (adapter_only && a.has("--merge"))
    throw UsageError("lathe export: --merge and --adapter-only exclude each other");

  train::LoadedRun run = train::load_trained(path);
  if ((adapter_only || a.has("--merge")) && !run.peft)
    throw UsageError("lathe export: " + run.file + " is not an adapter fine-tuning run (its config has no peft "
                     "section); --merge and --adapter-only apply to those");
  if (run.peft && adapter_only) {
    const bool sparse = run.cfg.peft().method() == PeftConfig::SPIEL;
    if (sparse)  // peft has no sparse type: the SpIEL fork's SFT layout (peft/sft_io.h)
      peft::save_spiel_adapter(*run.model, out, run.cfg.model().init_from());
    else
      peft::save_adapter(*run.model, out,
                         peft::save_options(train::peft_options(run.cfg), *run.peft, run.cfg.model().init_from()));
    std::printf("exported the adapter of %s (step %lld, %lld adapted layers, %s) to %s in the %s layout\n",
                run.file.c_str(), static_cast<long long>(run.state.step),
                static_cast<long long>(run.peft->adapters.size()),
                peft::parameter_report(*run.model).str().c_str(), out.c_str(), sparse ? "SFT (SpIEL)" : "peft");
    return kExitOk;
  }
  // The merged model: W += s B A in f32, then the plain layers back in their slots.
  if (run.peft) peft::unload_adapters(*run.model, /*merge=*/true);
  const data::Tokenizer& tokenizer = *run.tokenizer;
  models::HfTokenIds ids;
  ids.bos = tokenizer.bos_id();
  ids.eos = tokenizer.eos_id();
  ids.pad = tokenizer.pad_id();
  models::save_hf_model(*run.model, out, dtype, shard_mb * 1024 * 1024, ids);
  std::printf("exported %s (step %lld, %s, %lld parameters) to %s as %s\n", run.file.c_str(),
              static_cast<long long>(run.state.step), models::arch_name(run.model->spec().arch),
              static_cast<long long>(models::count_parameters(run.model->spec())), out.c_str(), dt.c_str());
  auto id_text = [](const std::optional<int32_t>& id) { return id ? std::to_string(*id) : std::string("none"); };
  std::printf("token ids: bos %s, eos %s, pad %s (config.json, generation_config.json)\n", id_text(ids.bos).c_str(),
              id_text(ids.eos).c_str(), id_text(ids.pad).c_str());
  const std::string& tok = run.cfg.data().tokenizer();
  const auto files = tokenizer_files(tok);
  if (files.empty()) {
    std::printf("tokenizer: \"%s\" has no Hugging Face file; none written (fine-tune the export with "
                "data.tokenizer: \"%s\")\n", tok.c_str(), tok.c_str());
  }
  auto write_text = [&out](const std::string& name, const std::string& text) {
    try {
      write_file_atomic((fs::path(out) / name).string(), text);
    } catch (const lathe::Error& e) {
      throw train::IoError("export", "writing the tokenizer file " + (fs::path(out) / name).string() + ": " + e.message());
    }
  };
  bool has_json = false, has_config = false;
  fs::path vocab, merges;
  for (const auto& [src, name] : files) {
    std::error_code ec;
    const fs::path dst = fs::path(out) / name, tmp = fs::path(out) / (name + ".tmp");
    fs::copy_file(src, tmp, fs::copy_options::overwrite_existing, ec);
    if (!ec) fs::rename(tmp, dst, ec);
    if (ec) throw train::IoError("export", "copying the tokenizer file " + src.string() + " to " + dst.string() + ": " + ec.message());
    std::printf("tokenizer: copied %s to %s\n", src.string().c_str(), dst.string().c_str());
    has_json = has_json || name == "tokenizer.json";
    has_config = has_config || name == "tokenizer_config.json";
    if (name == "vocab.json") vocab = src;
    if (name == "merges.txt") merges = src;
  }
  // GPT-2 files alone load only through a GPT-2 tokenizer class; AutoTokenizer picks the
  // class of the model family, so give every export a tokenizer.json, which any family's
  // PreTrainedTokenizerFast loads.
  if (!has_json && !vocab.empty()) {
    std::vector<std::string> special;
    for (const auto& [content, id] : tokenizer.special_tokens()) special.push_back(content);
    write_text("tokenizer.json", data::hf_tokenizer_json_from_vocab_merges(vocab.string(), merges.string(), special));
    std::printf("tokenizer: wrote %s (from %s + merges.txt)\n", (fs::path(out) / "tokenizer.json").string().c_str(),
                vocab.string().c_str());
    has_json = true;
  }
  if (has_json && !has_config) {
    auto content = [&tokenizer](const std::optional<int32_t>& id) {
      return id ? tokenizer.id_to_token(*id).value_or("") : std::string();
    };
    write_text("tokenizer_config.json",
               data::hf_tokenizer_config_json(content(ids.bos), content(ids.eos), content(ids.pad),
                                                run.model->spec().max_seq_len));
    std::printf("tokenizer: wrote %s (PreTrainedTokenizerFast)\n",
                (fs::path(out) / "tokenizer_config.json").string().c_str());
  }
  return kExitOk;
}

}  // namespace

extern const Command kCmdExport = {"export", "write a checkpoint as a Hugging Face model directory", kHelp, run};

}  // namespace lathe::cli
