// The training loop; see trainer.h.
#include "train/trainer.h"

#include <algorithm>
#include <map>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "models/autocast.h"
#include "optim/registry.h"
#include "optim/schedule.h"
#include "optim/sgd_sai.h"
#include "train/batches.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/grad_sync.h"
#include "train/init_from.h"
#include "train/layerwise.h"
#include "train/metrics.h"
#include "train/parallel_layout.h"
#include "train/peft_setup.h"
#include "peft/adapter_io.h"
#include "peft/sft_io.h"
#include "train/peft_spiel.h"
#include "train/run_plan.h"
#include "train/tp_whole_tensors.h"
#include "train/zero_setup.h"
#include "parallel/ring_attention.h"
#include "parallel/ulysses.h"

namespace fs = std::filesystem;

namespace lathe::train {

namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The optimizer of optimizer.type (optim/registry.h), over the trainable parameters.
// Paged CPU state is backed by files under optimizer.paging.dir, by default <run_dir>/paged
// (each file removed when its state is freed).
std::unique_ptr<optim::Optimizer> make_optimizer(const RunConfig& cfg, const optim::NamedParams& named) {
  if (cfg.optimizer().paged() && cfg.optimizer().paging().dir().empty()) {
    lathe::OptimizerConfig oc = cfg.optimizer();
    oc.mutable_paging()->set_dir(cfg.run_dir() + "/paged");
    return optim::make_optimizer(oc, named);
  }
  return optim::make_optimizer(cfg.optimizer(), named);
}

// Lines of a that are not in b (for the "config changed since the checkpoint" note).
std::vector<std::string> lines_not_in(const std::string& a, const std::string& b) {
  std::set<std::string> bl;
  std::istringstream bs(b);
  for (std::string l; std::getline(bs, l);) bl.insert(l);
  std::vector<std::string> out;
  std::istringstream as(a);
  for (std::string l; std::getline(as, l);)
    if (!bl.count(l)) out.push_back(l);
  return out;
}

// The step directory to resume from, or "" for a fresh start.
std::string resume_dir(const std::string& spec, const std::string& root) {
  if (spec == "never") return "";
  if (spec == "auto") {
    std::optional<int64_t> s;
    try {
      s = latest_complete_step(root);
    } catch (const lathe::Error& e) {
      throw CheckpointError("looking for checkpoints in " + root + ": " + e.message());
    }
    return s ? step_dir(root, *s) : "";
  }
  try {
    return resolve_resume(spec, root);
  } catch (const lathe::Error& e) {
    throw CheckpointError("resume \"" + spec + "\": " + e.message());
  }
}

// Start of a run: its checkpoint directory has no other writer, so every step directory
// without COMPLETE is a save that crashed, and every *.tmp file a write that never committed.
// cleanup_stale removes the temp files and the incomplete steps older than the latest
// complete one; the newer incomplete ones go here too (prepare_step_dir would empty them
// anyway when their step is saved again, but until then they would look like checkpoints).
void remove_crashed_saves(const std::string& root, std::FILE* out) {
  std::vector<std::string> removed = cleanup_stale(root);
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory() || !parse_step_dir(entry.path().string())) continue;
    if (is_complete(entry.path().string())) continue;
    fs::remove_all(entry.path());
    removed.push_back(entry.path().string());
  }
  if (out && !removed.empty()) {
    std::fprintf(out, "removed %zu stale checkpoint file(s)/directory(ies) of an interrupted save:\n", removed.size());
    for (const auto& r : removed) std::fprintf(out, "  %s\n", r.c_str());
  }
}

void print_line(std::FILE* out, const std::string& s) {
  if (!out) return;
  std::fputs(s.c_str(), out);
  std::fputc('\n', out);
  std::fflush(out);
}

uint64_t as_u64(int64_t v) { return static_cast<uint64_t>(v); }  // two's complement: bit-exact
int64_t as_i64(uint64_t v) { return static_cast<int64_t>(v); }

}  // namespace

std::string sample_text(models::CausalLM& model, const data::Tokenizer& tok, const SampleConfig& s) {
  std::vector<int32_t> prompt = tok.encode(s.prompt().empty() ? std::string("\n") : s.prompt(), false);
  LATHE_CHECK(!prompt.empty()) << "sample: the prompt \"" << s.prompt() << "\" encodes to no token";
  models::SampleOptions o;
  o.max_new_tokens = s.max_new_tokens();
  o.temperature = s.temperature();
  o.top_k = s.top_k();
  o.top_p = s.top_p();
  o.seed = s.seed();
  // A model trained with EOS after each document/response (lathe prepare) says when it is done.
  o.stop_token = tok.eos_id().value_or(-1);
  std::vector<int32_t> ids = models::generate(model, prompt, o);
  if (ids.size() > prompt.size() && o.stop_token >= 0 && ids.back() == o.stop_token) ids.pop_back();
  return tok.decode(std::vector<int32_t>(ids.begin() + static_cast<int64_t>(prompt.size()), ids.end()));
}

// ---- Trainer ----------------------------------------------------------------------------------

Trainer::Trainer(const RunConfig& cfg, TrainOptions opts) : input_(cfg), opts_(std::move(opts)) {}
Trainer::~Trainer() = default;

const RunPlan& Trainer::plan() const {
  LATHE_CHECK(plan_) << "Trainer::plan: call setup() first";
  return *plan_;
}
models::CausalLM& Trainer::model() {
  LATHE_CHECK(model_) << "Trainer::model: call setup() first";
  return *model_;
}
optim::Optimizer& Trainer::optimizer() {
  LATHE_CHECK(opt_) << "Trainer::optimizer: call setup() first";
  return *opt_;
}

void Trainer::add_checkpoint_part(std::shared_ptr<CheckpointPart> part) {
  LATHE_CHECK(part) << "Trainer::add_checkpoint_part: null part";
  for (const auto& p : parts_)
    LATHE_CHECK(p->name() != part->name()) << "Trainer::add_checkpoint_part: a part named \"" << part->name()
                                           << "\" is already registered";
  parts_.push_back(std::move(part));
}

void Trainer::message(const std::string& line) {
  if (metrics_ && out_) metrics_->message(line);
}

// Rank 0 creates the run directory and removes crashed saves; every rank learns whether
// that failed (the all_reduce doubles as the barrier before anyone reads the checkpoints).
void Trainer::prepare_run_dir() {
  const RunPlan& p = *plan_;
  std::string prep_error;
  if (p.rank == 0) {
    try {
      fs::create_directories(p.cfg.run_dir());
      if (fs::exists(p.ckpt_root)) remove_crashed_saves(p.ckpt_root, opts_.out);
    } catch (const std::exception& e) {
      prep_error = "cannot prepare " + p.cfg.run_dir() + ": " + e.what();
    }
  }
  Tensor prep_failed = Tensor::scalar(prep_error.empty() ? 0.0 : 1.0, DType::f32);
  if (p.world > 1) p.comm->all_reduce(prep_failed, parallel::ReduceOp::max);
  if (prep_failed.item() != 0.0)
    throw IoError("run_dir", prep_error.empty() ? "rank 0 could not prepare " + p.cfg.run_dir() : prep_error);
}

void Trainer::setup() {
  if (set_up_) return;
  plan_ = std::make_unique<RunPlan>(plan_run(input_, opts_.comm, opts_.apply_threads, opts_.resume));
  const RunPlan& p = *plan_;
  out_ = p.rank == 0 ? opts_.out : nullptr;
  result_ = TrainResult();
  result_.total_steps = p.total_steps;
  result_.num_parameters = models::count_parameters(p.spec);

  prepare_run_dir();
  const std::string from = resume_dir(p.resume_spec, p.ckpt_root);

  // Model: built on the CPU from the seed, pretrained weights on a fresh start only (a
  // resumed run has its own, newer ones), then the subclass's changes, then the device.
  model_ = models::build_model(p.spec, p.cfg.train().seed());
  model_->train(true);
  // Adapter fine-tuning checkpoints only the adapters: the frozen base is loaded again.
  const bool peft_on = peft_enabled(p.cfg);
  if (p.init.enabled() && (from.empty() || peft_on)) {
    load_init_weights(p.init, *model_);
    result_.init_from = p.init.description;
  }
  // Each data-parallel rank its own dropout stream (rank 0 keeps the model's).
  Generator& dropout = model_->dropout_generator();
  // Keyed by the data-parallel rank: the tensor-parallel ranks of a group draw the same masks.
  dropout.set_state(rank_dropout_seed(dropout.seed(), p.layout->data_rank()), dropout.offset());
  configure_model(*model_);
  if (peft_on) {
    // After the base weights, before the device move and the optimizer (which then holds
    // state for the trainable parameters only).
    peft_options_ = std::make_unique<peft::PeftOptions>(peft_options(p.cfg));
    try {
      peft_ = std::make_unique<peft::InjectResult>(peft::inject_lora(*model_, *peft_options_));
    } catch (const lathe::Error& e) {
      throw configs::ConfigError("config", {e.message()});
    }
  }
  // This rank's tensor-parallel shard, before the device move, the optimizer and the restore;
  // after the adapters, which shard with their layers from the one-process init
  // (parallel/tp_lora.h).
  try {
    p.layout->shard(*model_);
  } catch (const lathe::Error& e) {
    if (!peft_on) throw;
    throw configs::ConfigError("config", {"peft.target_modules: " + e.message()});  // e.g. an adapter on lm_head
  }
  if (!p.device.is_cpu()) model_->to(p.device);

  // Built after the move, so optimizer state is created on the parameters' device.
  const auto type = p.cfg.optimizer().type();
  if (p.layout->tensor_parallel() > 1 &&
      (type == lathe::OptimizerConfig::GALORE || type == lathe::OptimizerConfig::FIRA)) {
    // Whole-matrix projections: the optimizer steps stand-ins of the split tensors
    // (train/tp_whole_tensors.h).
    std::vector<std::pair<std::string, Tensor>> trainable;
    for (const auto& np : model_->named_parameters())
      if (np.second.requires_grad()) trainable.push_back(np);
    whole_ = std::make_unique<WholeTensorUpdates>(trainable, p.layout->shards(), model_->spec(), p.layout->groups().tp(),
                                                  p.cfg.parallel().vocab_pad_multiple());
    opt_ = make_optimizer(p.cfg, whole_->params());
  } else {
    opt_ = make_optimizer(p.cfg, model_->named_parameters());
  }
  // parallel.zero_stage 1: the optimizer is rebuilt over this rank's shard (train/zero_setup.h).
  if (p.cfg.parallel().zero_stage() == 1 && whole_) {
    // GaLore/Fira under TP: the TP shards are owned whole over the data-parallel group (costed
    // by their stand-ins' state); stand-ins remain for the owned matrices only.
    std::vector<std::pair<std::string, Tensor>> trainable;
    for (const auto& np : model_->named_parameters())
      if (np.second.requires_grad()) trainable.push_back(np);
    zero_ = make_zero_sharder(p.cfg.optimizer(), *opt_, p.layout->data_comm(), trainable);
    whole_ = std::make_unique<WholeTensorUpdates>(zero_->pieces(), p.layout->shards(), model_->spec(),
                                                  p.layout->groups().tp(), p.cfg.parallel().vocab_pad_multiple());
    opt_ = make_shard_optimizer(p.cfg.optimizer(), *opt_, whole_->params());
  } else if (p.cfg.parallel().zero_stage() == 1) {
    zero_ = make_zero_sharder(p.cfg.optimizer(), *opt_, p.layout->data_comm());
    opt_ = make_shard_optimizer(p.cfg.optimizer(), *opt_, *zero_);
  }
  // SGD-SaI under TP: the g-SNR of a split tensor from all its slices (optim/sgd_sai.h).
  if (auto* sai = dynamic_cast<optim::SGDSaI*>(opt_.get()); sai && p.layout->tensor_parallel() > 1) {
    std::shared_ptr<parallel::Communicator> tp = p.layout->groups().tp();
    std::map<std::string, int64_t> counted;
    for (const std::string& n : p.layout->shards().sharded)
      counted[n] = parallel::real_shard_numel(n, model_->parameter(n), model_->spec(), tp->rank());
    sai->set_shard_statistics(std::move(counted), [tp](Tensor& t) { tp->all_reduce(t); });
  }
  if (peft_ && peft_options_->method == peft::Method::spiel) {
    // SpIEL: its own Adam on the values (per-element age) around the run's optimizer, and the
    // selection state in the checkpoint; the first selection phase starts now.
    peft_options_->spiel.schedule.total_steps = p.total_steps;
    spiel_ = std::make_shared<SpielSelector>(*model_, peft_options_->spiel, *p.comm);
    const auto& oc = p.cfg.optimizer();
    opt_ = spiel_->wrap(std::move(opt_), oc.beta1(), oc.beta2(), oc.eps());
    parts_.push_back(spiel_->checkpoint_part());
    if (from.empty()) spiel_->start();
  }
  params_.clear();
  for (const auto& g : opt_->groups())
    for (const auto& np : g.params) params_.push_back(np.second);
  loader_ = std::make_unique<TrainBatches>(p.data, p.loader);

  if (peft_) {
    // LoRA-SB's frozen factors come from data: checkpointed, so a resume does not recompute them.
    if (auto part = frozen_adapter_part(*model_)) parts_.push_back(part);
    if (from.empty() && peft_options_->method == peft::Method::lora_sb && peft_options_->sb.gradient_init) {
      // The gradient init before the first step: its own loader over the same data gives the
      // run's first micro-batches without moving the run's data position. The step size is the
      // first update's lr (LoRA-SB: the first Adam step at the first warm-up lr).
      TrainBatches first(p.data, p.loader);
      // Under TP the gradients are summed over the data-parallel group and gathered over TP.
      const bool tp = p.layout->tensor_parallel() > 1;
      init_adapters_from_gradients(*model_, *peft_options_, first, peft_options_->sb.init_batches,
                                   p.schedule.lr_at(1), p.device, p.bf16(), tp ? *p.layout->data_comm() : *p.comm,
                                   tp ? p.layout.get() : nullptr);
    }
  }

  if (!from.empty()) {
    restore(from);
    result_.resumed_from = from;
  }
  result_.start_step = result_.end_step = step_;
  last_lr_ = step_ > 0 ? p.schedule.lr_at(step_) : 0.0;

  // Data parallelism (train/grad_sync.h): identical replicas to start from (rank 0's weights
  // broadcast, or a checksum check of the ranks' resumed files), then gradients averaged in
  // buckets launched from gradient-ready hooks while backward runs.
  sync_initial_state(*model_, *p.layout->data_comm(), !from.empty());
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (const auto& np : model_->named_parameters())
    if (np.second.requires_grad()) trainable.push_back(np);
  // With ZeRO the sharder reduce-scatters instead (no bucketed all-reduce).
  grad_sync_ = std::make_unique<GradSync>(zero_ ? decltype(trainable){} : trainable, p.layout->data_comm(),
                                          p.cfg.parallel().bucket_mb());
  // optimizer.layerwise: each parameter stepped from its hook / its reduced bucket
  // (train/layerwise.h).
  if (p.cfg.optimizer().layerwise()) layerwise_ = std::make_unique<LayerwiseUpdater>(*opt_, *grad_sync_);
  if (layerwise_ && p.layout->tensor_parallel() > 1) {
    // Partial sums over TP are final after finish_gradients: stepped in finish().
    const auto& sh = p.layout->shards();
    layerwise_->set_tensor_parallel({sh.partial_grad.begin(), sh.partial_grad.end()}, sh.sharded,
                                    p.layout->groups().tp());
  }

  // Ulysses or ring sequence parallelism (parallel/ulysses.h, parallel/ring_attention.h): the
  // attention of every layer runs over the whole sequence of its group from this rank's slice.
  if (p.sp > 1) {
    sp_comm_ = p.layout->groups().sp();
    try {
      parallel::set_sequence_attention(*model_, sp_comm_, p.layout->groups().sp_mode(),
                                       p.cfg.parallel().ring_zigzag());
    } catch (const lathe::Error& e) {
      throw configs::ConfigError("config", {"parallel.sequence_parallel: " + e.message()});
    }
  }

  print_banner(from, restored_config_.empty() ? std::vector<std::string>{}
                                              : lines_not_in(p.config_text, restored_config_));
  open_metrics(from);
  set_up_ = true;
}

std::vector<CheckpointPart*> Trainer::checkpoint_parts() {
  const RunPlan& p = *plan_;
  if (builtin_parts_.empty()) {
    // First, so that a checkpoint of another ZeRO layout is refused before any state loads.
    builtin_parts_.push_back(layout_part(layout_description(zero_.get(), plan_->sp)));
    builtin_parts_.push_back(std::make_shared<ModelPart>(*model_, /*trainable_only=*/peft_ != nullptr));
    builtin_parts_.push_back(std::make_shared<OptimizerPart>(*opt_, p.device));
    // Where the run stands: steps, tokens and the lr of the last update (the schedule is a
    // function of the step; lr records where it stood).
    builtin_parts_.push_back(std::make_shared<FunctionPart>(
        "progress",
        [this](H5Writer& w) {
          write_i64(w, "state/step", step_);
          write_i64(w, "state/tokens_seen", tokens_seen_);
          w.write_tensor("state/lr", Tensor::scalar(last_lr_, DType::f64));
        },
        [this](const H5Reader& r) {
          step_ = read_i64(r, "state/step");
          tokens_seen_ = read_i64(r, "state/tokens_seen");
        }));
    builtin_parts_.push_back(std::make_shared<FunctionPart>(
        "data position",
        [this](H5Writer& w) {
          const data::LoaderState s = loader_->state();
          write_i64(w, "state/loader_epoch", s.epoch);
          write_i64(w, "state/loader_index", s.index);
        },
        [this](const H5Reader& r) {
          data::LoaderState s;
          s.epoch = read_i64(r, "state/loader_epoch");
          s.index = read_i64(r, "state/loader_index");
          try {
            loader_->set_state(s);
          } catch (const lathe::Error& e) {
            throw CheckpointError(r.path() + ": its data position does not fit this run's data (" + e.message() +
                                  ")");
          }
        }));
    // The dropout stream (seed as its int64 bit pattern).
    builtin_parts_.push_back(std::make_shared<FunctionPart>(
        "rng",
        [this](H5Writer& w) {
          write_i64(w, "state/rng_dropout_seed", as_i64(model_->dropout_generator().seed()));
          write_i64(w, "state/rng_dropout_offset", as_i64(model_->dropout_generator().offset()));
        },
        [this](const H5Reader& r) {
          model_->dropout_generator().set_state(as_u64(read_i64(r, "state/rng_dropout_seed")),
                                                as_u64(read_i64(r, "state/rng_dropout_offset")));
        }));
  }
  CheckpointParts parts;
  for (const auto& part : builtin_parts_) parts.push_back(part.get());
  for (const auto& part : parts_) parts.push_back(part.get());
  return parts;
}

void Trainer::restore(const std::string& dir) {
  LATHE_CHECK(model_ && opt_ && loader_) << "Trainer::restore: the model is not built (call setup())";
  check_resume_layout(dir, layout_description(zero_.get(), plan_->sp), plan_->world);
  const CheckpointMeta meta = load_checkpoint(dir, checkpoint_parts(), *plan_->comm, plan_->layout->name());
  restored_config_ = meta.config_text;
  result_.start_step = result_.end_step = step_;
  last_lr_ = step_ > 0 ? plan_->schedule.lr_at(step_) : 0.0;
}

std::string Trainer::save() {
  const RunPlan& p = *plan_;
  CheckpointMeta meta;
  meta.step = step_;
  meta.tokens_seen = tokens_seen_;
  meta.world_size = p.world;
  meta.rank = p.rank;
  meta.config_text = p.config_text;
  meta.layout = p.layout->name();
  result_.last_checkpoint =
      save_checkpoint(p.ckpt_root, checkpoint_parts(), meta, *p.comm, p.cfg.checkpoint().keep_last());
  if (metrics_) metrics_->log_event({{"event", "checkpoint"}, {"step", step_}, {"path", result_.last_checkpoint}});
  message("checkpoint: " + result_.last_checkpoint);
  return result_.last_checkpoint;
}

void Trainer::print_banner(const std::string& from, const std::vector<std::string>& config_changes) {
  if (!out_) return;
  const RunPlan& p = *plan_;
  const auto& tc = p.cfg.train();
  const models::ModelSpec& spec = p.spec;
  print_line(out_, "lathe train: " + p.cfg.name() + "\n---- resolved config ----\n" + p.config_text +
                       "-------------------------");
  std::ostringstream s;
  s << "model: " << models::arch_name(spec.arch) << ", " << spec.n_layer << " layers, d_model " << spec.d_model
    << ", " << spec.n_head << " heads (" << spec.kv_heads() << " kv), d_ff " << spec.ff_dim() << ", vocab "
    << spec.vocab_size << ": " << result_.num_parameters << " parameters\n";
  if (p.init.enabled()) {
    if (peft_ && !from.empty())
      s << "init: base weights loaded from " << p.init.description << " (the checkpoint holds the adapters)\n";
    else
      s << "init: " << (from.empty() ? "weights loaded from " : "resuming, so not loading ") << p.init.description
        << "\n";
    for (const auto& n : p.init.notes) s << "note: " << n << "\n";
  }
  if (peft_) {
    s << "peft: " << peft::method_name(peft_options_->method);
    if (spiel_) s << " (" << (peft_options_->spiel.regrow == peft::SpielRegrow::ma ? "MA" : "AG") << ")";
    else s << " r " << peft_options_->lora.r << ", alpha " << peft_options_->lora.alpha;
    s << " on " << peft_->adapters.size() << " linear layers";
    if (!peft_->adapters.empty()) s << " (" << peft_->adapters.front().name << ", ...)";
    s << "; " << peft::parameter_report(*model_).str()
      << (p.layout->tensor_parallel() > 1 ? " (this rank's shards)" : "") << "\n";
  }
  s << "data: " << p.data.description << " (tokenizer " << p.cfg.data().tokenizer() << " = " << p.tokenizer->id()
    << ")\n";
  s << "batch: " << tc.micro_batch() << " sequences x " << tc.grad_accum() << " micro-steps x "
    << p.layout->data_size() << " data-parallel rank(s) x " << tc.seq_len() << " tokens = " << p.tokens_per_step << " tokens/step; " << p.total_steps
    << " steps";
  if (tc.epochs() > 0) s << " (" << tc.epochs() << " epochs of " << p.batches_per_epoch << " batches)";
  s << "\nflops/token = 6N + 6LCT = 6*" << result_.num_parameters << " + 6*" << spec.n_layer << "*" << spec.d_model
    << "*" << tc.seq_len() << " = " << fmt("%.4g", p.flops_per_token) << " (MFU = tokens/s * flops/token / peak";
  if (p.peak_tflops > 0)
    s << ", peak " << p.peak_tflops << " TFLOP/s"
      << (p.cfg.logging().peak_tflops() > 0 ? " from logging.peak_tflops)" : " per GPU, H100/H200 bf16 dense)");
  else
    s << "; CPU: no peak, achieved GFLOP/s reported)";
  s << "\ndevice: " << describe_device(p.device) << ", precision: " << (p.bf16() ? "bf16" : "f32") << ", "
    << p.world << " rank(s)";
  if (p.layout->tensor_parallel() > 1) s << " (" << p.layout->name() << ")";
  if (p.threads > 0) s << ", " << p.threads << " thread(s) per rank";
  s << "\n";
  if (from.empty()) {
    s << "starting fresh (checkpoint.resume: " << p.resume_spec << "; checkpoints in " << p.ckpt_root << ")";
  } else {
    s << "resuming from " << from << " at step " << step_ << " (checkpoint.resume: " << p.resume_spec << ")";
    if (!config_changes.empty()) {
      s << "\nnote: the config differs from the checkpoint's in " << config_changes.size() << " line(s):";
      for (size_t i = 0; i < config_changes.size() && i < 10; ++i) s << "\n    now: " << config_changes[i];
    }
  }
  print_line(out_, s.str());
}

void Trainer::open_metrics(const std::string& from) {
  const RunPlan& p = *plan_;
  if (p.rank != 0) return;
  MetricsOptions mo;
  if (p.cfg.logging().jsonl()) mo.jsonl_path = p.cfg.run_dir() + "/metrics.jsonl";
  if (p.cfg.logging().tensorboard()) mo.tensorboard_dir = p.cfg.run_dir() + "/tb";
  const auto progress = p.cfg.logging().progress();
  mo.console = out_ != nullptr && progress != LoggingConfig::NONE;
  mo.append = !from.empty();
  mo.progress.total_steps = p.total_steps;
  mo.progress.log_interval = p.cfg.train().log_interval();
  mo.progress.out = out_ ? out_ : stdout;
  mo.progress.tty = progress == LoggingConfig::BAR ? 1 : progress == LoggingConfig::LINES ? 0 : -1;
  try {
    metrics_ = std::make_unique<MetricsLogger>(mo, p.config_text);
    if (!from.empty()) metrics_->log_event({{"event", "resume"}, {"step", step_}, {"from", from}});
  } catch (const lathe::Error& e) {
    throw IoError("metrics", e.message());
  }
}

void Trainer::log_step(const StepRecord& rec, double dt) {
  if (!metrics_) return;
  const RunPlan& p = *plan_;
  const MemoryStats mem = memory_stats();
  const double tps = dt > 0 ? p.tokens_per_step / dt : 0.0;
  std::map<std::string, double> v = {{"loss", rec.loss},
                                     {"lr", rec.lr},
                                     {"grad_norm", rec.grad_norm},
                                     {"tokens_per_s", tps},
                                     {"step_ms", dt * 1e3},
                                     {"gflops", tps * p.flops_per_token / 1e9},
                                     {"tokens_seen", static_cast<double>(tokens_seen_)},
                                     {"epoch", static_cast<double>(loader_->state().epoch)},
                                     {"mem_mib", mem.total_current / 1048576.0},
                                     {"mem_peak_mib", mem.total_peak / 1048576.0}};
  // Model FLOPs utilisation: achieved FLOP/s of all ranks over their combined peak.
  if (p.peak_tflops > 0) v["mfu"] = tps * p.flops_per_token / (p.world * p.peak_tflops * 1e12);
  metrics_->log(rec.step, v);
}

StepRecord Trainer::train_step() {
  setup();
  const RunPlan& p = *plan_;
  const auto& tc = p.cfg.train();
  test_fault_injection(step_ + 1, p.rank);  // test-only env vars (grad_sync.h); no-op otherwise
  const double t0 = now_s();
  reset_peak_memory();
  // The step's micro-batches come first: their counted target tokens (host batches, no
  // device sync) give each micro-batch's share of the global token mean (grad_sync.h), with
  // one small all-reduce per step when there are several ranks.
  std::vector<data::LMBatch> batches;
  std::vector<int64_t> counts;
  for (int32_t micro = 0; micro < tc.grad_accum(); ++micro) {
    batches.push_back(loader_->next());
    if (p.sp > 1) {
      // This rank's slice of its group's batch (targets shifted before slicing, padded).
      data::LMBatch& b = batches.back();
      const bool zigzag = p.cfg.parallel().ring_zigzag();
      const parallel::SequenceSlice s = zigzag ? parallel::zigzag_slice_sequence(b.ids, b.targets, p.sp_rank, p.sp)
                                               : parallel::slice_sequence(b.ids, b.targets, p.sp_rank, p.sp);
      b.ids = s.ids;
      b.targets = s.targets;
      model_->set_position_offset(s.start);
      if (zigzag) model_->set_position_spans(s.spans);
    }
    counts.push_back(count_targets(batches.back().targets));
  }
  const TokenWeights weights = token_weights(std::move(counts), *p.layout->data_comm());
  // Once per optimizer step, before any backward: layer-wise updates happen inside it.
  const double lr = p.schedule.lr_at(step_ + 1);
  opt_->set_lr(lr);
  // The micro-batches' losses stay on the device until the update is queued: one host
  // sync per step instead of one per micro-batch.
  std::vector<Tensor> losses;
  for (int32_t micro = 0; micro < tc.grad_accum(); ++micro) {
    const data::LMBatch& b = batches[static_cast<size_t>(micro)];
    Tensor loss;
    {
      std::optional<models::Autocast> autocast;
      if (p.bf16()) autocast.emplace(DType::bf16);
      loss = model_->loss(b.ids.to(p.device), b.targets.to(p.device));
    }
    losses.push_back(loss.detach());
    // This micro-batch's tokens' share of the global token mean, times the ranks the
    // gradient average divides by (1 / grad_accum when every row counts T tokens).
    const double scale = weights.loss_scale[static_cast<size_t>(micro)];
    Tensor scaled = scale == 1.0 ? loss : autograd::mul(loss, scale);
    const bool last = micro + 1 == tc.grad_accum();
    grad_sync_->before_backward(last);  // only the last one communicates
    if (layerwise_) layerwise_->before_backward(last);  // and only the last one updates
    scaled.backward();
  }
  grad_sync_->after_backward();
  p.layout->finish_gradients(*model_);
  double grad_norm = 0;
  if (layerwise_) {
    grad_norm = layerwise_->finish();  // the parameters are updated and their gradients gone
  } else if (p.layout->tensor_parallel() > 1 && !zero_) {
    grad_norm = p.layout->clip_grad_norm(model_->named_parameters(), tc.grad_clip());
    if (whole_) whole_->gather();
    opt_->step();
    if (whole_) whole_->scatter();
    opt_->zero_grad();
  } else {
    if (zero_) zero_->reduce_scatter_gradients();  // params_ are this rank's pieces then
    // GaLore/Fira under TP with ZeRO: the owned shards' averaged gradients gathered over TP
    // into their whole-matrix stand-ins (train/tp_whole_tensors.h).
    if (whole_) whole_->gather();
    if (zero_ && p.layout->tensor_parallel() > 1 && !whole_)  // the pieces of this TP rank's shards
      grad_norm = p.layout->clip_grad_norm(zero_->pieces(), tc.grad_clip(), zero_->comm().get());
    else  // whole stand-ins are the same on every TP rank: their norm needs no TP sum
      grad_norm = zero_ ? optim::clip_grad_norm(params_, tc.grad_clip(), [this](Tensor& sq) { zero_->all_reduce_norm_sq(sq); })
                        : optim::clip_grad_norm(params_, tc.grad_clip());
    opt_->step();
    if (whole_) whole_->scatter();  // the owned slices into the shards, before they travel
    if (zero_) zero_->all_gather_parameters();
    opt_->zero_grad();
  }
  // SoRA's proximal step on the gates, after they were updated (either way above).
  if (peft_) after_optimizer_step(*model_, *peft_options_, lr, step_ + 1);
  if (spiel_) spiel_->after_step(step_ + 1);  // SpIEL's phases and reselections
  ++step_;
  last_lr_ = lr;
  tokens_seen_ += p.tokens_per_step;
  std::vector<double> micro_losses;
  for (const Tensor& l : losses) micro_losses.push_back(l.item());
  const double loss = weights.global_mean_loss(micro_losses, *p.layout->data_comm());
  if (!std::isfinite(loss))
    LATHE_FAIL() << "train: the loss became " << loss << " at step " << step_
                 << " (diverged; try a lower optimizer.lr or train.grad_clip)";
  const double dt = now_s() - t0;
  train_time_ += dt;
  session_tokens_ += p.tokens_per_step;
  const StepRecord rec{step_, loss, lr, grad_norm};
  result_.steps.push_back(rec);
  result_.end_step = step_;
  log_step(rec, dt);
  return rec;
}

EvalResult Trainer::evaluate() {
  setup();
  const RunPlan& p = *plan_;
  if (p.data.val_size() == 0) return {};
  // Evaluation and sampling see whole sequences on every rank: plain attention meanwhile.
  struct WholeSequences {
    models::CausalLM& m;
    std::shared_ptr<parallel::Communicator> sp;
    parallel::SpMode mode;
    bool zigzag;
    WholeSequences(models::CausalLM& m_, std::shared_ptr<parallel::Communicator> sp_, parallel::SpMode mode_,
                   bool zigzag_)
        : m(m_), sp(std::move(sp_)), mode(mode_), zigzag(zigzag_) {
      if (sp) parallel::set_ulysses(m, nullptr);
      m.set_position_offset(0);
    }
    ~WholeSequences() {
      if (sp) parallel::set_sequence_attention(m, sp, mode, zigzag);
    }
  } whole(*model_, sp_comm_, p.layout->groups().sp_mode(), p.cfg.parallel().ring_zigzag());
  const int64_t at = step_;
  EvalResult ev = evaluate_val(*model_, p.data, p.cfg.train().micro_batch(), p.cfg.train().eval_batches(),
                               *p.layout->data_comm(), p.compute_dtype);
  result_.evals.push_back({at, ev});
  if (metrics_) {
    metrics_->log_event({{"event", "eval"}, {"step", at}, {"val_loss", ev.loss}, {"val_perplexity", ev.perplexity},
                         {"val_tokens", ev.tokens}});
    if (metrics_->tensorboard()) {
      metrics_->tensorboard()->add_scalars(at, {{"val_loss", ev.loss}, {"val_perplexity", ev.perplexity}});
      metrics_->tensorboard()->flush();
    }
    message("eval @ step " + std::to_string(at) + ": val loss " + fmt("%.4f", ev.loss) + ", perplexity " +
            fmt("%.3f", ev.perplexity) + " (" + std::to_string(ev.tokens) + " tokens)");
  }
  // Every tensor-parallel rank of data-parallel group 0 takes part in generating (rank 0 logs).
  if (p.layout->data_rank() == 0 && p.cfg.sample().at_eval()) {
    std::string text = sample_text(*model_, *p.tokenizer, p.cfg.sample());
    result_.samples.push_back(text);
    if (metrics_)
      metrics_->log_event({{"event", "sample"}, {"step", at}, {"prompt", p.cfg.sample().prompt()}, {"text", text}});
    message("sample @ step " + std::to_string(at) + ": " + p.cfg.sample().prompt() + text);
  }
  return ev;
}

TrainResult Trainer::run() {
  setup();
  const RunPlan& p = *plan_;
  const auto& tc = p.cfg.train();
  if (step_ >= p.total_steps) {
    message("the run is already complete at step " + std::to_string(step_) + " of " +
            std::to_string(p.total_steps) + "; nothing to do");
    if (metrics_) metrics_->finish();
    result_.finished = true;
    return result_;
  }
  if (opts_.stop_after > 0 && step_ >= opts_.stop_after)
    message("nothing to do: the run is at step " + std::to_string(step_) + ", at or past the stop step " +
            std::to_string(opts_.stop_after));

  while (step_ < p.total_steps) {
    if (opts_.stop_after > 0 && step_ >= opts_.stop_after) break;
    train_step();
    const bool last = step_ == p.total_steps;
    if ((tc.eval_interval() > 0 && step_ % tc.eval_interval() == 0) || last) evaluate();

    int signal = opts_.stop_flag ? opts_.stop_flag->load() : 0;
    if (p.world > 1) {  // all ranks stop at the same step when any of them was signalled
      Tensor f = Tensor::scalar(static_cast<double>(signal), DType::f64);
      p.comm->all_reduce(f, parallel::ReduceOp::max);
      signal = static_cast<int>(f.item());
    }
    const bool stop_here = signal != 0 || (opts_.stop_after > 0 && step_ >= opts_.stop_after);
    const int64_t interval = p.cfg.checkpoint().interval();
    if ((interval > 0 && step_ % interval == 0) || (last && p.cfg.checkpoint().save_final()) || (stop_here && !last))
      save();
    if (signal != 0 && !last) {
      result_.stop_signal = signal;
      message("stopped by signal " + std::to_string(signal) + " after step " + std::to_string(step_));
      break;
    }
  }
  result_.finished = step_ == p.total_steps;
  result_.tokens_per_s = train_time_ > 0 ? session_tokens_ / train_time_ : 0.0;
  // Tensor parallelism: the adapter shards gathered into a full model first (collective over
  // each TP group; rank 0 keeps the result).
  std::unique_ptr<models::CausalLM> gathered;
  if (peft_ && result_.finished && p.layout->tensor_parallel() > 1) {
    if (p.rank == 0) {
      gathered = models::build_model(p.spec, p.cfg.train().seed());
      peft::inject_lora(*gathered, *peft_options_);
    }
    p.layout->gather_trainable(*model_, gathered.get());
  }
  if (peft_ && result_.finished && p.rank == 0) {
    // The trained adapter in the Hugging Face peft layout (loads with PeftModel.from_pretrained).
    const std::string dir = adapter_dir(p.cfg);
    models::CausalLM& m = gathered ? *gathered : *model_;
    if (spiel_) peft::save_spiel_adapter(m, dir, p.cfg.model().init_from());
    else peft::save_adapter(m, dir, peft::save_options(*peft_options_, *peft_, p.cfg.model().init_from()));
    result_.adapter_dir = dir;
    message("adapter: " + dir);
  }
  if (metrics_) {
    message("done: step " + std::to_string(step_) + "/" + std::to_string(p.total_steps) + ", " +
            fmt("%.0f", result_.tokens_per_s) + " tokens/s, " +
            fmt("%.2f", result_.tokens_per_s * p.flops_per_token / 1e9) + " GFLOP/s");
    metrics_->finish();
  }
  return result_;
}

TrainResult train(const RunConfig& cfg, const TrainOptions& opts) { return Trainer(cfg, opts).run(); }

}  // namespace lathe::train
