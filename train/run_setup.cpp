// Config -> ModelSpec, tokenizer, device and datasets; see run_setup.h.
#include "train/run_setup.h"

#include <algorithm>

#include "core/memory.h"
#include "data/synthetic.h"
#include "data/text_source.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

namespace lathe::train {

using configs::ConfigError;

models::ModelSpec model_spec(const ModelConfig& m) {
  if (m.vocab_size() <= 0)
    throw ConfigError("config", {"model.vocab_size: still 0 (auto); it is taken from the tokenizer before the "
                                 "model is built"});
  models::ModelSpec s;
  s.arch = m.arch() == ModelConfig::LLAMA ? models::Arch::llama : models::Arch::gpt2;
  s.vocab_size = m.vocab_size();
  s.n_layer = m.n_layer();
  s.n_head = m.n_head();
  s.n_kv_head = m.n_kv_head();
  // d_ff = 0 is resolved by configs::default_d_ff (it knows ffn_multiple_of; ModelSpec's own
  // rule assumes 256), so the model always gets an explicit width.
  s.d_ff = m.d_ff() > 0 ? m.d_ff() : configs::default_d_ff(m);
  s.d_model = m.d_model();
  s.max_seq_len = m.max_seq_len();
  s.norm_eps = m.norm_eps();
  s.rope_theta = m.rope_theta();
  s.tie_embeddings = m.tie_embeddings();
  s.dropout = m.dropout();
  s.bias = m.has_bias() ? m.bias() : m.arch() == ModelConfig::GPT2;
  s.init_std = m.init_std();
  s.qkv_bias = m.qkv_bias();
  s.sliding_window = m.sliding_window();
  s.full_attention_layers = m.full_attention_layers();
  s.ladder_residual = m.ladder_residual();
  const RopeScalingConfig& r = m.rope_scaling();
  if (r.type() == RopeScalingConfig::LLAMA3) {
    s.rope_scaling.type = models::RopeScaling::Type::llama3;
    s.rope_scaling.factor = r.factor();
    s.rope_scaling.low_freq_factor = r.low_freq_factor();
    s.rope_scaling.high_freq_factor = r.high_freq_factor();
    s.rope_scaling.original_max_position_embeddings = r.original_max_position_embeddings();
  }
  return s;
}

// ladder_residual is left as the config says: it rewires a source's standard weights
// (Ladder conversion from model.init_from) rather than describing the source.
void set_model_config(ModelConfig* m, const models::ModelSpec& s) {
  m->set_arch(s.arch == models::Arch::llama ? ModelConfig::LLAMA : ModelConfig::GPT2);
  m->set_vocab_size(static_cast<int32_t>(s.vocab_size));
  m->set_n_layer(static_cast<int32_t>(s.n_layer));
  m->set_n_head(static_cast<int32_t>(s.n_head));
  m->set_n_kv_head(static_cast<int32_t>(s.kv_heads()));
  m->set_d_model(static_cast<int32_t>(s.d_model));
  m->set_d_ff(static_cast<int32_t>(s.ff_dim()));
  m->set_max_seq_len(static_cast<int32_t>(s.max_seq_len));
  m->set_norm_eps(s.norm_eps);
  m->set_rope_theta(s.rope_theta);
  m->set_tie_embeddings(s.tie_embeddings);
  m->set_bias(s.bias);
  m->set_qkv_bias(s.qkv_bias);
  m->set_sliding_window(static_cast<int32_t>(s.sliding_window));
  m->set_full_attention_layers(static_cast<int32_t>(s.full_attention_layers));
  m->set_init_std(s.init_std);
  RopeScalingConfig* r = m->mutable_rope_scaling();
  r->set_type(s.rope_scaling.enabled() ? RopeScalingConfig::LLAMA3 : RopeScalingConfig::NONE);
  r->set_factor(s.rope_scaling.factor);
  r->set_low_freq_factor(s.rope_scaling.low_freq_factor);
  r->set_high_freq_factor(s.rope_scaling.high_freq_factor);
  r->set_original_max_position_embeddings(s.rope_scaling.original_max_position_embeddings);
}

std::vector<std::string> unsupported_features(const RunConfig& cfg) {
  std::vector<std::string> out;
  const auto& d = cfg.data();
  if (d.source() == DataConfig::SYNTHETIC && !d.val_path().empty())
    out.push_back("data.val_path: not used with data.source SYNTHETIC (the validation split comes from "
                  "data.val_fraction)");
  if (cfg.train().precision() == TrainConfig::BF16) {
    // bf16 autocast needs the CUDA kernels; the CPU trains in f32. A device that does not
    // resolve is reported when the run starts (resolve_device names train.device).
    bool on_cuda = false;
    try {
      on_cuda = resolve_device(cfg.train().device()).is_cuda();
    } catch (const lathe::Error&) {
    }
    if (!on_cuda)
      out.push_back("train.precision: BF16 needs train.device cuda (a GPU); this build's trainer runs F32 on the "
                    "CPU (supported: F32)");
  } else if (cfg.train().precision() != TrainConfig::F32) {
    out.push_back("train.precision: " + TrainConfig::Precision_Name(cfg.train().precision()) +
                  " is not supported by this build's trainer (supported: F32, BF16 on CUDA)");
  }
  if (cfg.model().dtype() != ModelConfig::F32)
    out.push_back("model.dtype: " + ModelConfig::DType_Name(cfg.model().dtype()) +
                  " is not supported by this build's trainer (supported: F32)");
  // A federated run trains through lathe federate (federated/), which plans it without this section.
  if (cfg.federated().strategy() != FederatedConfig::OFF)
    out.push_back("federated.strategy: " + FederatedConfig::Strategy_Name(cfg.federated().strategy()) +
                  " makes this a federated run, which lathe train/finetune do not run; launch it with "
                  "mpirun -np N lathe federate CONFIG");
  return out;
}

void check_runnable(const RunConfig& cfg) {
  std::vector<std::string> issues = unsupported_features(cfg);
  if (!issues.empty()) throw ConfigError("config", issues);
}

Device resolve_device(const std::string& spec) {
  auto cuda_usable = [] {
    if (kernels::cuda_device_count() <= 0) return false;
    try {
      kernels::backend(Device::cuda(0));
      return true;
    } catch (const lathe::Error&) {
      return false;
    }
  };
  if (spec == "auto") return cuda_usable() ? Device::cuda(0) : Device::cpu();
  Device d;
  try {
    d = Device::parse(spec);
  } catch (const lathe::Error&) {
    throw ConfigError("config", {"train.device: must be auto, cpu, cuda or cuda:N (got \"" + spec + "\")"});
  }
  if (d.is_cuda()) {
    if (!cuda_usable())
      throw ConfigError("config", {"train.device: \"" + spec +
                                   "\" needs a GPU and lathe's CUDA kernels; this build/machine has none (use "
                                   "\"cpu\" or \"auto\")"});
    if (d.index >= kernels::cuda_device_count())
      throw ConfigError("config", {"train.device: \"" + spec + "\" but only " +
                                   std::to_string(kernels::cuda_device_count()) + " GPU(s) are visible"});
  }
  return d;
}

std::unique_ptr<data::Tokenizer> load_run_tokenizer(const RunConfig& cfg) {
  const std::string& spec = cfg.data().tokenizer();
  if (spec.empty() || spec == "auto")
    throw ConfigError("config", {"data.tokenizer: \"auto\" was not resolved (it means the tokenizer of "
                                 "model.init_from, or \"byte\" without one); set data.tokenizer"});
  try {
    return data::load_tokenizer(cfg.data().tokenizer());
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"data.tokenizer: cannot load \"" + cfg.data().tokenizer() + "\": " + e.message()});
  }
}

void apply_tokenizer_vocab(RunConfig& cfg, const data::Tokenizer& tok) {
  auto* m = cfg.mutable_model();
  if (m->vocab_size() == 0) {
    m->set_vocab_size(tok.vocab_size());
  } else if (m->vocab_size() < tok.vocab_size()) {
    throw ConfigError("config", {"model.vocab_size: " + std::to_string(m->vocab_size()) +
                                 " is smaller than the vocabulary of tokenizer \"" + cfg.data().tokenizer() + "\" (" +
                                 std::to_string(tok.vocab_size()) + "); set it to 0 to take the tokenizer's"});
  }
}

double flops_per_token(const models::ModelSpec& spec, int64_t seq_len) {
  const double N = static_cast<double>(models::count_parameters(spec));
  return 6.0 * N + 6.0 * static_cast<double>(spec.n_layer) * static_cast<double>(spec.d_model) *
                       static_cast<double>(seq_len);
}

}  // namespace lathe::train
