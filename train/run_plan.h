// The resolved plan of a run: everything the training loop reads, worked out once from the
// RunConfig before the loop starts (train/trainer.h's Trainer::setup builds it).
//
// The order is fixed here and nowhere else: model.init_from's architecture and tokenizer
// (train/init_from.h), configs::resolve and validate, what this build can run, the device,
// the tokenizer and vocab_size, the ModelSpec, the data, the batch layout over ranks, the
// length of the run and its LR schedule. Every config problem is a ConfigError naming the
// field, raised before any file is written.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "configs/config.h"
#include "core/device.h"
#include "data/lm_dataset.h"
#include "data/tokenizer.h"
#include "models/model.h"
#include "optim/schedule.h"
#include "parallel/communicator.h"
#include "train/init_from.h"
#include "train/run_setup.h"

namespace lathe::train {

class ParallelLayout;

struct RunPlan {
  RunConfig cfg;            // resolved and validated; model.vocab_size known
  std::string config_text;  // configs::to_text(cfg): what checkpoints and metrics store
  InitSource init;          // model.init_from (kind none without one)
  models::ModelSpec spec;   // the model to build (after init_from and the tokenizer's vocab)
  std::shared_ptr<const data::Tokenizer> tokenizer;
  RunData data;

  // Parallel layout: this rank of `world` data-parallel ranks. On CUDA with several ranks,
  // comm is the NCCL communicator (parallel::communicator_for).
  std::shared_ptr<parallel::Communicator> comm;
  int rank = 0, world = 1;
  // The data x tensor x sequence parallel grid over comm (train/parallel_layout.h); the
  // data split and gradient averaging use its data-parallel group.
  std::shared_ptr<ParallelLayout> layout;
  // Sequence parallelism (parallel.sequence_parallel, Ulysses): groups of sp consecutive ranks (the layout's sequence-parallel group)
  // share each batch, rank sp_rank of its group holding a slice of every sequence; the loader
  // shards over the dp = world / sp groups.
  int sp = 1, sp_rank = 0, dp = 1, dp_rank = 0;
  int threads = 0;  // OpenMP/BLAS threads per rank to apply (0 = leave as they are)

  // Device and precision: where the model, batches and optimizer state live, and the dtype
  // the forward computes in (f32, or bf16 under models::Autocast with f32 master weights).
  Device device;
  DType compute_dtype = DType::f32;
  double peak_tflops = 0;  // for MFU; 0 = not reported (CPU without logging.peak_tflops)

  // Batches and length.
  data::LMLoaderOptions loader;  // this rank's training loader options
  int64_t batches_per_epoch = 0;
  int64_t global_batch = 0;      // micro_batch * data-parallel ranks
  int64_t total_steps = 0;
  int64_t tokens_per_step = 0;   // micro_batch * grad_accum * data-parallel ranks * seq_len
  double flops_per_token = 0;    // 6N + 6LCT
  optim::Schedule schedule;

  // Checkpoints.
  std::string ckpt_root;
  std::string resume_spec;  // TrainOptions::resume, else checkpoint.resume

  bool bf16() const { return compute_dtype == DType::bf16; }
};

// Resolves `input` (it may be unresolved) for this rank of comm. threads_per_rank > 0 is
// recorded when apply_threads. resume: TrainOptions::resume ("" = the config's). Loads the
// tokenizer and the data (collective for JSONL sources, see load_run_data).
RunPlan plan_run(const RunConfig& input, std::shared_ptr<parallel::Communicator> comm, bool apply_threads,
                 const std::string& resume);

// The device of train.device for `rank` of `world` ranks: "auto" is cuda when
// kernels::cuda_device_count() > 0, else cpu; "auto" or "cuda" without an index under
// several ranks picks the rank's node-local GPU (parallel::local_cuda_device), a ConfigError
// when a node's ranks outnumber its GPUs. "cpu" and "cuda:N" are taken as written.
Device plan_device(const std::string& spec, int rank, int world);

// Peak dense TFLOP/s for MFU: logging.peak_tflops when set, else 989 (bf16 dense, H100 and
// H200 SXM) on CUDA, else 0 (the CPU has no table entry: MFU is left out).
double peak_tflops_for(const RunConfig& cfg, Device device);

// One line for the banner: "cuda:0 (NVIDIA H200)" or "cpu".
std::string describe_device(Device d);

}  // namespace lathe::train
