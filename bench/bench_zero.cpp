// ZeRO-1 memory per rank (run under mpirun; a plain main, figures in bench/README.md): the
// whole trainer for 2 steps on a LLaMA-style model with plain data parallelism and with
// parallel.zero_stage 1, and per rank the allocator's bytes under MemCategory::optimizer_state
// (after the steps), the peak of MemCategory::gradients and the peak of everything during the
// last step.
//
//   mpirun -np 2 build/bench/bench_zero [adamw|galore] [d_model] [n_layer] [tensor_parallel]
// With tensor_parallel > 1 the data-parallel group (which ZeRO shards over) is np / tp.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "configs/config.h"
#include "core/memory.h"
#include "parallel/mpi_communicator.h"
#include "train/trainer.h"

using namespace lathe;

namespace {

RunConfig config(const std::string& opt, int zero, int d, int layers, int tp) {
  const std::string o = opt == "galore" ? "type: GALORE lr: 1e-3 galore { rank: 64 update_proj_gap: 50 }"
                                        : "type: ADAMW lr: 1e-3";
  const std::string text =
      "name: \"bench_zero\" run_dir: \"/tmp/lathe_bench_zero\"\n"
      "model { arch: LLAMA n_layer: " + std::to_string(layers) + " n_head: 8 d_model: " + std::to_string(d) +
      " max_seq_len: 64 }\n"
      "data { source: SYNTHETIC synthetic { seed: 1 bytes: 262144 } }\n"
      "optimizer { " + o + " }\n"
      "train { steps: 2 micro_batch: 2 seq_len: 64 eval_interval: 0 }\n"
      "checkpoint { interval: 0 save_final: false resume: \"never\" }\n"
      "logging { progress: NONE jsonl: false }\n"
      "parallel { threads_per_rank: 1 zero_stage: " + std::to_string(zero) +
      " tensor_parallel: " + std::to_string(tp) + " }\n";
  return configs::parse_text(text, "bench_zero");
}

}  // namespace

int main(int argc, char** argv) {
  auto comm = parallel::init_mpi(&argc, &argv);
  const std::string opt = argc > 1 ? argv[1] : "adamw";
  const int d = argc > 2 ? std::atoi(argv[2]) : 512;
  const int layers = argc > 3 ? std::atoi(argv[3]) : 8;
  const int tp = argc > 4 ? std::atoi(argv[4]) : 1;
  for (int zero : {0, 1}) {
    int64_t state = 0, grad_peak = 0, total_peak = 0, params = 0;
    {
      const int64_t before = memory_stats().current_of(MemCategory::optimizer_state);
      train::TrainOptions o;
      o.out = nullptr;
      o.comm = comm;
      train::Trainer t(config(opt, zero, d, layers, tp), o);
      t.setup();
      t.train_step();
      reset_peak_memory();
      t.train_step();
      const MemoryStats m = memory_stats();
      state = m.current_of(MemCategory::optimizer_state) - before;
      grad_peak = m.peak_of(MemCategory::gradients);
      total_peak = m.total_peak;
      params = t.model().num_parameters(true);
    }
    int64_t v[3] = {state, grad_peak, total_peak}, mx[3], mn[3];
    MPI_Allreduce(v, mx, 3, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(v, mn, 3, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    if (comm->rank() == 0)
      std::printf("%s d%d L%d (%lld params on this rank) np %d tp %d zero_stage %d: optimizer state per rank %.2f..%.2f MiB, "
                  "gradient peak %.2f MiB, total peak %.2f..%.2f MiB\n",
                  opt.c_str(), d, layers, static_cast<long long>(params), comm->size(), tp, zero, mn[0] / 1048576.0,
                  mx[0] / 1048576.0, mx[1] / 1048576.0, mn[2] / 1048576.0, mx[2] / 1048576.0);
  }
  return 0;
}
