// Peak training memory with and without layer-wise optimizer updates (optimizer.layerwise,
// train/layerwise.h), measured by the allocator's accounting per category (core/memory.h)
// over one optimizer step of the real trainer, after a warm-up step (so the optimizer state
// already exists and the figures are those of a steady step). A plain program, not a Google
// Benchmark: the figures are bytes, and the step time is printed only for context.
//
//   OMP_NUM_THREADS=2 ./build-bench/bench/bench_layerwise [n_layer d_model micro_batch seq_len bucket_mb]
//   mpirun -np 2 -x OMP_NUM_THREADS=1 ./build-bench/bench/bench_layerwise   (data parallel, per rank)
//
// Defaults: a Llama-style model, 8 layers, d_model 256 (6.4M parameters, byte vocabulary),
// micro-batch 4 x 128 tokens, AdamW, on the CPU. Rank 0 prints one row per (grad_accum,
// mode); the figures are rank 0's (every rank holds the same).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "configs/config.h"
#include "core/memory.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "train/trainer.h"

namespace {

constexpr double kMiB = 1048576.0;

struct Row {
  int grad_accum;
  bool layerwise;
  double param_mib, grad_peak_mib, optim_mib, act_peak_mib, other_peak_mib, total_peak_mib, step_ms;
};

Row measure(const std::shared_ptr<lathe::parallel::Communicator>& comm, int layers, int d_model, int micro_batch,
            int seq_len, double bucket_mb, int grad_accum, bool layerwise) {
  using namespace lathe;
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("lathe_bench_layerwise_" + std::to_string(comm->rank()) + "_" +
                            std::to_string(grad_accum) + (layerwise ? "_lw" : "_ord")))
                              .string();
  std::filesystem::remove_all(dir);
  const std::string text =
      "name: \"bench_layerwise\"\n"
      "run_dir: \"" + dir + "\"\n"
      "model { arch: LLAMA n_layer: " + std::to_string(layers) + " n_head: 4 d_model: " + std::to_string(d_model) +
      " max_seq_len: " + std::to_string(seq_len) + " dropout: 0 }\n"
      "data { source: SYNTHETIC synthetic { seed: 1 bytes: 4000000 } val_fraction: 0.01 }\n"
      "optimizer { type: ADAMW lr: 1e-3 layerwise: " + (layerwise ? "true" : "false") + " }\n"
      "train { steps: 100 micro_batch: " + std::to_string(micro_batch) + " grad_accum: " +
      std::to_string(grad_accum) + " grad_clip: 0 seq_len: " + std::to_string(seq_len) + " device: \"cpu\" }\n"
      "checkpoint { resume: \"never\" save_final: false }\n"
      "logging { progress: NONE jsonl: false }\n"
      "parallel { bucket_mb: " + std::to_string(bucket_mb) + " }\n";
  train::TrainOptions o;
  o.comm = comm;
  o.out = nullptr;
  o.apply_threads = false;  // keep OMP_NUM_THREADS
  train::Trainer t(configs::parse_text(text, "bench_layerwise"), o);
  t.setup();
  t.train_step();  // warm-up: optimizer state created
  const auto t0 = std::chrono::steady_clock::now();
  t.train_step();  // resets the peaks at its start
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const MemoryStats m = memory_stats();
  std::filesystem::remove_all(dir);
  return Row{grad_accum,
             layerwise,
             m.current_of(MemCategory::parameters) / kMiB,
             m.peak_of(MemCategory::gradients) / kMiB,
             m.current_of(MemCategory::optimizer_state) / kMiB,
             m.peak_of(MemCategory::activations) / kMiB,
             m.peak_of(MemCategory::other) / kMiB,
             m.total_peak / kMiB,
             ms};
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lathe;
  auto comm = parallel::launched_by_mpi() ? parallel::init_mpi(&argc, &argv) : parallel::world();
  const int layers = argc > 1 ? std::atoi(argv[1]) : 8;
  const int d_model = argc > 2 ? std::atoi(argv[2]) : 256;
  const int micro_batch = argc > 3 ? std::atoi(argv[3]) : 4;
  const int seq_len = argc > 4 ? std::atoi(argv[4]) : 128;
  const double bucket_mb = argc > 5 ? std::atof(argv[5]) : 25.0;
  std::vector<Row> rows;
  for (int accum : {1, 2})
    for (bool lw : {false, true}) rows.push_back(measure(comm, layers, d_model, micro_batch, seq_len, bucket_mb, accum, lw));
  if (comm->rank() == 0) {
    std::printf("Llama %d layers, d_model %d, micro-batch %d x %d tokens, AdamW, %d rank(s)", layers, d_model,
                micro_batch, seq_len, comm->size());
    if (comm->size() > 1) std::printf(", %g MiB buckets", bucket_mb);
    std::printf("; MiB per rank\n");
    std::printf("| grad_accum | layerwise | parameters | gradients (peak) | optimizer state | activations (peak) | "
                "other (peak) | total (peak) | step ms |\n|---|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows)
      std::printf("| %d | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f |\n", r.grad_accum,
                  r.layerwise ? "on" : "off", r.param_mib, r.grad_peak_mib, r.optim_mib, r.act_peak_mib,
                  r.other_peak_mib, r.total_peak_mib, r.step_ms);
  }
  if (parallel::launched_by_mpi()) parallel::finalize_mpi();
  return 0;
}
