// validate(): the semantic rules a parsed RunConfig must satisfy. Every message starts with
// the path of the field it is about and shows the offending value, so a user knows what to
// change without reading the schema.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/memory.h"
#include "configs/checks.h"
#include "configs/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/message.h>

namespace lathe::configs {

namespace detail {

namespace {

namespace gp = google::protobuf;

std::string show(double v) {
  // Shortest form that reads back as the same double (3e-4, not 0.00029999999999999997).
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}
std::string show(int64_t v) { return std::to_string(v); }
std::string show(int32_t v) { return std::to_string(v); }

class Checker {
 public:
  std::vector<Issue> issues;

  void fail(const std::string& path, const std::string& msg) { issues.push_back({path, path + ": " + msg}); }
  // For a message that reads better without "path:" in front (it still starts with the path).
  void fail_raw(const std::string& path, const std::string& msg) { issues.push_back({path, msg}); }

  // The negated comparisons also reject NaN; infinity is refused separately (inf > 0).
  template <typename T>
  void positive(const std::string& path, T v) {
    if (!(v > 0)) {
      fail(path, "must be > 0 (got " + show(v) + ")");
    } else if (!finite(v)) {
      fail(path, "must be a finite number > 0 (got " + show(v) + ")");
    }
  }
  template <typename T>
  void non_negative(const std::string& path, T v) {
    if (!(v >= 0)) {
      fail(path, "must be >= 0 (got " + show(v) + ")");
    } else if (!finite(v)) {
      fail(path, "must be a finite number >= 0 (got " + show(v) + ")");
    }
  }
  bool reported(const std::string& path) const {
    for (const auto& i : issues)
      if (i.path == path) return true;
    return false;
  }

 private:
  static bool finite(double v) { return std::isfinite(v); }
  static bool finite(int64_t) { return true; }
  static bool finite(int32_t) { return true; }

 public:
  // v in [lo, hi) or [lo, hi] (or (lo, hi] with lo_open).
  void in_range(const std::string& path, double v, double lo, double hi, bool lo_open, bool hi_open) {
    const bool ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (!ok)
      fail(path, std::string("must be in ") + (lo_open ? "(" : "[") + show(lo) + ", " + show(hi) + (hi_open ? ")" : "]") +
                     " (got " + show(v) + ")");
  }
};

bool valid_device(const std::string& d) {
  if (d == "auto" || d == "cpu" || d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5) return false;
  for (size_t i = 5; i < d.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(d[i]))) return false;
  return true;
}

void check_model(const RunConfig& cfg, Checker& c) {
  const ModelConfig& m = cfg.model();
  c.non_negative("model.vocab_size", m.vocab_size());
  c.positive("model.n_layer", m.n_layer());
  c.positive("model.n_head", m.n_head());
  c.non_negative("model.n_kv_head", m.n_kv_head());
  c.positive("model.d_model", m.d_model());
  c.non_negative("model.d_ff", m.d_ff());
  c.positive("model.max_seq_len", m.max_seq_len());
  c.positive("model.norm_eps", m.norm_eps());
  c.in_range("model.dropout", m.dropout(), 0, 1, false, true);
  c.non_negative("model.init_std", m.init_std());
  c.positive("model.ffn_multiple_of", m.ffn_multiple_of());
  if (m.n_head() > 0 && m.d_model() > 0 && m.d_model() % m.n_head() != 0)
    c.fail("model.n_head", "d_model (" + show(m.d_model()) + ") must be divisible by n_head (" + show(m.n_head()) + ")");
  const int32_t kv = m.n_kv_head() > 0 ? m.n_kv_head() : m.n_head();
  if (m.n_head() > 0 && m.n_kv_head() > 0 && m.n_head() % kv != 0)
    c.fail("model.n_kv_head", "n_head (" + show(m.n_head()) + ") must be divisible by n_kv_head (" + show(kv) + ")");
  if (m.arch() == ModelConfig::GPT2 && m.n_head() > 0 && m.n_kv_head() > 0 && kv != m.n_head())
    c.fail("model.n_kv_head", "GPT2 uses multi-head attention, so n_kv_head must be 0 or n_head (" + show(m.n_head()) +
                                  ") (got " + show(m.n_kv_head()) + "); grouped-query attention needs arch: LLAMA");
  if (m.arch() == ModelConfig::LLAMA) {
    c.positive("model.rope_theta", m.rope_theta());
    if (m.n_head() > 0 && m.d_model() > 0 && m.d_model() % m.n_head() == 0 && (m.d_model() / m.n_head()) % 2 != 0)
      c.fail("model.d_model", "rotary embeddings need an even head dim, d_model / n_head = " + show(m.d_model()) + " / " +
                                  show(m.n_head()) + " = " + show(m.d_model() / m.n_head()));
  }
  c.non_negative("model.sliding_window", m.sliding_window());
  c.non_negative("model.full_attention_layers", m.full_attention_layers());
  if (m.n_layer() > 0 && m.full_attention_layers() > m.n_layer())
    c.fail("model.full_attention_layers", "must be at most n_layer (" + show(m.n_layer()) + ") (got " +
                                              show(m.full_attention_layers()) + ")");
  if (m.sliding_window() == 0 && m.full_attention_layers() > 0)
    c.fail("model.full_attention_layers", "says which layers use the sliding window, but model.sliding_window is 0 "
                                          "(none); set sliding_window or remove full_attention_layers");
  const RopeScalingConfig& rs = m.rope_scaling();
  if (rs.type() == RopeScalingConfig::LLAMA3) {
    if (m.arch() != ModelConfig::LLAMA)
      c.fail("model.rope_scaling", "LLAMA3 scaling rescales RoPE frequencies; it needs arch: LLAMA (GPT2 has learned "
                                   "positions)");
    if (!(rs.factor() >= 1)) c.fail("model.rope_scaling.factor", "must be >= 1 (got " + show(rs.factor()) + ")");
    c.positive("model.rope_scaling.low_freq_factor", rs.low_freq_factor());
    if (!(rs.high_freq_factor() > rs.low_freq_factor()))
      c.fail("model.rope_scaling.high_freq_factor", "must be > low_freq_factor (" + show(rs.low_freq_factor()) +
                                                        ") (got " + show(rs.high_freq_factor()) + ")");
    c.positive("model.rope_scaling.original_max_position_embeddings", rs.original_max_position_embeddings());
  }
  // "auto" (or "") without init_from resolves to the byte tokenizer.
  const std::string& tok = cfg.data().tokenizer();
  const bool byte_tok = tok == "byte" || ((tok == "auto" || tok.empty()) && m.init_from().empty());
  if (byte_tok && m.vocab_size() > 0 && m.vocab_size() < 256)
    c.fail("model.vocab_size", "the byte tokenizer needs at least 256 (got " + show(m.vocab_size()) + ")");
}

void check_data(const RunConfig& cfg, Checker& c) {
  const DataConfig& d = cfg.data();
  const std::string source = DataConfig::Source_Name(d.source());
  if (d.source() != DataConfig::SYNTHETIC && d.path().empty())
    c.fail("data.path", "required when data.source is " + source);
  if (d.source() == DataConfig::SYNTHETIC) {
    if (!d.path().empty())
      c.fail("data.path", "not used when data.source is SYNTHETIC (got \"" + d.path() +
                              "\"); set data.source to TEXT, JSONL or HDF5 to read it");
    c.positive("data.synthetic.bytes", d.synthetic().bytes());
  }
  c.in_range("data.val_fraction", d.val_fraction(), 0, 1, false, true);
  if (d.format() != DataConfig::PLAIN && d.source() != DataConfig::JSONL && d.source() != DataConfig::HDF5)
    c.fail("data.format", DataConfig::Format_Name(d.format()) +
                              " is instruction data: it needs data.source JSONL (or HDF5 prepared from it), got " + source);
}

void check_optimizer(const RunConfig& cfg, Checker& c) {
  const OptimizerConfig& o = cfg.optimizer();
  c.positive("optimizer.lr", o.lr());
  c.in_range("optimizer.beta1", o.beta1(), 0, 1, false, true);
  c.in_range("optimizer.beta2", o.beta2(), 0, 1, false, true);
  c.positive("optimizer.eps", o.eps());
  c.non_negative("optimizer.weight_decay", o.weight_decay());
}

// Layer-wise updates (train/layerwise.h) step each parameter as soon as its gradient is final
// and free that gradient, so nothing that needs every gradient of the step at once can run.
void check_layerwise(const RunConfig& cfg, Checker& c) {
  const OptimizerConfig& o = cfg.optimizer();
  if (!o.layerwise()) return;
  if (cfg.train().grad_clip() > 0)
    c.fail_raw("optimizer.layerwise",
               "optimizer.layerwise: true needs train.grad_clip: 0 (got train.grad_clip " +
                   show(cfg.train().grad_clip()) +
                   "): global clipping scales every gradient by the norm of all of them, and layer-wise updates "
                   "never hold them together; set train.grad_clip: 0 or optimizer.layerwise: false");
  if (o.type() == OptimizerConfig::SGD_SAI && o.sgd_sai().normalize())
    c.fail_raw("optimizer.layerwise",
               "optimizer.layerwise: true does not work with optimizer.sgd_sai.normalize: true (the paper's form "
               "divides every tensor's g-SNR by the largest over all tensors, which needs every gradient at once); "
               "set optimizer.sgd_sai.normalize: false or optimizer.layerwise: false");
}

// SGD-SaI, 8-bit and paged optimizer states (optim/sgd_sai.h, optim/blockwise8.h, core/paged.h).
void check_optimizer_states(const RunConfig& cfg, Checker& c) {
  const OptimizerConfig& o = cfg.optimizer();
  const std::string type = OptimizerConfig::Type_Name(o.type());
  const bool adam_family =
      o.type() == OptimizerConfig::ADAMW || o.type() == OptimizerConfig::GALORE || o.type() == OptimizerConfig::FIRA;
  if (o.state_bits() != 32 && o.state_bits() != 8) {
    c.fail("optimizer.state_bits", "must be 8 or 32 (got " + show(o.state_bits()) + ")");
  } else if (o.state_bits() == 8 && !adam_family) {
    c.fail("optimizer.state_bits", "8-bit states are for the Adam moments of ADAMW, GALORE and FIRA; optimizer.type " +
                                       type + " keeps f32 state (set state_bits to 32)");
  }
  // A resolved config has every field written out (configs::resolve), so "set" means "set to
  // something other than its default" here.
  if (o.has_adamw_variant() && !adam_family && o.adamw_variant() != OptimizerConfig::TORCH)
    c.fail("optimizer.adamw_variant", "applies to ADAMW, GALORE and FIRA, not to optimizer.type " + type);
  if (o.has_eight_bit()) {
    const int64_t b = o.eight_bit().block_size();
    if (b < 64 || b > 4096 || (b & (b - 1)) != 0)
      c.fail("optimizer.eight_bit.block_size", "must be a power of two from 64 to 4096 (got " + show(static_cast<int64_t>(b)) + ")");
    c.non_negative("optimizer.eight_bit.min_8bit_size", o.eight_bit().min_8bit_size());
    if (o.eight_bit().has_f32_params()) {
      try {
        std::regex re(o.eight_bit().f32_params(), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        c.fail("optimizer.eight_bit.f32_params",
               "\"" + o.eight_bit().f32_params() + "\" is not a valid regex (" + e.what() + ")");
      }
    }
  }
  if (o.has_sgd_sai()) {
    if (o.type() != OptimizerConfig::SGD_SAI &&
        !google::protobuf::util::MessageDifferencer::Equivalent(o.sgd_sai(), SgdSaiConfig()))
      c.fail("optimizer.sgd_sai", "set, but optimizer.type is " + type + " (use type SGD_SAI)");
    c.in_range("optimizer.sgd_sai.momentum", o.sgd_sai().momentum(), 0, 1, false, true);
  }
  if (o.type() == OptimizerConfig::SGD_SAI && o.sgd_momentum() != 0)
    c.fail("optimizer.sgd_momentum", "is SGD's; SGD_SAI takes optimizer.sgd_sai.momentum (got sgd_momentum " +
                                         show(o.sgd_momentum()) + ")");
  if (o.has_paging()) {
    c.non_negative("optimizer.paging.min_numel", o.paging().min_numel());
  }
}

void check_schedule(const RunConfig& cfg, Checker& c) {
  const ScheduleConfig& s = cfg.schedule();
  c.non_negative("schedule.warmup_steps", s.warmup_steps());
  c.non_negative("schedule.decay_steps", s.decay_steps());
  c.in_range("schedule.min_lr_ratio", s.min_lr_ratio(), 0, 1, false, false);
  if (cfg.train().steps() > 0 && s.warmup_steps() > cfg.train().steps())
    c.fail_raw("schedule.warmup_steps", "schedule.warmup_steps (" + show(s.warmup_steps()) + ") exceeds train.steps (" +
                                            show(cfg.train().steps()) + ")");
}

void check_train(const RunConfig& cfg, Checker& c) {
  const TrainConfig& t = cfg.train();
  c.non_negative("train.steps", t.steps());
  c.non_negative("train.epochs", t.epochs());
    // lathe federate sets train.steps to federated.local_steps (the schedule spans one local round).
  const bool federated = cfg.federated().strategy() != FederatedConfig::OFF;
  if (federated && t.epochs() > 0)
    c.fail("train.epochs", "is not used by federated training: set federated.local_steps or federated.local_epochs");
  if (!federated && (t.steps() > 0) == (t.epochs() > 0))
    c.fail("train", "set exactly one of steps and epochs (got steps " + show(t.steps()) + ", epochs " +
                        show(t.epochs()) + ")");
  c.positive("train.micro_batch", t.micro_batch());
  c.positive("train.grad_accum", t.grad_accum());
  c.non_negative("train.seq_len", t.seq_len());
  // With init_from, model.max_seq_len comes from the source model (checked by the trainer).
  if (t.seq_len() > cfg.model().max_seq_len() && cfg.model().max_seq_len() > 0 && cfg.model().init_from().empty())
    c.fail("train.seq_len", "must be <= model.max_seq_len (" + show(cfg.model().max_seq_len()) + ") (got " +
                                show(t.seq_len()) + ")");
  c.non_negative("train.grad_clip", t.grad_clip());
  c.non_negative("train.eval_interval", t.eval_interval());
  c.non_negative("train.eval_batches", t.eval_batches());
  c.positive("train.log_interval", t.log_interval());
  if (t.eval_interval() > 0 && cfg.data().val_fraction() == 0 && cfg.data().val_path().empty())
    c.fail("train.eval_interval", "evaluation every " + show(t.eval_interval()) +
                                      " steps needs validation data: set data.val_fraction > 0 or data.val_path");
  if (t.eval_interval() > 0 && t.eval_batches() == 0)
    c.fail("train.eval_batches", "must be > 0 when train.eval_interval is set (got 0)");
  if (!valid_device(t.device()))
    c.fail("train.device", "must be auto, cpu, cuda or cuda:N (got \"" + t.device() + "\")");
}

// Tensor / sequence parallel degrees against the model (the world size is checked when the
// process groups are built, where it is known: parallel/process_groups.h).
void check_parallel_layout(const RunConfig& cfg, Checker& c) {
  const ParallelConfig& p = cfg.parallel();
  const ModelConfig& m = cfg.model();
  c.positive("parallel.tensor_parallel", p.tensor_parallel());
  c.positive("parallel.sequence_parallel", p.sequence_parallel());
  c.positive("parallel.vocab_pad_multiple", p.vocab_pad_multiple());
  const int32_t tp = p.tensor_parallel();
  if (p.sequence_parallel() > 1) {
    if (p.sequence_parallel_mode() == ParallelConfig::RING) {
      // Ring attention runs on each TP rank's heads over a group of its own (any tensor_parallel).
    } else if (p.sequence_parallel_mode() == ParallelConfig::ULYSSES) {
      // The all-to-all splits each TP rank's own heads over the group (parallel/ulysses.h):
      // query heads split, KV heads split or are replicated. Heads TP does not split are its
      // own error (below).
      const int32_t sp = p.sequence_parallel();
      const int32_t kv = m.n_kv_head() > 0 ? m.n_kv_head() : m.n_head();
      if (tp > 0 && m.n_head() > 0 && m.n_head() % tp == 0 && kv % tp == 0) {
        const int32_t h = m.n_head() / tp, hkv = kv / tp;
        const std::string per_rank =
            tp > 1 ? " per tensor-parallel rank (/ tensor_parallel " + show(tp) + ")" : std::string();
        if (h % sp != 0)
          c.fail("parallel.sequence_parallel", "Ulysses splits the query heads over sequence_parallel (" + show(sp) +
                                                   "), but model.n_head = " + show(m.n_head()) + " gives " + show(h) +
                                                   per_rank + ", not divisible by " + show(sp));
        else if (hkv % sp != 0 && sp % hkv != 0)
          c.fail("parallel.sequence_parallel",
                 "Ulysses splits or replicates the key/value heads over sequence_parallel (" + show(sp) +
                     "), but model.n_kv_head = " + show(kv) + " gives " + show(hkv) + per_rank +
                     ", which neither is divisible by " + show(sp) + " nor divides it");
      }
    } else {
      // Megatron-SP slices the sequence over the TP ranks (equality with tensor_parallel is
      // a layout rule, parallel/process_groups.h).
      if (cfg.train().seq_len() > 0 && cfg.train().seq_len() % p.sequence_parallel() != 0)
        c.fail("parallel.sequence_parallel", "train.seq_len (" + show(cfg.train().seq_len()) +
                                                 ") must be divisible by sequence_parallel (" +
                                                 show(p.sequence_parallel()) + ")");
      if (m.ladder_residual())
        c.fail("parallel.sequence_parallel", "MEGATRON sequence parallelism cannot be combined with "
                                             "model.ladder_residual (the ladder defers an all-reduce, not a reduce-scatter)");
      if (cfg.sample().at_eval())
        c.fail("parallel.sequence_parallel", "MEGATRON sequence parallelism has no incremental decoding, so "
                                             "sample.at_eval must be off (generate from the checkpoint with lathe generate)");
    }
  }
  if (p.ring_zigzag() && (p.sequence_parallel() <= 1 || p.sequence_parallel_mode() != ParallelConfig::RING))
    c.fail("parallel.ring_zigzag", "is for ring attention: it needs sequence_parallel_mode: RING and "
                                   "sequence_parallel > 1 (got " + ParallelConfig::SequenceParallelMode_Name(
                                       p.sequence_parallel_mode()) + ", sequence_parallel " +
                                       show(p.sequence_parallel()) + ")");
  if (p.zero_stage() != 0 && p.zero_stage() != 1)
    c.fail("parallel.zero_stage", "must be 0 (off) or 1 (sharded optimizer state) (got " + show(p.zero_stage()) + ")");
  if (p.zero_stage() == 1 && cfg.optimizer().layerwise())
    c.fail_raw("parallel.zero_stage",
               "parallel.zero_stage: 1 does not work with optimizer.layerwise: true (ZeRO-1 steps each rank's shard "
               "after one reduce-scatter of the whole gradient, layer-wise updates step each parameter during "
               "backward); set one of them off");
  if (p.zero_stage() == 1 && cfg.peft().method() == PeftConfig::SPIEL)
    c.fail("parallel.zero_stage", "ZeRO-1 does not shard SpIEL's own optimizer (values with per-element ages) yet; "
                                  "use zero_stage 0 with peft.method SPIEL");
  // ZeRO-1 with TP shards each TP rank's own slice over its data-parallel group.
  if (tp <= 1) return;
  const int32_t kv = m.n_kv_head() > 0 ? m.n_kv_head() : m.n_head();
  if (m.n_head() > 0 && m.n_head() % tp != 0)
    c.fail("parallel.tensor_parallel", "model.n_head (" + show(m.n_head()) + ") must be divisible by tensor_parallel (" +
                                           show(tp) + ")");
  if (kv > 0 && kv % tp != 0)
    c.fail("parallel.tensor_parallel", "the key/value heads (model.n_kv_head = " + show(kv) +
                                           ") must be divisible by tensor_parallel (" + show(tp) +
                                           "): each rank needs the KV heads of its query heads");
  if (m.d_model() > 0) {
    const int64_t ff = m.d_ff() > 0 ? m.d_ff() : default_d_ff(m);
    if (ff % tp != 0)
      c.fail("parallel.tensor_parallel", "the MLP width (model.d_ff = " + show(ff) +
                                             ") must be divisible by tensor_parallel (" + show(tp) + ")");
  }
  const OptimizerConfig& o = cfg.optimizer();
  // SGD-SaI's per-tensor g-SNR combines the slices' statistics over TP (optim/sgd_sai.h);
  // GaLore and Fira step whole-matrix stand-ins (train/tp_whole_tensors.h), with ZeRO-1 owned
  // whole by the data-parallel ranks.
  // Layer-wise updates under TP step each shard from its hook (train/layerwise.h); these two
  // need the other TP ranks inside a parameter's update, which hooks cannot run in step.
  if (o.layerwise() && (o.type() == OptimizerConfig::GALORE || o.type() == OptimizerConfig::FIRA))
    c.fail("optimizer.layerwise", "does not work with " + OptimizerConfig::Type_Name(o.type()) +
                                      " under tensor_parallel " + show(tp) +
                                      ": its projection needs the whole matrix, gathered over the tensor-parallel "
                                      "ranks after backward (train/tp_whole_tensors.h), not one shard's gradient "
                                      "in its hook; set optimizer.layerwise: false or tensor_parallel 1");
  if (o.layerwise() && o.type() == OptimizerConfig::SGD_SAI)
    c.fail("optimizer.layerwise", "does not work with SGD_SAI under tensor_parallel " + show(tp) +
                                      ": the g-SNR of a split tensor sums statistics over the tensor-parallel ranks "
                                      "inside its update, a collective that per-parameter hooks cannot order; set "
                                      "optimizer.layerwise: false or tensor_parallel 1");
  // Adapters shard with their layers (parallel/tp_lora.h): LoRA, LoRA-SB / LoRA-XS, SoRA and
  // NOLA are exact. SpIEL's indices address whole matrices.
  const PeftConfig& pf = cfg.peft();
  const std::string tp_s = "tensor_parallel " + show(tp);
  if (pf.method() == PeftConfig::SPIEL)
    c.fail("peft.method", "SPIEL is not supported under " + tp_s +
                              ": its indices and regrowth address whole weight matrices; use LORA, or tensor_parallel 1");
}

void check_rest(const RunConfig& cfg, Checker& c) {
  const CheckpointConfig& k = cfg.checkpoint();
  c.non_negative("checkpoint.interval", k.interval());
  c.non_negative("checkpoint.keep_last", k.keep_last());
  if (k.resume().empty())
    c.fail("checkpoint.resume", "must be \"auto\", \"never\" or the path of a checkpoint step directory");

  c.non_negative("logging.peak_tflops", cfg.logging().peak_tflops());

  const SampleConfig& s = cfg.sample();
  c.non_negative("sample.max_new_tokens", s.max_new_tokens());
  c.non_negative("sample.temperature", s.temperature());
  c.non_negative("sample.top_k", s.top_k());
  if (cfg.model().vocab_size() > 0 && s.top_k() > cfg.model().vocab_size())
    c.fail("sample.top_k", "must be <= model.vocab_size (" + show(cfg.model().vocab_size()) + ") (got " +
                               show(s.top_k()) + ")");
  c.in_range("sample.top_p", s.top_p(), 0, 1, true, false);
  if (s.at_eval() && s.max_new_tokens() == 0)
    c.fail("sample.max_new_tokens", "must be > 0 when sample.at_eval is set (got 0)");

  const ParallelConfig& p = cfg.parallel();
  c.non_negative("parallel.threads_per_rank", p.threads_per_rank());
  c.positive("parallel.collective_timeout_s", p.collective_timeout_s());
  c.positive("parallel.bucket_mb", p.bucket_mb());
  check_parallel_layout(cfg, c);
}

// A peft field that differs from its default (a repeated or map field: non-empty), or "".
std::string set_peft_field(const PeftConfig& p) {
  const gp::Descriptor* d = p.GetDescriptor();
  const gp::Reflection* r = p.GetReflection();
  const PeftConfig& dflt = PeftConfig::default_instance();
  for (int i = 0; i < d->field_count(); ++i) {
    const gp::FieldDescriptor* f = d->field(i);
    if (f->name() == "method") continue;
    if (f->is_repeated()) {
      if (r->FieldSize(p, f) > 0) return f->name();
      continue;
    }
    if (!r->HasField(p, f)) continue;
    bool same = true;
    switch (f->cpp_type()) {
      case gp::FieldDescriptor::CPPTYPE_INT32: same = r->GetInt32(p, f) == r->GetInt32(dflt, f); break;
      case gp::FieldDescriptor::CPPTYPE_INT64: same = r->GetInt64(p, f) == r->GetInt64(dflt, f); break;
      case gp::FieldDescriptor::CPPTYPE_UINT64: same = r->GetUInt64(p, f) == r->GetUInt64(dflt, f); break;
      case gp::FieldDescriptor::CPPTYPE_DOUBLE: same = r->GetDouble(p, f) == r->GetDouble(dflt, f); break;
      case gp::FieldDescriptor::CPPTYPE_BOOL: same = r->GetBool(p, f) == r->GetBool(dflt, f); break;
      case gp::FieldDescriptor::CPPTYPE_ENUM: same = r->GetEnumValue(p, f) == r->GetEnumValue(dflt, f); break;
      case gp::FieldDescriptor::CPPTYPE_STRING: same = r->GetString(p, f) == r->GetString(dflt, f); break;
      default: break;
    }
    if (!same) return f->name();
  }
  return "";
}

void check_peft(const RunConfig& cfg, Checker& c) {
  const PeftConfig& p = cfg.peft();
  if (p.method() == PeftConfig::OFF) {
    const std::string f = set_peft_field(p);
    if (!f.empty())
      c.fail("peft.method", "is OFF (the default), but peft." + f +
                                " is set; add method: LORA to the peft section to fine-tune with adapters");
    return;
  }
  if (p.method() == PeftConfig::SPIEL) {
    if (p.spiel_budget() < 0) c.fail("peft.spiel_budget", "must be >= 0 (got " + show(p.spiel_budget()) + ")");
    if (p.spiel_budget() == 0) c.in_range("peft.spiel_density", p.spiel_density(), 0, 1, true, false);
    c.positive("peft.spiel_reselection_steps", p.spiel_reselection_steps());
    if (p.spiel_accumulation_steps() < 0 || p.spiel_accumulation_steps() >= p.spiel_reselection_steps())
      c.fail("peft.spiel_accumulation_steps", "must be in [0, peft.spiel_reselection_steps) (got " +
                                                  show(p.spiel_accumulation_steps()) + ", reselection steps " +
                                                  show(p.spiel_reselection_steps()) + ")");
    c.in_range("peft.spiel_reselection_rate", p.spiel_reselection_rate(), 0, 1, false, false);
    if (p.lora_dropout() != 0)
      c.fail("peft.lora_dropout", "does not apply to SPIEL (a sparse delta has no adapter branch to drop)");
  }
  if (p.method() == PeftConfig::LORA_SB) {
    if (p.sb_init() == PeftConfig::GRADIENT) c.positive("peft.sb_init_batches", p.sb_init_batches());
    if (p.svd_niter() < 0) c.fail("peft.svd_niter", "must be >= 0 (got " + show(p.svd_niter()) + ")");
  }
  if (p.method() == PeftConfig::SORA) {
    if (!(p.sora_lambda() >= 0) || !std::isfinite(p.sora_lambda()))
      c.fail("peft.sora_lambda", "must be a finite number >= 0 (got " + show(p.sora_lambda()) + ")");
    if (!(p.sora_lambda_max() >= 0) || !std::isfinite(p.sora_lambda_max()))
      c.fail("peft.sora_lambda_max", "must be a finite number >= 0 (got " + show(p.sora_lambda_max()) + ")");
    if (p.sora_lambda_max() > 0) {
      c.positive("peft.sora_schedule_levels", p.sora_schedule_levels());
      c.positive("peft.sora_schedule_interval", p.sora_schedule_interval());
      if (p.sora_schedule_start() < 0)
        c.fail("peft.sora_schedule_start", "must be >= 0 (got " + show(p.sora_schedule_start()) + ")");
    }
  }
  if (p.method() == PeftConfig::NOLA) {
    c.positive("peft.nola_num_basis_a", p.nola_num_basis_a());
    c.positive("peft.nola_num_basis_b", p.nola_num_basis_b());
    c.positive("peft.nola_chunk", p.nola_chunk());
  }
  c.positive("peft.r", p.r());
  c.positive("peft.lora_alpha", p.lora_alpha());
  c.in_range("peft.lora_dropout", p.lora_dropout(), 0, 1, false, true);
  if (p.target_modules_size() > 0 && !p.target_regex().empty())
    c.fail("peft.target_regex", "give target_modules or target_regex, not both");
  if (p.exclude_modules_size() > 0 && !p.exclude_regex().empty())
    c.fail("peft.exclude_regex", "give exclude_modules or exclude_regex, not both");
  for (const auto& t : p.target_modules())
    if (t.empty()) c.fail("peft.target_modules", "entries must be non-empty module names");
  for (const auto& [k, v] : p.rank_pattern())
    if (v <= 0) c.fail("peft.rank_pattern", "rank for '" + k + "' must be > 0 (got " + show(v) + ")");
  for (const auto& [k, v] : p.alpha_pattern())
    if (!(v > 0)) c.fail("peft.alpha_pattern", "alpha for '" + k + "' must be > 0 (got " + show(v) + ")");
}

// The federated section (federated/): its own ranges and what each strategy needs of peft.
void check_federated(const RunConfig& cfg, Checker& c) {
  const FederatedConfig& f = cfg.federated();
  if (f.strategy() == FederatedConfig::OFF) {
    // Fields set with no strategy would be silently ignored.
    const FederatedConfig& d = FederatedConfig::default_instance();
    std::string set;
    if (f.clients() != d.clients()) set = "clients";
    if (f.rounds() != d.rounds()) set = "rounds";
    if (f.local_steps() != d.local_steps()) set = "local_steps";
    if (f.local_epochs() != d.local_epochs()) set = "local_epochs";
    if (f.client_fraction() != d.client_fraction()) set = "client_fraction";
    if (f.partition() != d.partition()) set = "partition";
    if (!f.label_field().empty()) set = "label_field";
    if (f.round_deadline_s() != d.round_deadline_s()) set = "round_deadline_s";
    if (f.client_ranks_size() > 0) set = "client_ranks";
    if (f.privacy().clip_norm() != 0 || f.privacy().noise_multiplier() != 0) set = "privacy";
    if (!set.empty())
      c.fail("federated.strategy", "is OFF (the default), but federated." + set +
                                       " is set; set strategy (FEDAVG, FFA_LORA, FLORA, FED_SB) and run lathe federate");
    return;
  }
  c.positive("federated.clients", f.clients());
  c.positive("federated.rounds", f.rounds());
  if (f.local_epochs() > 0) {
    c.positive("federated.local_epochs", f.local_epochs());
  } else {
    c.positive("federated.local_steps", f.local_steps());
  }
  c.in_range("federated.client_fraction", f.client_fraction(), 0, 1, true, false);
  c.positive("federated.min_clients", f.min_clients());
  if (f.min_clients() > f.clients())
    c.fail("federated.min_clients", "must be <= federated.clients (" + show(f.clients()) + "), got " +
                                        show(f.min_clients()));
  c.positive("federated.min_client_size", f.min_client_size());
  c.non_negative("federated.round_deadline_s", f.round_deadline_s());
  c.positive("federated.server_timeout_s", f.server_timeout_s());
  c.positive("federated.eval_interval", f.eval_interval());
  if (f.partition() == FederatedConfig::DIRICHLET) c.positive("federated.dirichlet_alpha", f.dirichlet_alpha());
  if (f.partition() != FederatedConfig::IID) {
    const std::string part = FederatedConfig::Partition_Name(f.partition());
    if (f.label_field().empty())
      c.fail("federated.label_field", "must name a JSONL field for partition " + part);
    if (cfg.data().source() != DataConfig::JSONL || cfg.data().val_path().empty())
      c.fail("federated.partition", part +
                                        " reads label_field from every record of data.path: it needs data.source "
                                        "JSONL and data.val_path (so that every record is a training sample)");
  }
  const PeftConfig::Method m = cfg.peft().method();
  const std::string strategy = FederatedConfig::Strategy_Name(f.strategy());
  if (f.strategy() == FederatedConfig::FED_SB) {
    if (m != PeftConfig::LORA_SB)
      c.fail("peft.method", "federated.strategy FED_SB trains LoRA-SB adapters: set peft.method LORA_SB (got " +
                                PeftConfig::Method_Name(m) + ")");
  } else if (m != PeftConfig::LORA) {
    c.fail("peft.method", "federated.strategy " + strategy + " needs peft.method LORA (got " +
                              PeftConfig::Method_Name(m) + ")");
  }
  if (f.client_ranks_size() > 0) {
    if (f.strategy() != FederatedConfig::FLORA)
      c.fail("federated.client_ranks", "per-client ranks are for strategy FLORA (got " + strategy + ")");
    for (int i = 0; i < f.client_ranks_size(); ++i)
      if (f.client_ranks(i) <= 0 || f.client_ranks(i) > cfg.peft().r())
        c.fail("federated.client_ranks", "entry " + std::to_string(i) + " must be in [1, peft.r = " +
                                             show(cfg.peft().r()) + "] (got " + show(f.client_ranks(i)) + ")");
  }
  if (m != PeftConfig::OFF && (cfg.peft().rank_pattern_size() > 0 || cfg.peft().alpha_pattern_size() > 0))
    c.fail("peft.rank_pattern", "per-module ranks are not supported with federated training (one r for all modules)");
  if (cfg.peft().modules_to_save_size() > 0)
    c.fail("peft.modules_to_save", "federated training averages adapter factors only; modules_to_save is not supported");
  if (cfg.peft().bias() != PeftConfig::NONE)
    c.fail("peft.bias", "federated training averages adapter factors only; bias must be NONE");
  if (cfg.peft().lora_dropout() > 0 && f.privacy().clip_norm() > 0)
    c.fail("peft.lora_dropout", "must be 0 with federated.privacy (per-example gradients are taken without dropout)");
  const FederatedPrivacyConfig& pv = f.privacy();
  c.non_negative("federated.privacy.clip_norm", pv.clip_norm());
  c.non_negative("federated.privacy.noise_multiplier", pv.noise_multiplier());
  if (pv.clip_norm() > 0) {
    c.in_range("federated.privacy.delta", pv.delta(), 0, 1, true, true);
    if (cfg.optimizer().layerwise())
      c.fail("optimizer.layerwise", "is not supported with federated.privacy (DP-SGD sets the gradients itself)");
  } else if (pv.noise_multiplier() > 0) {
    c.fail("federated.privacy.noise_multiplier", "needs federated.privacy.clip_norm > 0 (noise is sigma x clip_norm)");
  }
  if (cfg.optimizer().layerwise())
    c.fail("optimizer.layerwise", "is not supported by lathe federate (clients step the optimizer once per step)");
}

// Every floating field of the config must be finite, including those no rule above
// covers (sgd_momentum, rope_theta of a GPT2, ...): nothing in lathe means "infinite".
void check_finite(const gp::Message& msg, const std::string& prefix, Checker& c) {
  const gp::Reflection* r = msg.GetReflection();
  std::vector<const gp::FieldDescriptor*> fields;
  r->ListFields(msg, &fields);
  for (const gp::FieldDescriptor* f : fields) {
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    if (f->cpp_type() == gp::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(msg, f); ++i) check_finite(r->GetRepeatedMessage(msg, f, i), path, c);
      } else {
        check_finite(r->GetMessage(msg, f), path, c);
      }
      continue;
    }
    const bool is_double = f->cpp_type() == gp::FieldDescriptor::CPPTYPE_DOUBLE;
    if (!is_double && f->cpp_type() != gp::FieldDescriptor::CPPTYPE_FLOAT) continue;
    const int n = f->is_repeated() ? r->FieldSize(msg, f) : 1;
    for (int i = 0; i < n; ++i) {
      double v = 0;
      if (f->is_repeated()) {
        v = is_double ? r->GetRepeatedDouble(msg, f, i) : r->GetRepeatedFloat(msg, f, i);
      } else {
        v = is_double ? r->GetDouble(msg, f) : r->GetFloat(msg, f);
      }
      if (!std::isfinite(v) && !c.reported(path)) c.fail(path, "must be a finite number (got " + show(v) + ")");
    }
  }
}

uint64_t machine_memory() { return lathe::machine_memory_bytes(); }

std::string gib(long double bytes) {
  std::ostringstream o;
  o.precision(3);
  o << static_cast<double>(bytes / (1ull << 30)) << " GiB";
  return o.str();
}

// Sizes that cannot work are config errors here, not a bad_alloc (or an int overflow)
// deep in the loader or the model: the tokens of a micro-batch index int32 ranges, the
// f32 parameters must fit in host memory (the model is built there first, whatever the
// device), and on a CPU run so must the largest activation, the logits of a micro-batch.
// The bounds are what certainly fails, not an estimate of the whole run's footprint.
void check_sizes(const RunConfig& cfg, Checker& c) {
  const ModelConfig& m = cfg.model();
  const TrainConfig& t = cfg.train();
  const long double seq = t.seq_len() > 0 ? t.seq_len() : m.max_seq_len();
  const long double tokens = static_cast<long double>(t.micro_batch()) * seq;
  if (t.micro_batch() > 0 && seq > 0 && tokens > INT32_MAX) {
    c.fail("train.micro_batch", "micro_batch * seq_len = " + show(t.micro_batch()) + " * " +
                                    show(static_cast<int64_t>(seq)) + " tokens per micro-step is beyond 2^31-1; lower "
                                    "train.micro_batch (and raise train.grad_accum for the same batch)");
    return;
  }
  const uint64_t avail = machine_memory();
  if (avail == 0 || m.n_layer() <= 0 || m.d_model() <= 0) return;
  const long double d = m.d_model(), vocab = m.vocab_size() > 0 ? m.vocab_size() : 256;
  const long double ff = m.d_ff() > 0 ? m.d_ff() : 4 * d;
  const long double params = vocab * d * (m.tie_embeddings() ? 1 : 2) +
                             static_cast<long double>(m.n_layer()) * (4 * d * d + 3 * d * ff);
  const long double param_bytes = params * 4;
  if (param_bytes > avail) {
    c.fail("model.n_layer", "the model has about " + show(static_cast<double>(params)) + " parameters (n_layer " +
                                show(m.n_layer()) + ", d_model " + show(m.d_model()) + ", vocab_size " +
                                show(static_cast<int64_t>(vocab)) + "): " + gib(param_bytes) +
                                " as f32, more than the " + gib(avail) + " of memory on this machine");
    return;
  }
  if (t.device() != "cpu") return;  // a GPU's memory is the trainer's to check
  const long double logits_bytes = tokens * vocab * 4;
  if (logits_bytes > avail)
    c.fail("train.micro_batch", "the logits of one micro-batch (micro_batch " + show(t.micro_batch()) + " * seq_len " +
                                    show(static_cast<int64_t>(seq)) + " * vocab " + show(static_cast<int64_t>(vocab)) +
                                    " floats) need " + gib(logits_bytes) + ", more than the " + gib(avail) +
                                    " of memory on this machine; lower train.micro_batch and raise train.grad_accum");
}

}  // namespace

std::vector<Issue> check(const RunConfig& cfg) {
  Checker c;
  bool name_ok = !cfg.name().empty();
  for (const char ch : cfg.name())
    name_ok = name_ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.');
  if (!name_ok)
    c.fail("name", "must be non-empty and use only letters, digits, '_', '-' and '.' (got \"" + cfg.name() + "\")");
  check_model(cfg, c);
  check_data(cfg, c);
  check_optimizer(cfg, c);
  check_layerwise(cfg, c);
  check_optimizer_states(cfg, c);
  check_schedule(cfg, c);
  check_train(cfg, c);
  check_rest(cfg, c);
  check_peft(cfg, c);
  check_federated(cfg, c);
  check_finite(cfg, "", c);
  check_sizes(cfg, c);
  return c.issues;
}

}  // namespace detail

std::vector<std::string> validate(const RunConfig& cfg) {
  std::vector<std::string> out;
  for (const auto& issue : detail::check(cfg)) out.push_back(issue.message);
  return out;
}

}  // namespace lathe::configs
