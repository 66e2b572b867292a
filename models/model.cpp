#include "models/model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "kernels/ops.h"
#include "models/autocast.h"
#include "models/block.h"
#include "models/layers.h"

namespace lathe::models {

namespace ag = lathe::autograd;

const char* arch_name(Arch a) { return a == Arch::gpt2 ? "gpt2" : "llama"; }

int64_t ModelSpec::ff_dim() const {
  if (d_ff > 0) return d_ff;
  if (arch == Arch::gpt2) return 4 * d_model;
  // Llama reference rule: 2/3 of 4d, rounded up to a multiple of 256.
  int64_t h = (2 * 4 * d_model) / 3;
  return (h + 255) / 256 * 256;
}

void ModelSpec::validate() const {
  LATHE_CHECK(vocab_size > 0) << "model.vocab_size: must be > 0 (got " << vocab_size << ")";
  LATHE_CHECK(n_layer > 0) << "model.n_layer: must be > 0 (got " << n_layer << ")";
  LATHE_CHECK(n_head > 0 && d_model > 0) << "model: n_head and d_model must be > 0";
  LATHE_CHECK(d_model % n_head == 0) << "model.n_head: d_model (" << d_model << ") must be divisible by n_head ("
                                     << n_head << ")";
  LATHE_CHECK(n_head % kv_heads() == 0) << "model.n_kv_head: n_head (" << n_head
                                        << ") must be divisible by n_kv_head (" << kv_heads() << ")";
  LATHE_CHECK(arch != Arch::llama || head_dim() % 2 == 0)
      << "model: RoPE needs an even head dimension (d_model / n_head = " << head_dim() << ")";
  LATHE_CHECK(max_seq_len > 0) << "model.max_seq_len: must be > 0";
  LATHE_CHECK(sliding_window >= 0) << "model.sliding_window: must be >= 0 (0 = none) (got " << sliding_window << ")";
  LATHE_CHECK(full_attention_layers >= 0 && full_attention_layers <= n_layer)
      << "model.full_attention_layers: must be in [0, n_layer = " << n_layer << "] (got " << full_attention_layers
      << ")";
  LATHE_CHECK(dropout >= 0 && dropout < 1) << "model.dropout: must be in [0, 1) (got " << dropout << ")";
  LATHE_CHECK(arch != Arch::llama || (rope_theta > 0 && std::isfinite(rope_theta)))
      << "model.rope_theta: must be finite and > 0 (got " << rope_theta << ")";
  if (rope_scaling.enabled()) {
    const RopeScaling& r = rope_scaling;
    LATHE_CHECK(arch == Arch::llama) << "model.rope_scaling: " << rope_scaling_name(r.type)
                                     << " scaling needs RoPE; the " << arch_name(arch) << " architecture has none";
    LATHE_CHECK(r.factor >= 1 && std::isfinite(r.factor))
        << "model.rope_scaling.factor: must be finite and >= 1 (got " << r.factor << ")";
    LATHE_CHECK(r.low_freq_factor > 0 && std::isfinite(r.low_freq_factor))
        << "model.rope_scaling.low_freq_factor: must be finite and > 0 (got " << r.low_freq_factor << ")";
    LATHE_CHECK(r.high_freq_factor > r.low_freq_factor && std::isfinite(r.high_freq_factor))
        << "model.rope_scaling.high_freq_factor: must be finite and > low_freq_factor (got " << r.high_freq_factor
        << " vs " << r.low_freq_factor << ")";
    LATHE_CHECK(r.original_max_position_embeddings > 0)
        << "model.rope_scaling.original_max_position_embeddings: must be > 0 (got "
        << r.original_max_position_embeddings << ")";
  }
}

ModelSpec ModelSpec::gpt2_124m() {
  ModelSpec s;
  s.arch = Arch::gpt2;
  s.vocab_size = 50257;
  s.n_layer = 12;
  s.n_head = 12;
  s.d_model = 768;
  s.max_seq_len = 1024;
  s.tie_embeddings = true;
  s.bias = true;
  return s;
}

ModelSpec ModelSpec::llama_1b() {
  ModelSpec s;
  s.arch = Arch::llama;
  s.vocab_size = 128256;
  s.n_layer = 16;
  s.n_head = 32;
  s.n_kv_head = 8;
  s.d_model = 2048;
  s.d_ff = 8192;
  s.max_seq_len = 131072;
  s.norm_eps = 1e-5;
  s.rope_theta = 500000.0;
  s.tie_embeddings = true;
  s.bias = false;
  s.rope_scaling.type = RopeScaling::Type::llama3;
  s.rope_scaling.factor = 32.0;
  s.rope_scaling.low_freq_factor = 1.0;
  s.rope_scaling.high_freq_factor = 4.0;
  s.rope_scaling.original_max_position_embeddings = 8192;
  return s;
}

int64_t count_parameters(const ModelSpec& s) {
  const int64_t C = s.d_model, D = s.head_dim(), F = s.ff_dim(), kv = s.kv_heads() * D;
  const int64_t b = s.bias ? 1 : 0, qkv_b = s.has_qkv_bias() ? 1 : 0;
  const bool gpt2 = s.arch == Arch::gpt2;
  const int64_t norm = gpt2 ? C * (1 + b) : C;  // LayerNorm carries a bias along with the linears
  int64_t attn = C * (s.n_head * D) + 2 * C * kv + (s.n_head * D) * C + qkv_b * (s.n_head * D + 2 * kv) + b * C;
  int64_t mlp = gpt2 ? (2 * C * F + b * (F + C)) : (3 * C * F + b * (2 * F + C));
  int64_t per_layer = 2 * norm + attn + mlp;
  int64_t total = s.vocab_size * C + s.n_layer * per_layer + norm;
  if (gpt2) total += s.max_seq_len * C;
  if (!s.tie_embeddings) total += s.vocab_size * C;
  return total;
}

Tensor CausalLM::loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index) {
  LATHE_CHECK(ids.shape() == targets.shape()) << "loss: ids " << ids.shape_str() << " and targets "
                                              << targets.shape_str() << " differ in shape";
  Tensor logits = head_logits(ids, nullptr, false);
  const int64_t V = logits.size(-1);
  Tensor flat = ag::reshape(logits, {-1, V});
  // A vocabulary shard is scored without gathering the [B*T, V] logits.
  if (vocab_) return vocab_->cross_entropy(flat, targets.reshape({-1}), ignore_index);
  return ag::cross_entropy(flat, targets.reshape({-1}), ignore_index);
}

Tensor sequence_dropout(const Tensor& x, double p, Generator& gen, bool training, const SequenceShard* seq) {
  if (!seq || seq->size() == 1 || !training || p == 0.0) return ag::dropout(x, p, gen, training);
  Shape full = x.shape();
  full[1] *= seq->size();
  const Tensor mask = kernels::dropout(Tensor::zeros(full, x.dtype(), x.device()), p, gen).mask;
  const Tensor mine = seq->scatter(mask.to(x.dtype()), 1).contiguous();
  return ag::mul(ag::mul(x, mine), 1.0 / (1.0 - p));
}

namespace {
// Without a reducer (one rank) a branch output is already complete.
class Complete final : public PendingSum {
 public:
  explicit Complete(Tensor t) : t_(std::move(t)) {}
  Tensor wait() override { return t_; }

 private:
  Tensor t_;
};
}  // namespace

namespace {

class Transformer final : public CausalLM {
 public:
  explicit Transformer(const ModelSpec& s) : spec_(s) {
    s.validate();
    embed_ = register_slot<Embedding>("embed", std::make_shared<Embedding>(s.vocab_size, s.d_model));
    if (s.arch == Arch::gpt2)
      pos_ = register_slot<Embedding>("pos_embed", std::make_shared<Embedding>(s.max_seq_len, s.d_model));
    auto layers = register_module("layers", std::make_shared<autograd::Module>());
    for (int64_t i = 0; i < s.n_layer; ++i)
      blocks_.push_back(layers->register_slot<Block>(std::to_string(i), make_block(s, i)));
    final_norm_ = register_slot<Norm>("final_norm", make_norm(s));
    if (!s.tie_embeddings)
      lm_head_ = register_slot<LinearLayer>("lm_head", std::make_shared<Linear>(s.d_model, s.vocab_size, false));
  }

  const ModelSpec& spec() const override { return spec_; }
  std::string type_name() const override { return arch_name(spec_.arch); }

  void set_sequence_parallel(std::shared_ptr<SequenceShard> seq) override {
    CausalLM::set_sequence_parallel(std::move(seq));
    for (auto& b : blocks_) b->seq = seq_.get();
  }

  Tensor forward(const Tensor& ids) override { return full(head_logits(ids, nullptr, false)); }

  Tensor forward_cached(const Tensor& ids, DecodeCache& cache, bool last_only) override {
    if (cache.layers.empty()) cache.layers.resize(static_cast<size_t>(spec_.n_layer));
    LATHE_CHECK(static_cast<int64_t>(cache.layers.size()) == spec_.n_layer)
        << "forward_cached: the cache holds " << cache.layers.size() << " layers, the model has " << spec_.n_layer;
    return full(head_logits(ids, &cache, last_only));
  }

 protected:
  Tensor head_logits(const Tensor& ids, DecodeCache* cache, bool last_only) override {
    return run(ids, cache, last_only);
  }

 private:
  Tensor full(const Tensor& logits) const { return vocab_ ? vocab_->full_logits(logits) : logits; }

  std::unique_ptr<PendingSum> reduce(const Tensor& partial) {
    if (reducer_) return reducer_->start(partial);
    return std::make_unique<Complete>(partial);
  }

  // Ladder residual (see ModelSpec::ladder_residual): each branch output is summed over the
  // ranks asynchronously and added to the residual stream one sub-module later.
  Tensor run_ladder(Tensor residual, const Tensor& cos, const Tensor& sin, DecodeCache* cache) {
    std::unique_ptr<PendingSum> attn_out, mlp_out;
    // Dropout after the sum: the masks are drawn in the replicated region, the same on every rank.
    auto settle = [&](std::unique_ptr<PendingSum>& p) {
      if (!p) return;
      residual = ag::add(residual, ag::dropout(p->wait(), spec_.dropout, dropout_gen_, is_training()));
      p.reset();
    };
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& b = *blocks_[i];
      settle(attn_out);
      attn_out = reduce(b.attention_out(residual, cos, sin, cache ? &cache->layers[i] : nullptr));
      settle(mlp_out);
      mlp_out = reduce(b.mlp_out(residual));
    }
    settle(attn_out);
    settle(mlp_out);
    return residual;
  }

  Tensor run(const Tensor& ids, DecodeCache* cache, bool last_only) {
    LATHE_CHECK(ids.dim() == 2) << "forward: ids must be [batch, time], got " << ids.shape_str();
    const int64_t T = ids.size(1);
    const int64_t start = cache ? cache->length() : position_offset_;  // position of ids' first token
    LATHE_CHECK(start + T <= spec_.max_seq_len)
        << "forward: sequence length " << start + T << (cache ? " (cached positions + new tokens)" : "")
        << " exceeds model.max_seq_len " << spec_.max_seq_len;
    const DType master = embed_->weight().dtype();
    if (seq_) {
      LATHE_CHECK(!cache && !last_only) << "forward: sequence parallelism has no incremental decoding (generate with "
                                           "the gathered checkpoint: lathe generate)";
      LATHE_CHECK(T % seq_->size() == 0) << "forward: sequence parallelism over " << seq_->size()
                                         << " ranks needs a sequence length divisible by it, got " << T;
    }
    Tensor x = embed_->forward(ids);  // with sequence parallelism: this rank's slice
    Tensor cos, sin;
    if (!cache && !position_spans_.empty()) {
      // Several spans of positions (zig-zag ring attention), concatenated in order.
      int64_t n = 0, end = 0;
      for (const auto& [s0, len] : position_spans_) n += len, end = std::max(end, s0 + len);
      LATHE_CHECK(n == T && end <= spec_.max_seq_len)
          << "forward: position spans of " << n << " tokens up to position " << end << " for " << T
          << " tokens (model.max_seq_len " << spec_.max_seq_len << ")";
      std::vector<Tensor> parts, cs, ss;
      if (spec_.arch != Arch::gpt2) rope_for(end, master, cos, sin);
      for (const auto& [s0, len] : position_spans_) {
        if (spec_.arch == Arch::gpt2) parts.push_back(pos_->forward(positions(s0, len)));
        else cs.push_back(cos.narrow(0, s0, len)), ss.push_back(sin.narrow(0, s0, len));
      }
      if (spec_.arch == Arch::gpt2) {
        x = ag::add(x, ag::concat(parts, 0));  // [B, T, C] + [T, C]
      } else {
        cos = ag::concat(cs, 0);
        sin = ag::concat(ss, 0);
      }
    } else if (spec_.arch == Arch::gpt2) {
      Tensor pos = pos_->forward(positions(start, T));
      x = ag::add(x, seq_ ? seq_->scatter(pos, 0) : pos);  // [B, T, C] + [T, C]
    } else {
      rope_for(start + T, master, cos, sin);
      cos = cos.narrow(0, start, T);
      sin = sin.narrow(0, start, T);
    }
    x = sequence_dropout(x, spec_.dropout, dropout_gen_, is_training(), seq_.get());
    if (spec_.ladder_residual) {
      x = run_ladder(x, cos, sin, cache);
    } else {
      for (size_t i = 0; i < blocks_.size(); ++i)
        x = blocks_[i]->forward(x, cos, sin, dropout_gen_, cache ? &cache->layers[i] : nullptr);
    }
    if (last_only) x = ag::narrow(x, 1, T - 1, 1);
    x = final_norm_->forward(x);
    Tensor logits = lm_head_ ? lm_head_->forward(x) : embed_->logits(x);
    // Under Autocast the head ran in the compute dtype; the loss wants the master dtype.
    return logits.dtype() == master ? logits : ag::cast(logits, master);
  }

  // Position ids start..start+T-1 as a view of a cached arange on the model's device: filled
  // once on the host and moved there when it grows (like the RoPE tables), so a training step
  // makes no host->device copy for them.
  Tensor positions(int64_t start, int64_t T) {
    const Device dev = embed_->weight().device();
    const int64_t rows_needed = start + T;
    if (!pos_ids_.defined() || pos_ids_.size(0) < rows_needed || pos_ids_.device() != dev) {
      int64_t rows = 1;
      while (rows < rows_needed) rows *= 2;
      rows = std::min(rows, spec_.max_seq_len);
      pos_ids_ = Tensor::arange(0.0, static_cast<double>(rows), 1, DType::i64, dev);
    }
    return pos_ids_.narrow(0, start, T);
  }

  // cos/sin tables for positions 0..rows-1 (at least), in the parameters' dtype: the rope
  // kernel rotates lower-precision activations with them.
  void rope_for(int64_t rows_needed, DType dt, Tensor& cos, Tensor& sin) {
    const Device dev = embed_->weight().device();
    if (!cos_.defined() || cos_.size(0) < rows_needed || cos_.dtype() != dt || cos_.device() != dev) {
      // Tables grow with the longest sequence seen (a power of two, at most max_seq_len), so a
      // model with a 128K context does not build 128K rows to run on 256 tokens.
      int64_t rows = 1;
      while (rows < rows_needed) rows *= 2;
      rows = std::min(rows, spec_.max_seq_len);
      kernels::rope_tables(rows, rope_inv_freq(spec_), 0, dt, cos_, sin_);
      // Built on the host in double (the angles need it), moved once to the model's device.
      cos_ = cos_.to(dev);
      sin_ = sin_.to(dev);
    }
    cos = cos_;
    sin = sin_;
  }

  ModelSpec spec_;
  autograd::Slot<Embedding> embed_, pos_;
  std::vector<autograd::Slot<Block>> blocks_;
  autograd::Slot<Norm> final_norm_;
  autograd::Slot<LinearLayer> lm_head_;
  Tensor cos_, sin_;
  Tensor pos_ids_;  // i64 [rows] = 0..rows-1 on the model's device (GPT-2)
};

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

}  // namespace

std::unique_ptr<CausalLM> build_model(const ModelSpec& spec, uint64_t seed) {
  auto m = std::make_unique<Transformer>(spec);
  // GPT-2 initialization: N(0, std) for matrices and embeddings, residual output projections
  // scaled by 1/sqrt(2 * n_layer) (GPT-2 paper, section 2.3), norms at 1, biases at 0.
  // Draws happen in parameter-name order, so the same seed always gives the same weights.
  Generator gen(seed);
  const double resid_std = spec.init_std / std::sqrt(2.0 * static_cast<double>(spec.n_layer));
  for (auto& [name, p] : m->named_parameters()) {
    if (p.dim() < 2) continue;  // norms keep 1, biases keep 0
    bool resid = ends_with(name, "attn.o_proj.weight") || ends_with(name, "mlp.proj.weight") ||
                 ends_with(name, "mlp.down_proj.weight");
    double std = resid ? resid_std : spec.init_std;
    Tensor r = Tensor::randn(p.shape(), gen, DType::f32);
    kernels::scale_(r, std);
    p.copy_(r);
  }
  m->dropout_generator().set_state(seed ^ 0x9E3779B97F4A7C15ull, 0);
  return m;
}

std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt, const SampleOptions& o) {
  LATHE_CHECK(!prompt.empty()) << "generate: the prompt must hold at least one token";
  const ModelSpec& s = model.spec();
  for (int32_t t : prompt)
    LATHE_CHECK(t >= 0 && t < s.vocab_size) << "generate: prompt token " << t << " is outside the vocabulary [0, "
                                            << s.vocab_size << ")";
  LATHE_CHECK(o.temperature >= 0) << "generate: temperature must be >= 0";
  LATHE_CHECK(o.top_p > 0 && o.top_p <= 1) << "generate: top_p must be in (0, 1]";
  bool was_training = model.is_training();
  model.eval();
  autograd::NoGradGuard no_grad;
  Generator gen(o.seed);
  std::vector<int32_t> out = prompt;
  std::vector<double> probs;
  std::vector<int32_t> order;
  const Device dev = model.device();
  // One allocation per layer when the whole run fits in the context.
  DecodeCache cache(s.n_layer, std::min<int64_t>(s.max_seq_len, static_cast<int64_t>(prompt.size()) + o.max_new_tokens));
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const int64_t n = static_cast<int64_t>(out.size());
    const int64_t start = std::max<int64_t>(0, n - s.max_seq_len);
    std::vector<double> z;
    if (o.use_cache) {
      // Past the context the window slides and every position shifts: rebuild the cache.
      if (start > 0) cache.reset();
      const int64_t from = start > 0 ? start : cache.length();
      std::vector<int64_t> feed(out.begin() + from, out.end());
      const int64_t T = static_cast<int64_t>(feed.size());
      Tensor logits = model.forward_cached(Tensor::from_vector<int64_t>(feed, {1, T}).to(dev), cache, true);
      z = logits.select(1, 0).select(0, 0).to_vector<double>();
    } else {
      std::vector<int64_t> ctx(out.begin() + start, out.end());
      const int64_t T = static_cast<int64_t>(ctx.size());
      Tensor logits = model.forward(Tensor::from_vector<int64_t>(ctx, {1, T}).to(dev));
      z = logits.select(1, T - 1).select(0, 0).to_vector<double>();
    }
    const int64_t V = static_cast<int64_t>(z.size());
    int32_t next;
    if (o.temperature == 0.0) {
      next = static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin());
    } else {
      order.resize(V);
      std::iota(order.begin(), order.end(), 0);
      // Highest logits first; ties by id so the order is deterministic.
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
      int64_t keep = V;
      if (o.top_k > 0) keep = std::min<int64_t>(keep, o.top_k);
      probs.assign(keep, 0.0);
      double zmax = z[order[0]], total = 0;
      for (int64_t i = 0; i < keep; ++i) total += probs[i] = std::exp((z[order[i]] - zmax) / o.temperature);
      if (o.top_p < 1.0) {  // nucleus: the smallest prefix whose mass reaches top_p
        double acc = 0;
        int64_t n = 0;
        while (n < keep) {
          acc += probs[n++] / total;
          if (acc >= o.top_p) break;
        }
        keep = n;
        total = 0;
        for (int64_t i = 0; i < keep; ++i) total += probs[i];
      }
      double u = gen.uniform_double() * total, acc = 0;
      next = order[keep - 1];
      for (int64_t i = 0; i < keep; ++i) {
        acc += probs[i];
        if (u < acc) {
          next = order[i];
          break;
        }
      }
    }
    out.push_back(next);
    if (next == o.stop_token) break;
  }
  model.train(was_training);
  return out;
}

}  // namespace lathe::models
