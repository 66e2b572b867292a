// lathe inspect PATH
#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "configs/config.h"
#include "train/checkpoint.h"

namespace lathe::cli {

namespace {

const char* const kHelp =
    "usage: lathe inspect PATH [--config] [--verify]\n"
    "\n"
    "Describes a checkpoint: PATH is a rank file (rank_00000.h5), a step directory, a checkpoint\n"
    "directory, a run directory (their newest complete step) or a checkpoint directory's `latest`\n"
    "pointer. Prints the step, whether it is complete, a config summary, and every tensor's name,\n"
    "shape, dtype and bytes, with totals.\n"
    "\n"
    "options:\n"
    "  --config   print the full stored config\n"
    "  --verify   read every tensor and check its checksum (exit 3 naming a corrupt tensor)\n";


std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}


int run(const std::vector<std::string>& args) {
  ParsedArgs a = parse_args("inspect", args, {{"--config", ArgKind::flag}, {"--verify", ArgKind::flag}});
  if (a.positional.size() != 1) throw UsageError("lathe inspect: expected one PATH");
  train::CheckpointInfo info = train::inspect_checkpoint(a.positional[0], a.has("--verify"));
  const auto& st = info.state;
  std::printf("checkpoint: %s\n", info.file.c_str());
  std::printf("complete:   %s\n", info.complete ? "yes" : "NO (no COMPLETE marker: never used for resume)");
  std::printf("step:       %lld (tokens seen %lld, lr %.6g)\n", static_cast<long long>(st.step),
              static_cast<long long>(st.tokens_seen), st.lr);
  std::printf("ranks:      rank %d of %d\n", st.rank, st.world_size);
  std::printf("data:       epoch %lld, index %lld\n", static_cast<long long>(st.loader.epoch),
              static_cast<long long>(st.loader.index));
  try {
    RunConfig cfg = configs::parse_text(st.config_text, info.file + ":config");
    const auto& m = cfg.model();
    std::printf("config:     name %s, %s, %d layers, d_model %d, %d heads, vocab %d, seq_len %d, %s lr %g\n",
                cfg.name().c_str(), ModelConfig::Arch_Name(m.arch()).c_str(), m.n_layer(), m.d_model(), m.n_head(),
                m.vocab_size(), cfg.train().seq_len(), OptimizerConfig::Type_Name(cfg.optimizer().type()).c_str(),
                cfg.optimizer().lr());
  } catch (const std::exception& e) {
    std::printf("config:     (does not parse: %s)\n", e.what());
  }
  if (a.has("--config")) std::printf("---- stored config ----\n%s-----------------------\n", st.config_text.c_str());
  size_t width = 4;
  for (const auto& t : info.tensors) width = std::max(width, t.name.size());
  std::printf("\n%-*s  %-18s %-5s %12s\n", static_cast<int>(width), "name", "shape", "dtype", "bytes");
  int64_t total = 0, model_params = 0, model_bytes = 0;
  for (const auto& t : info.tensors) {
    std::printf("%-*s  %-18s %-5s %12lld\n", static_cast<int>(width), t.name.c_str(), shape_str(t.shape).c_str(),
                dtype_name(t.dtype), static_cast<long long>(t.bytes));
    total += t.bytes;
    if (t.name.rfind("model/", 0) == 0) {
      model_params += shape_numel(t.shape);
      model_bytes += t.bytes;
    }
  }
  std::printf("\n%zu tensors, %s; model: %lld parameters (%s)\n", info.tensors.size(), human_bytes(total).c_str(),
              static_cast<long long>(model_params), human_bytes(model_bytes).c_str());
  if (info.verified)
    std::printf("checksums:  %lld of %zu tensors verified (crc32c)%s\n", static_cast<long long>(info.checksummed),
                info.tensors.size(),
                info.checksummed < static_cast<int64_t>(info.tensors.size())
                    ? "; the others have none (written before checksums) and were only read"
                    : "");
  return kExitOk;
}

}  // namespace

extern const Command kCmdInspect = {"inspect", "show a checkpoint's step, config and tensors", kHelp, run};

}  // namespace lathe::cli
