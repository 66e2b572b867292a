// Config -> the resolved plan of a run; see run_plan.h.
#include "train/run_plan.h"

#include "kernels/device.h"
#include "parallel/nccl/nccl_communicator.h"
#include "train/parallel_layout.h"
#include "parallel/threads.h"

namespace lathe::train {

using configs::ConfigError;

namespace {

optim::Schedule make_schedule(const RunConfig& cfg, int64_t total_steps) {
  optim::Schedule s;
  switch (cfg.schedule().kind()) {
    case ScheduleConfig::CONSTANT: s.kind = optim::ScheduleKind::constant; break;
    case ScheduleConfig::COSINE: s.kind = optim::ScheduleKind::cosine; break;
    case ScheduleConfig::LINEAR: s.kind = optim::ScheduleKind::linear; break;
  }
  s.base_lr = cfg.optimizer().lr();
  s.warmup_steps = cfg.schedule().warmup_steps();
  // decay_steps = 0: decay until the end of training; else over that many steps after warmup
  // (and the floor lr after them).
  s.total_steps = cfg.schedule().decay_steps() > 0 ? s.warmup_steps + cfg.schedule().decay_steps() : total_steps;
  s.min_lr_ratio = cfg.schedule().min_lr_ratio();
  return s;
}

void validate_or_throw(const RunConfig& cfg) {
  if (auto issues = configs::validate(cfg); !issues.empty()) throw ConfigError("config", issues);
}

}  // namespace

Device plan_device(const std::string& spec, int /*rank*/, int world) {
  Device d = resolve_device(spec);
  const bool indexed = spec.find(':') != std::string::npos;
  if (d.is_cuda() && !indexed && world > 1) {
    // One GPU per rank of a node (parallel::local_cuda_device reads the launcher's local rank).
    try {
      d = parallel::local_cuda_device();
    } catch (const lathe::Error& e) {
      throw ConfigError("config", {"train.device: \"" + spec + "\": " + e.message()});
    }
  }
  return d;
}

double peak_tflops_for(const RunConfig& cfg, Device device) {
  if (cfg.logging().peak_tflops() > 0) return cfg.logging().peak_tflops();
  // H100 / H200 SXM dense bf16 (the GPUs this project measures on); other GPUs set
  // logging.peak_tflops.
  if (device.is_cuda()) return 989.0;
  return 0.0;
}

std::string describe_device(Device d) {
  return d.is_cpu() ? d.str() : d.str() + " (" + kernels::device_description(d) + ")";
}

RunPlan plan_run(const RunConfig& input, std::shared_ptr<parallel::Communicator> comm, bool apply_threads,
                 const std::string& resume) {
  RunPlan p;
  RunConfig& cfg = p.cfg;
  cfg = input;
  p.init = apply_init_from(cfg);  // the architecture and tokenizer of model.init_from
  configs::resolve(cfg);
  validate_or_throw(cfg);
  check_runnable(cfg);

  p.comm = comm ? std::move(comm) : parallel::world();
  p.rank = p.comm->rank();
  p.world = p.comm->size();
  p.device = plan_device(cfg.train().device(), p.rank, p.world);
  // CUDA tensors (gradients) go through NCCL; host tensors still through the host transport.
  if (p.device.is_cuda() && p.world > 1) p.comm = parallel::communicator_for(p.comm, p.device);
  p.comm->set_timeout(cfg.parallel().collective_timeout_s());
  // The groups split comm, so they inherit its timeout.
  p.layout = std::make_shared<ParallelLayout>(cfg, p.comm);
  const int data_ranks = p.layout->data_size();
  // Ulysses sequence parallelism (tensor_parallel 1): the layout's sequence-parallel group.
  p.sp = p.layout->groups().sp_size();
  p.sp_rank = p.layout->groups().sp_rank();
  p.dp = data_ranks;
  p.dp_rank = p.layout->data_rank();
  p.compute_dtype = cfg.train().precision() == TrainConfig::BF16 ? DType::bf16 : DType::f32;
  p.peak_tflops = peak_tflops_for(cfg, p.device);
  if (apply_threads) {
    p.threads = parallel::threads_per_rank(cfg.parallel().threads_per_rank());
    parallel::apply_thread_settings(p.threads);
  }

  auto tok = load_run_tokenizer(cfg);
  apply_tokenizer_vocab(cfg, *tok);
  validate_or_throw(cfg);  // again: vocab_size is known now
  p.spec = model_spec(cfg.model());
  try {
    p.spec.validate();
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model: " + e.message()});
  }
  p.config_text = configs::to_text(cfg);
  const auto& tc = cfg.train();

  p.data = load_run_data(cfg, *tok, p.comm.get());
  p.tokenizer = std::move(tok);
  p.loader.micro_batch = tc.micro_batch();
  // Tensor-parallel ranks of one data-parallel group read the same rows.
  p.loader.rank = p.layout->data_rank();
  p.loader.world_size = data_ranks;
  p.loader.seed = tc.seed();
  p.loader.shuffle = cfg.data().shuffle();
  p.global_batch = static_cast<int64_t>(tc.micro_batch()) * data_ranks;
  p.batches_per_epoch = p.data.train_size() / p.global_batch;
  if (p.batches_per_epoch == 0)
    throw ConfigError("config", {"train.micro_batch: the training split has " + std::to_string(p.data.train_size()) +
                                 (p.data.instruction ? " samples" : " windows") +
                                 ", fewer than one global batch of micro_batch * ranks = " +
                                 std::to_string(p.global_batch)});
  p.total_steps = tc.steps() > 0 ? tc.steps() : tc.epochs() * p.batches_per_epoch / tc.grad_accum();
  if (p.total_steps <= 0)
    throw ConfigError("config", {"train.epochs: " + std::to_string(tc.epochs()) + " epoch(s) of " +
                                 std::to_string(p.batches_per_epoch) + " batches is less than one step of " +
                                 std::to_string(tc.grad_accum()) + " micro-batches (train.grad_accum)"});
  p.tokens_per_step = static_cast<int64_t>(tc.micro_batch()) * tc.grad_accum() * data_ranks * tc.seq_len();
  if (p.sp > 1) {
    // Zig-zag ring slices hold two chunks each: the sequence pads to 2 x sp chunks.
    const int64_t m = cfg.parallel().ring_zigzag() ? 2 * p.sp : p.sp;
    const int64_t padded = (tc.seq_len() + m - 1) / m * m;
    if (padded > p.spec.max_seq_len)
      throw ConfigError("config", {"parallel.sequence_parallel: train.seq_len " + std::to_string(tc.seq_len()) +
                                   " padded to a multiple of " + std::to_string(m) + " is " + std::to_string(padded) +
                                   ", more than model.max_seq_len " + std::to_string(p.spec.max_seq_len)});
  }
  p.flops_per_token = flops_per_token(p.spec, tc.seq_len());
  p.schedule = make_schedule(cfg, p.total_steps);

  p.ckpt_root = cfg.checkpoint().dir();
  p.resume_spec = resume.empty() ? cfg.checkpoint().resume() : resume;
  return p;
}

}  // namespace lathe::train
