// The training loop; see trainer.h.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "parallel/threads.h"
#include "train/batches.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/grad_sync.h"
#include "train/init_from.h"
#include "train/metrics.h"
#include "train/run_setup.h"

namespace fs = std::filesystem;

namespace lathe::train {

using configs::ConfigError;

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

// Sum of a few doubles over ranks (one all_reduce of an f64 vector).
std::vector<double> sum_over_ranks(std::vector<double> v, parallel::Communicator& comm) {
  if (comm.size() <= 1) return v;
  Tensor t = Tensor::from_vector<double>(v, {static_cast<int64_t>(v.size())});
  comm.all_reduce(t, parallel::ReduceOp::sum);
  return t.to_vector<double>();
}

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

std::unique_ptr<optim::AdamW> make_optimizer(const RunConfig& cfg, const models::CausalLM& model) {
  const auto& o = cfg.optimizer();
  std::vector<std::pair<std::string, Tensor>> named;
  for (const auto& np : model.named_parameters())
    if (np.second.requires_grad()) named.push_back(np);
  std::vector<optim::ParamGroup> groups;
  if (o.decay_1d_params()) {
    optim::ParamGroup g;
    g.params = named;
    g.weight_decay = o.weight_decay();
    groups.push_back(std::move(g));
  } else {
    groups = optim::decay_groups(named, o.weight_decay());
  }
  optim::AdamWOptions ao;
  ao.lr = o.lr();
  ao.beta1 = o.beta1();
  ao.beta2 = o.beta2();
  ao.eps = o.eps();
  ao.weight_decay = o.weight_decay();
  return std::make_unique<optim::AdamW>(std::move(groups), ao);
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

}  // namespace

EvalResult evaluate(models::CausalLM& model, const data::PackedLMDataset& ds, int64_t micro_batch,
                    int64_t max_batches, parallel::Communicator& comm) {
  const bool was_training = model.is_training();
  model.eval();
  autograd::NoGradGuard no_grad;
  data::LMEvalLoader loader(ds, micro_batch, comm.rank(), comm.size());
  int64_t n = loader.num_batches();
  if (max_batches > 0) n = std::min(n, max_batches);
  double loss_sum = 0, rows = 0;
  data::LMBatch b;
  for (int64_t i = 0; i < n && loader.next(b); ++i) {
    const int64_t r = b.ids.size(0);
    if (r == 0) continue;
    // Every row holds seq_len scored tokens, so weighting by rows gives the token mean.
    loss_sum += model.loss(b.ids, b.targets).item() * static_cast<double>(r);
    rows += static_cast<double>(r);
  }
  model.train(was_training);
  std::vector<double> tot = sum_over_ranks({loss_sum, rows}, comm);
  EvalResult res;
  LATHE_CHECK(tot[1] > 0) << "evaluate: the dataset has no window to score (" << ds.size() << " windows)";
  res.loss = tot[0] / tot[1];
  res.perplexity = std::exp(res.loss);
  res.tokens = static_cast<int64_t>(tot[1]) * ds.seq_len();
  res.batches = n;
  return res;
}

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

TrainResult train(const RunConfig& input, const TrainOptions& opts) {
  // ---- config ------------------------------------------------------------------------------
  RunConfig cfg = input;
  const InitSource init = apply_init_from(cfg);  // the architecture and tokenizer of model.init_from
  configs::resolve(cfg);
  if (auto issues = configs::validate(cfg); !issues.empty()) throw ConfigError("config", issues);
  check_runnable(cfg);
  if (!resolve_device(cfg.train().device()).is_cpu())
    throw ConfigError("config", {"train.device: \"" + cfg.train().device() +
                                 "\" resolves to a GPU, but this build's trainer runs on the CPU only (use \"cpu\")"});
  std::shared_ptr<parallel::Communicator> comm = opts.comm ? opts.comm : parallel::world();
  const int rank = comm->rank(), world = comm->size();
  comm->set_timeout(cfg.parallel().collective_timeout_s());
  int threads = 0;
  if (opts.apply_threads) {
    threads = parallel::threads_per_rank(cfg.parallel().threads_per_rank());
    parallel::apply_thread_settings(threads);
  }
  std::FILE* out = rank == 0 ? opts.out : nullptr;

  auto tok = load_run_tokenizer(cfg);
  apply_tokenizer_vocab(cfg, *tok);
  if (auto issues = configs::validate(cfg); !issues.empty()) throw ConfigError("config", issues);
  const models::ModelSpec spec = model_spec(cfg.model());
  try {
    spec.validate();
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model: " + e.message()});
  }
  const std::string config_text = configs::to_text(cfg);
  const auto& tc = cfg.train();

  // ---- data ----------------------------------------------------------------------------------
  RunData data = load_run_data(cfg, *tok, comm.get());
  data::LMLoaderOptions lo;
  lo.micro_batch = tc.micro_batch();
  lo.rank = rank;
  lo.world_size = world;
  lo.seed = tc.seed();
  lo.shuffle = cfg.data().shuffle();
  TrainBatches loader(data, lo);
  if (loader.batches_per_epoch() == 0)
    throw ConfigError("config", {"train.micro_batch: the training split has " + std::to_string(data.train_size()) +
                                 (data.instruction ? " samples" : " windows") +
                                 ", fewer than one global batch of micro_batch * ranks = " +
                                 std::to_string(loader.global_batch())});
  const int64_t total_steps =
      tc.steps() > 0 ? tc.steps() : tc.epochs() * loader.batches_per_epoch() / tc.grad_accum();
  if (total_steps <= 0)
    throw ConfigError("config", {"train.epochs: " + std::to_string(tc.epochs()) + " epoch(s) of " +
                                 std::to_string(loader.batches_per_epoch()) + " batches is less than one step of " +
                                 std::to_string(tc.grad_accum()) + " micro-batches (train.grad_accum)"});
  const int64_t tokens_per_step =
      static_cast<int64_t>(tc.micro_batch()) * tc.grad_accum() * world * tc.seq_len();

  // ---- model, optimizer, schedule ------------------------------------------------------------------
  std::unique_ptr<models::CausalLM> model = models::build_model(spec, tc.seed());
  model->train(true);
  auto opt = make_optimizer(cfg, *model);
  const optim::Schedule sched = make_schedule(cfg, total_steps);
  std::vector<Tensor> params;
  for (const auto& g : opt->groups())
    for (const auto& np : g.params) params.push_back(np.second);

  TrainResult result;
  result.total_steps = total_steps;
  result.num_parameters = models::count_parameters(spec);
  const double fpt = flops_per_token(spec, tc.seq_len());

  // ---- run directory, stale checkpoint files, resume ---------------------------------------------
  const std::string& ckpt_root = cfg.checkpoint().dir();
  std::string prep_error;
  if (rank == 0) {
    try {
      fs::create_directories(cfg.run_dir());
      if (fs::exists(ckpt_root)) remove_crashed_saves(ckpt_root, opts.out);
    } catch (const std::exception& e) {
      prep_error = "cannot prepare " + cfg.run_dir() + ": " + e.what();
    }
  }
  // Doubles as the barrier before anyone reads the checkpoint directory; every rank learns
  // whether rank 0 failed instead of waiting for it.
  Tensor prep_failed = Tensor::scalar(prep_error.empty() ? 0.0 : 1.0, DType::f32);
  if (world > 1) comm->all_reduce(prep_failed, parallel::ReduceOp::max);
  if (prep_failed.item() != 0.0)
    throw IoError("run_dir", prep_error.empty() ? "rank 0 could not prepare " + cfg.run_dir() : prep_error);
  const std::string resume_spec = opts.resume.empty() ? cfg.checkpoint().resume() : opts.resume;
  const std::string from = resume_dir(resume_spec, ckpt_root);
  int64_t step = 0, tokens_seen = 0;
  std::vector<std::string> config_changes;
  if (!from.empty()) {
    TrainState st = load_checkpoint(from, *model, opt.get(), *comm);
    try {
      loader.set_state(st.loader);
    } catch (const lathe::Error& e) {
      throw CheckpointError(from + ": its data position does not fit this run's data (" + e.message() + ")");
    }
    model->dropout_generator().set_state(st.dropout_seed, st.dropout_offset);
    step = st.step;
    tokens_seen = st.tokens_seen;
    result.resumed_from = from;
    config_changes = lines_not_in(config_text, st.config_text);
  }
  result.start_step = result.end_step = step;
  // Pretrained weights only on a fresh start: a resumed run has its own, newer ones.
  if (init.enabled() && from.empty()) {
    load_init_weights(init, *model);
    result.init_from = init.description;
  }
  // Data parallelism (train/grad_sync.h): identical replicas to start from (rank 0's weights
  // broadcast, or a checksum check of the ranks' resumed files), then gradients averaged in
  // buckets launched from gradient-ready hooks while backward runs.
  sync_initial_state(*model, *comm, !from.empty());
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (const auto& np : model->named_parameters())
    if (np.second.requires_grad()) trainable.push_back(np);
  GradSync grad_sync(trainable, comm, cfg.parallel().bucket_mb());

  // ---- banner ---------------------------------------------------------------------------------------
  if (out) {
    print_line(out, "lathe train: " + cfg.name() + "\n---- resolved config ----\n" + config_text +
                        "-------------------------");
    std::ostringstream s;
    s << "model: " << models::arch_name(spec.arch) << ", " << spec.n_layer << " layers, d_model " << spec.d_model
      << ", " << spec.n_head << " heads (" << spec.kv_heads() << " kv), d_ff " << spec.ff_dim() << ", vocab "
      << spec.vocab_size << ": " << result.num_parameters << " parameters\n";
    if (init.enabled()) {
      s << "init: " << (from.empty() ? "weights loaded from " : "resuming, so not loading ") << init.description << "\n";
      for (const auto& n : init.notes) s << "note: " << n << "\n";
    }
    s << "data: " << data.description << " (tokenizer " << cfg.data().tokenizer() << " = " << tok->id() << ")\n";
    s << "batch: " << tc.micro_batch() << " sequences x " << tc.grad_accum() << " micro-steps x " << world
      << " rank(s) x " << tc.seq_len() << " tokens = " << tokens_per_step << " tokens/step; " << total_steps
      << " steps";
    if (tc.epochs() > 0) s << " (" << tc.epochs() << " epochs of " << loader.batches_per_epoch() << " batches)";
    s << "\nflops/token = 6N + 6LCT = 6*" << result.num_parameters << " + 6*" << spec.n_layer << "*" << spec.d_model
      << "*" << tc.seq_len() << " = " << fmt("%.4g", fpt) << " (MFU = tokens/s * flops/token / peak";
    if (cfg.logging().peak_tflops() > 0)
      s << ", peak " << cfg.logging().peak_tflops() << " TFLOP/s from logging.peak_tflops)";
    else
      s << "; CPU: no peak, achieved GFLOP/s reported)";
    s << "\ndevice: cpu, " << world << " rank(s)";
    if (threads > 0) s << ", " << threads << " thread(s) per rank";
    s << "\n";
    if (from.empty()) {
      s << "starting fresh (checkpoint.resume: " << resume_spec << "; checkpoints in " << ckpt_root << ")";
    } else {
      s << "resuming from " << from << " at step " << step << " (checkpoint.resume: " << resume_spec << ")";
      if (!config_changes.empty()) {
        s << "\nnote: the config differs from the checkpoint's in " << config_changes.size() << " line(s):";
        for (size_t i = 0; i < config_changes.size() && i < 10; ++i) s << "\n    now: " << config_changes[i];
      }
    }
    print_line(out, s.str());
  }

  // ---- metrics (rank 0) --------------------------------------------------------------------------------
  std::unique_ptr<MetricsLogger> metrics;
  if (rank == 0) {
    MetricsOptions mo;
    if (cfg.logging().jsonl()) mo.jsonl_path = cfg.run_dir() + "/metrics.jsonl";
    if (cfg.logging().tensorboard()) mo.tensorboard_dir = cfg.run_dir() + "/tb";
    const auto progress = cfg.logging().progress();
    mo.console = out != nullptr && progress != LoggingConfig::NONE;
    mo.append = !from.empty();
    mo.progress.total_steps = total_steps;
    mo.progress.log_interval = tc.log_interval();
    mo.progress.out = out ? out : stdout;
    mo.progress.tty = progress == LoggingConfig::BAR ? 1 : progress == LoggingConfig::LINES ? 0 : -1;
    try {
      metrics = std::make_unique<MetricsLogger>(mo, config_text);
      if (!from.empty()) metrics->log_event({{"event", "resume"}, {"step", step}, {"from", from}});
    } catch (const lathe::Error& e) {
      throw IoError("metrics", e.message());
    }
  }
  auto message = [&](const std::string& line) {
    if (metrics && out) metrics->message(line);
  };

  // ---- evaluation, sampling, checkpoints -------------------------------------------------------------------
  auto run_eval = [&](int64_t at) {
    if (data.val_size() == 0) return;
    EvalResult ev = evaluate_val(*model, data, tc.micro_batch(), tc.eval_batches(), *comm);
    result.evals.push_back({at, ev});
    if (metrics) {
      metrics->log_event({{"event", "eval"}, {"step", at}, {"val_loss", ev.loss}, {"val_perplexity", ev.perplexity},
                          {"val_tokens", ev.tokens}});
      if (metrics->tensorboard()) {
        metrics->tensorboard()->add_scalars(at, {{"val_loss", ev.loss}, {"val_perplexity", ev.perplexity}});
        metrics->tensorboard()->flush();
      }
      message("eval @ step " + std::to_string(at) + ": val loss " + fmt("%.4f", ev.loss) + ", perplexity " +
              fmt("%.3f", ev.perplexity) + " (" + std::to_string(ev.tokens) + " tokens)");
    }
    if (rank == 0 && cfg.sample().at_eval()) {
      std::string text = sample_text(*model, *tok, cfg.sample());
      result.samples.push_back(text);
      if (metrics) metrics->log_event({{"event", "sample"}, {"step", at}, {"prompt", cfg.sample().prompt()}, {"text", text}});
      message("sample @ step " + std::to_string(at) + ": " + cfg.sample().prompt() + text);
    }
  };
  double last_lr = step > 0 ? sched.lr_at(step) : 0.0;
  auto save = [&] {
    TrainState st;
    st.step = step;
    st.tokens_seen = tokens_seen;
    st.loader = loader.state();
    st.dropout_seed = model->dropout_generator().seed();
    st.dropout_offset = model->dropout_generator().offset();
    st.lr = last_lr;
    st.world_size = world;
    st.rank = rank;
    st.config_text = config_text;
    result.last_checkpoint = save_checkpoint(ckpt_root, *model, *opt, st, *comm, cfg.checkpoint().keep_last());
    if (metrics) metrics->log_event({{"event", "checkpoint"}, {"step", step}, {"path", result.last_checkpoint}});
    message("checkpoint: " + result.last_checkpoint);
  };

  if (step >= total_steps) {
    message("the run is already complete at step " + std::to_string(step) + " of " + std::to_string(total_steps) +
            "; nothing to do");
    if (metrics) metrics->finish();
    result.finished = true;
    return result;
  }

  if (opts.stop_after > 0 && step >= opts.stop_after)
    message("nothing to do: the run is at step " + std::to_string(step) + ", at or past the stop step " +
            std::to_string(opts.stop_after));

  // ---- the loop ---------------------------------------------------------------------------------------------
  double train_time = 0;
  int64_t session_tokens = 0;
  while (step < total_steps) {
    if (opts.stop_after > 0 && step >= opts.stop_after) break;
    test_fault_injection(step + 1, rank);  // test-only env vars (grad_sync.h); no-op otherwise
    const double t0 = now_s();
    reset_peak_memory();
    double loss_sum = 0;
    for (int32_t micro = 0; micro < tc.grad_accum(); ++micro) {
      data::LMBatch b = loader.next();
      Tensor loss = model->loss(b.ids, b.targets);
      loss_sum += loss.item();
      // Mean over micro-batches: each contributes 1/grad_accum of its mean-token gradient.
      Tensor scaled = tc.grad_accum() > 1 ? autograd::mul(loss, 1.0 / tc.grad_accum()) : loss;
      grad_sync.before_backward(micro + 1 == tc.grad_accum());  // only the last one communicates
      scaled.backward();
    }
    grad_sync.after_backward();
    const double grad_norm = optim::clip_grad_norm(params, tc.grad_clip());
    const double lr = sched.lr_at(step + 1);
    opt->set_lr(lr);
    opt->step();
    opt->zero_grad();
    ++step;
    last_lr = lr;
    tokens_seen += tokens_per_step;
    double loss = loss_sum / tc.grad_accum();
    if (world > 1) loss = sum_over_ranks({loss}, *comm)[0] / world;
    if (!std::isfinite(loss))
      LATHE_FAIL() << "train: the loss became " << loss << " at step " << step
                   << " (diverged; try a lower optimizer.lr or train.grad_clip)";
    const double dt = now_s() - t0;
    train_time += dt;
    session_tokens += tokens_per_step;
    result.steps.push_back({step, loss, lr, grad_norm});
    result.end_step = step;
    if (metrics) {
      const MemoryStats mem = memory_stats();
      const double tps = dt > 0 ? tokens_per_step / dt : 0.0;
      std::map<std::string, double> v = {{"loss", loss},
                                         {"lr", lr},
                                         {"grad_norm", grad_norm},
                                         {"tokens_per_s", tps},
                                         {"step_ms", dt * 1e3},
                                         {"gflops", tps * fpt / 1e9},
                                         {"tokens_seen", static_cast<double>(tokens_seen)},
                                         {"epoch", static_cast<double>(loader.state().epoch)},
                                         {"mem_mib", mem.total_current / 1048576.0},
                                         {"mem_peak_mib", mem.total_peak / 1048576.0}};
      if (cfg.logging().peak_tflops() > 0) v["mfu"] = tps * fpt / (world * cfg.logging().peak_tflops() * 1e12);
      metrics->log(step, v);
    }

    const bool last = step == total_steps;
    if ((tc.eval_interval() > 0 && step % tc.eval_interval() == 0) || last) run_eval(step);

    int signal = opts.stop_flag ? opts.stop_flag->load() : 0;
    if (world > 1) {  // all ranks stop at the same step when any of them was signalled
      Tensor f = Tensor::scalar(static_cast<double>(signal), DType::f64);
      comm->all_reduce(f, parallel::ReduceOp::max);
      signal = static_cast<int>(f.item());
    }
    const bool stop_here = signal != 0 || (opts.stop_after > 0 && step >= opts.stop_after);
    const int64_t interval = cfg.checkpoint().interval();
    if ((interval > 0 && step % interval == 0) || (last && cfg.checkpoint().save_final()) || (stop_here && !last))
      save();
    if (signal != 0 && !last) {
      result.stop_signal = signal;
      message("stopped by signal " + std::to_string(signal) + " after step " + std::to_string(step));
      break;
    }
  }
  result.finished = step == total_steps;
  result.tokens_per_s = train_time > 0 ? session_tokens / train_time : 0.0;
  if (metrics) {
    message("done: step " + std::to_string(step) + "/" + std::to_string(total_steps) + ", " +
            fmt("%.0f", result.tokens_per_s) + " tokens/s, " + fmt("%.2f", result.tokens_per_s * fpt / 1e9) +
            " GFLOP/s");
    metrics->finish();
  }
  return result;
}

}  // namespace lathe::train
