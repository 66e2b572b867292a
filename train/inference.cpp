// Loading trained runs for evaluation and generation; see inference.h.
#include "train/inference.h"

#include "train/parallel_layout.h"

#include <filesystem>
#include <fstream>

#include "train/batches.h"
#include "train/checkpoint_dir.h"
#include "train/init_from.h"
#include "train/peft_setup.h"
#include "train/run_setup.h"

namespace fs = std::filesystem;

namespace lathe::train {

using configs::ConfigError;

bool looks_like_config(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream f(path, std::ios::binary);
  char sig[8] = {};
  f.read(sig, 8);
  // HDF5 files start with "\x89HDF\r\n\x1a\n".
  return !(f.gcount() == 8 && sig[1] == 'H' && sig[2] == 'D' && sig[3] == 'F');
}

namespace {

// The stored config of a checkpoint file, with overrides, resolved and checked.
RunConfig stored_config(const std::string& file, const TrainState& st, const std::vector<std::string>& overrides) {
  RunConfig cfg;
  try {
    cfg = configs::parse_text(st.config_text, file + ":config");
  } catch (const ConfigError& e) {
    throw CheckpointError(file + ": its stored config does not parse: " + e.what());
  }
  configs::apply_overrides(cfg, overrides);
  configs::resolve(cfg);
  if (auto issues = configs::validate(cfg); !issues.empty()) throw ConfigError(file + ":config", issues);
  return cfg;
}

// cfg's model (vocab from the tokenizer when 0), its shape checked, weights as initialised.
std::unique_ptr<models::CausalLM> build_checked_model(RunConfig& cfg, const data::Tokenizer& tok) {
  apply_tokenizer_vocab(cfg, tok);
  const models::ModelSpec spec = model_spec(cfg.model());
  try {
    spec.validate();
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model: " + e.message()});
  }
  auto model = models::build_model(spec, cfg.train().seed());
  return model;
}

// Builds cfg's model (vocab from the tokenizer when 0) and loads the weights of `file`;
// with a tensor-parallel `layout`, this rank's shard of them.
std::unique_ptr<models::CausalLM> model_from(RunConfig& cfg, const data::Tokenizer& tok, const std::string& file,
                                             peft::InjectResult* inject = nullptr, ParallelLayout* layout = nullptr) {
  auto model = build_checked_model(cfg, tok);
  if (layout && layout->tensor_parallel() > 1) {
    if (checkpoint_tensor_parallel(file) == layout->tensor_parallel()) {
      // Written with this degree: tensor-parallel rank r's shard is rank file r of the step
      // (data-parallel group 0), the layout the trainer saved it in.
      layout->shard(*model);
      read_rank_checkpoint(rank_file(fs::path(file).parent_path().string(), layout->groups().tp_rank()), *model, nullptr);
    } else {
      load_full_model_weights(file, *model);
      layout->shard(*model);
    }
  } else if (peft_enabled(cfg)) {
    // An adapter fine-tuning checkpoint holds the trainable tensors only: the base comes from
    // model.init_from (as the run loaded it), then the adapters are injected and filled.
    RunConfig c = cfg;
    const InitSource src = apply_init_from(c);
    if (src.enabled()) load_init_weights(src, *model);
    if (inject) *inject = peft::inject_lora(*model, peft_options(cfg));
    else peft::inject_lora(*model, peft_options(cfg));
    ModelPart part(*model, /*trainable_only=*/true);
    CheckpointParts parts{&part};
    // Frozen factors that came from data (LoRA-SB's A and B) are in the checkpoint too.
    const auto frozen = frozen_adapter_part(*model);
    if (frozen) parts.push_back(frozen.get());
    // A tensor-parallel run's adapter shards are gathered (parallel/tp_lora.h).
    if (checkpoint_tensor_parallel(file) > 1) {
      load_full_model_weights(file, *model, /*trainable_only=*/true);
      load_full_tensors(file, "peft", frozen_adapter_factors(*model), model->spec());
    } else {
      read_rank_checkpoint(file, parts);
    }
  } else {
    // A tensor-parallel checkpoint's shards are gathered into the full model.
    load_full_model_weights(file, *model);
  }
  model->eval();
  return model;
}

// Builds the model of cfg (whose model.init_from is a Hugging Face directory, already
// applied by apply_init_from) and fills it with the directory's weights.
std::unique_ptr<models::CausalLM> model_from_hf(RunConfig& cfg, const data::Tokenizer& tok, const InitSource& src,
                                                ParallelLayout* layout = nullptr) {
  auto model = build_checked_model(cfg, tok);
  load_init_weights(src, *model);
  if (layout) layout->shard(*model);
  model->eval();
  return model;
}

// cfg with model.init_from = `dir`, resolved and checked; returns the source.
InitSource use_hf_dir(RunConfig& cfg, const std::string& dir) {
  cfg.mutable_model()->set_init_from(dir);
  InitSource src = apply_init_from(cfg);
  configs::resolve(cfg);
  if (auto issues = configs::validate(cfg); !issues.empty()) throw ConfigError("config", issues);
  return src;
}

// The config for a Hugging Face directory given alone: the defaults, plus a placeholder
// train.steps (validate wants steps or epochs; nothing trains), then `overrides`.
RunConfig hf_dir_base_config(const std::vector<std::string>& overrides) {
  RunConfig cfg;
  cfg.mutable_train()->set_steps(1);
  configs::apply_overrides(cfg, overrides);
  return cfg;
}

}  // namespace

std::shared_ptr<ParallelLayout> inference_layout(const RunConfig& cfg, const std::shared_ptr<parallel::Communicator>& world) {
  if (!world || world->size() == 1) return nullptr;
  RunConfig c = cfg;
  c.mutable_parallel()->set_sequence_parallel(1);
  c.mutable_parallel()->clear_sequence_parallel_mode();
  if (c.parallel().tensor_parallel() > 1 && peft_enabled(c))
    throw ConfigError("config", {"parallel.tensor_parallel: " + std::to_string(c.parallel().tensor_parallel()) +
                                 " with an adapter (peft) run: inference shards whole models only; merge the "
                                 "adapters first (lathe export) or run with --set parallel.tensor_parallel=1"});
  // The groups split the world and inherit its timeout: a rank that dies or hangs ends the
  // job naming it and the collective, as in training.
  world->set_timeout(c.parallel().collective_timeout_s());
  return std::make_shared<ParallelLayout>(c, world);
}

bool is_hf_model_dir(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  return fs::is_directory(p, ec) && fs::is_regular_file(p / "config.json", ec) &&
         (fs::is_regular_file(p / "model.safetensors", ec) || fs::is_regular_file(p / "model.safetensors.index.json", ec));
}

LoadedRun load_trained(const std::string& path, const std::vector<std::string>& overrides,
                       const std::shared_ptr<parallel::Communicator>& world) {
  LoadedRun r;
  if (is_hf_model_dir(path)) {
    // No stored config: the defaults plus overrides, with the directory as model.init_from
    // (which supplies the architecture, the tokenizer and the context length).
    r.cfg = hf_dir_base_config(overrides);
    const InitSource src = use_hf_dir(r.cfg, path);
    r.layout = inference_layout(r.cfg, world);
    r.tokenizer = load_run_tokenizer(r.cfg);
    r.model = model_from_hf(r.cfg, *r.tokenizer, src, r.layout.get());
    r.file = path;
    return r;
  }
  r.file = find_checkpoint_file(path);
  r.state = read_train_state(r.file);
  r.cfg = stored_config(r.file, r.state, overrides);
  r.layout = inference_layout(r.cfg, world);
  r.tokenizer = load_run_tokenizer(r.cfg);
  if (peft_enabled(r.cfg)) r.peft = std::make_shared<peft::InjectResult>();
  r.model = model_from(r.cfg, *r.tokenizer, r.file, r.peft.get(), r.layout.get());
  return r;
}

EvalRunResult eval_run(const std::string& target, const std::string& checkpoint,
                       const std::vector<std::string>& overrides, int64_t max_batches,
                       const std::shared_ptr<parallel::Communicator>& world) {
  EvalRunResult res;
  RunConfig cfg;
  // A Hugging Face directory as the model (the target itself, or --checkpoint with a config
  // that supplies the data): scored as is, no fine-tuning, no lathe checkpoint.
  const bool hf_target = !looks_like_config(target) && is_hf_model_dir(target);
  const bool hf_checkpoint = looks_like_config(target) && is_hf_model_dir(checkpoint);
  if (hf_target || hf_checkpoint) {
    if (hf_target) {
      if (!checkpoint.empty())
        throw ConfigError("eval", {"--checkpoint: " + target + " is a Hugging Face model directory; it has no steps to pick"});
      cfg = hf_dir_base_config(overrides);
    } else {
      cfg = configs::load_config(target, overrides);
    }
    res.checkpoint = hf_target ? target : checkpoint;
    const InitSource src = use_hf_dir(cfg, res.checkpoint);
    check_runnable(cfg);
    const auto layout = inference_layout(cfg, world);
    parallel::Communicator& comm = layout ? *layout->data_comm() : *world;
    auto tok = load_run_tokenizer(cfg);
    auto model = model_from_hf(cfg, *tok, src, layout.get());
    RunData data = load_run_data(cfg, *tok, &comm);
    if (data.val_size() == 0)
      throw ConfigError("config", {"data.val_fraction: 0 and no data.val_path, so there is no validation split to "
                                   "evaluate (pass --set data.val_fraction=0.1)"});
    res.data = data.description;
    res.val_windows = data.val_size();
    if (layout) res.layout = layout->name();
    res.eval = evaluate_val(*model, data, cfg.train().micro_batch(), max_batches, comm);
    return res;
  }
  if (looks_like_config(target)) {
    cfg = configs::load_config(target, overrides);
    // A fine-tuning config's architecture and tokenizer come from its init_from source.
    apply_init_from(cfg);
    configs::resolve(cfg);
    res.checkpoint = find_checkpoint_file(checkpoint.empty() ? "latest" : checkpoint, cfg.checkpoint().dir());
  } else {
    res.checkpoint = find_checkpoint_file(checkpoint.empty() ? target : checkpoint,
                                          fs::is_directory(fs::path(target) / "checkpoints")
                                              ? (fs::path(target) / "checkpoints").string()
                                              : target);
    cfg = stored_config(res.checkpoint, read_train_state(res.checkpoint), overrides);
  }
  check_runnable(cfg);
  res.step = read_train_state(res.checkpoint).step;
  const auto layout = inference_layout(cfg, world);
  // Tensor-parallel ranks score the same batches; the data is split over the replicas.
  parallel::Communicator& comm = layout ? *layout->data_comm() : *world;
  auto tok = load_run_tokenizer(cfg);
  auto model = model_from(cfg, *tok, res.checkpoint, nullptr, layout.get());
  RunData data = load_run_data(cfg, *tok, &comm);
  if (data.val_size() == 0)
    throw ConfigError("config", {"data.val_fraction: 0 and no data.val_path, so there is no validation split to "
                                 "evaluate (pass --set data.val_fraction=0.1)"});
  res.data = data.description;
  res.val_windows = data.val_size();
  if (layout) res.layout = layout->name();
  res.eval = evaluate_val(*model, data, cfg.train().micro_batch(), max_batches, comm);
  return res;
}

}  // namespace lathe::train
