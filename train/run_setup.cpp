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
  return s;
}

std::vector<std::string> unsupported_features(const RunConfig& cfg) {
  std::vector<std::string> out;
  const auto& d = cfg.data();
  if (d.source() != DataConfig::SYNTHETIC && d.source() != DataConfig::TEXT)
    out.push_back("data.source: " + DataConfig::Source_Name(d.source()) +
                  " is not supported by this build of lathe train (supported: SYNTHETIC, TEXT)");
  if (d.source() == DataConfig::SYNTHETIC && !d.val_path().empty())
    out.push_back("data.val_path: not used with data.source SYNTHETIC (the validation split comes from "
                  "data.val_fraction)");
  if (cfg.train().precision() != TrainConfig::F32)
    out.push_back("train.precision: " + TrainConfig::Precision_Name(cfg.train().precision()) +
                  " is not supported by this build's trainer (supported: F32)");
  if (cfg.model().dtype() != ModelConfig::F32)
    out.push_back("model.dtype: " + ModelConfig::DType_Name(cfg.model().dtype()) +
                  " is not supported by this build's trainer (supported: F32)");
  if (!cfg.model().init_from().empty())
    out.push_back("model.init_from: starting from pretrained weights (\"" + cfg.model().init_from() +
                  "\") is not supported by this build (only random init); use checkpoint.resume to continue a "
                  "lathe run");
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

namespace {

std::string read_source_text(const std::string& field, const std::string& path) {
  try {
    return data::read_text(path);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {field + ": " + e.message()});
  }
}

std::shared_ptr<const data::TokenIds> tokenize(const std::string& text, const data::Tokenizer& tok) {
  MemCategoryGuard g(MemCategory::other);
  auto ids = std::make_shared<data::TokenIds>();
  ids->reserve(text.size() / 2);
  // Raw corpora may contain text that looks like a special token; it stays plain text.
  tok.encode_append(text, *ids, /*allow_special=*/false);
  return ids;
}

}  // namespace

RunData load_run_data(const RunConfig& cfg, const data::Tokenizer& tok) {
  const auto& d = cfg.data();
  const int64_t T = cfg.train().seq_len() > 0 ? cfg.train().seq_len() : cfg.model().max_seq_len();
  RunData out;
  std::string text;
  if (d.source() == DataConfig::SYNTHETIC) {
    text = data::synthetic_corpus(d.synthetic().seed(), static_cast<size_t>(d.synthetic().bytes()));
    out.description = "synthetic corpus (seed " + std::to_string(d.synthetic().seed()) + ", " +
                      std::to_string(d.synthetic().bytes()) + " bytes)";
  } else if (d.source() == DataConfig::TEXT) {
    text = read_source_text("data.path", d.path());
    out.description = "text " + d.path() + " (" + std::to_string(text.size()) + " bytes)";
  } else {
    check_runnable(cfg);  // throws naming data.source
  }
  out.tokens = tokenize(text, tok);
  const int64_t n = static_cast<int64_t>(out.tokens->size());
  for (int32_t id : *out.tokens)
    if (id < 0 || id >= cfg.model().vocab_size())
      throw ConfigError("config", {"model.vocab_size: the data holds token id " + std::to_string(id) +
                                   ", outside the model's vocabulary of " +
                                   std::to_string(cfg.model().vocab_size())});
  data::PackedLMDataset all(out.tokens, T);
  if (!d.val_path().empty()) {
    out.train = all;
    auto val_tokens = tokenize(read_source_text("data.val_path", d.val_path()), tok);
    out.val = data::PackedLMDataset(val_tokens, T);
    if (out.val.size() == 0)
      throw ConfigError("config", {"data.val_path: " + d.val_path() + " holds " +
                                   std::to_string(val_tokens->size()) + " tokens, fewer than one window of " +
                                   std::to_string(T + 1)});
  } else if (d.val_fraction() > 0) {
    try {
      std::tie(out.train, out.val) = all.split(d.val_fraction());
    } catch (const lathe::Error& e) {
      throw ConfigError("config", {"data.val_fraction: cannot split " + std::to_string(n) + " tokens into windows of " +
                                   std::to_string(T) + ": " + e.message()});
    }
  } else {
    out.train = all;
  }
  if (out.train.size() == 0)
    throw ConfigError("config", {"data: " + out.description + " gives " + std::to_string(n) +
                                 " tokens, not one training window of train.seq_len + 1 = " + std::to_string(T + 1)});
  out.description += ", " + std::to_string(n) + " tokens: " + std::to_string(out.train.size()) + " train / " +
                     std::to_string(out.val.size()) + " val windows of " + std::to_string(T);
  return out;
}

double flops_per_token(const models::ModelSpec& spec, int64_t seq_len) {
  const double N = static_cast<double>(models::count_parameters(spec));
  return 6.0 * N + 6.0 * static_cast<double>(spec.n_layer) * static_cast<double>(spec.d_model) *
                       static_cast<double>(seq_len);
}

}  // namespace lathe::train
