// Decoder-only language models built from a ModelSpec: the GPT-2 family (learned
// positions, LayerNorm, GELU MLP, tied embeddings) and the Llama family (RoPE, RMSNorm,
// SwiGLU, grouped-query attention, optionally tied embeddings).
//
// Parameter names (stable, dotted; checkpoints, PEFT targeting and HF import key on them):
//   embed.weight                      token embedding [V, C]
//   pos_embed.weight                  learned positions [max_seq_len, C] (GPT-2 only)
//   layers.N.attn_norm.{weight,bias}  pre-attention norm (bias: LayerNorm only)
//   layers.N.attn.{q,k,v,o}_proj.{weight,bias}   [out, in]; bias when spec.bias (q/k/v also
//                                                 when spec.qkv_bias: Qwen2)
//   layers.N.mlp_norm.{weight,bias}
//   layers.N.mlp.{fc,proj}.{weight,bias}          GELU MLP (GPT-2)
//   layers.N.mlp.{gate_proj,up_proj,down_proj}.weight   SwiGLU (Llama)
//   final_norm.{weight,bias}
//   lm_head.weight                    only when embeddings are not tied
//
// The layers (models/linear.h, layers.h, attention.h, block.h) sit in slots of their
// interface (LinearLayer, Norm, FeedForward, Attention, Block), so replace_module on any of
// these names rebinds what forward calls, and replace_parameter changes what it reads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/module.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "models/attention.h"

namespace lathe::models {

enum class Arch { gpt2, llama };
const char* arch_name(Arch a);

// Rescaling of the RoPE inverse frequencies for context extension (Llama family only).
// llama3 (Meta, Llama 3.1 reference code; transformers rope_type "llama3"): with
// wavelen_i = 2 pi / inv_freq_i, frequencies whose wavelength exceeds
// original_max_position_embeddings / low_freq_factor are divided by `factor`, those below
// original_max_position_embeddings / high_freq_factor are kept, and those in between are
// interpolated: smooth = (original_max / wavelen - low) / (high - low),
// inv = (1 - smooth) * inv / factor + smooth * inv. Attention scores are not rescaled.
struct RopeScaling {
  enum class Type { none, llama3 };
  Type type = Type::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  bool enabled() const { return type != Type::none; }
};
const char* rope_scaling_name(RopeScaling::Type t);  // "none", "llama3"

struct ModelSpec {
  Arch arch = Arch::gpt2;
  int64_t vocab_size = 256;
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t n_kv_head = 0;  // 0 = n_head
  int64_t d_model = 64;
  int64_t d_ff = 0;       // 0 = 4 * d_model (GPT-2) or the Llama rule (2/3 * 4 * d, rounded up to 256)
  int64_t max_seq_len = 256;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_embeddings = true;
  double dropout = 0.0;
  bool bias = true;       // linear biases (GPT-2 yes, Llama no)
  bool qkv_bias = false;  // q/k/v projections get a bias even when `bias` is false (Qwen2)
  RopeScaling rope_scaling;  // Llama only; none = plain theta^(-2i/D)
  double init_std = 0.02;
  // Sliding-window attention (Mistral; Qwen2 with use_sliding_window): query i attends to
  // keys i - sliding_window < j <= i (0 = no window), in layers full_attention_layers and up
  // (the layers below attend over the whole context; Qwen2's max_window_layers).
  int64_t sliding_window = 0;
  int64_t full_attention_layers = 0;
  // Ladder residual (Zhang et al., "Ladder-residual", ICML 2025): sub-module m (attn1, mlp1,
  // attn2, ...) reads r_m = r_{m-1} + o_{m-2} instead of r_{m-1} + o_{m-1}, and the output is
  // final_norm(r_2L + o_2L-1 + o_2L). The same parameters as the standard block, so a
  // standard checkpoint loads into it; under tensor parallelism the all-reduce of o_{m-1}
  // runs while module m computes (see BranchReducer).
  bool ladder_residual = false;

  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t head_dim() const { return d_model / n_head; }
  int64_t ff_dim() const;
  bool has_qkv_bias() const { return bias || qkv_bias; }
  // The attention window of layer `layer` (0 = whole context).
  int64_t window_of(int64_t layer) const { return layer >= full_attention_layers ? sliding_window : 0; }
  // Throws naming the field for an inconsistent spec (d_model % n_head, n_head % n_kv_head, ...).
  void validate() const;

  static ModelSpec gpt2_124m();  // GPT-2 small: 124,439,808 parameters
  static ModelSpec llama_1b();   // Llama-3.2-1B (llama3 RoPE scaling too): 1,235,814,400 parameters
};

// Exact parameter count from the spec alone (no allocation).
int64_t count_parameters(const ModelSpec& spec);

// RoPE inverse frequencies theta^(-2i/D), i < D/2, after the spec's rope_scaling
// (D = head_dim). These are what the model rotates by and what HF files store as
// rotary_emb.inv_freq.
std::vector<double> rope_inv_freq(const ModelSpec& spec);
std::vector<double> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling);

// The key/value caches of every layer, for incremental decoding.
struct DecodeCache {
  // reserve: positions each layer allocates at its first append (0: what the first call needs).
  explicit DecodeCache(int64_t n_layer = 0, int64_t reserve = 0) : layers(static_cast<size_t>(n_layer), KVCache(reserve)) {}
  std::vector<KVCache> layers;
  // Positions held (the position of the next token fed).
  int64_t length() const { return layers.empty() ? 0 : layers.front().length; }
  void reset() {
    for (auto& l : layers) l.reset();
  }
};

// Seams for tensor parallelism (parallel/tensor_parallel.h fills them; a plain model has
// none). models/ stays free of communication: these say what to do with a vocabulary shard
// of the logits and with a branch output that is still a partial sum over ranks.
class VocabOutput {
 public:
  virtual ~VocabOutput() = default;
  // The full logits [..., V] from this rank's shard (padding columns dropped).
  virtual Tensor full_logits(const Tensor& local) const = 0;
  // Mean cross-entropy over non-ignored targets [N] of logits [N, local columns], computed
  // without gathering the vocabulary.
  virtual Tensor cross_entropy(const Tensor& local, const Tensor& targets, int64_t ignore_index) const = 0;
};
// A branch output summed over ranks, started now and waited for later (Ladder residual).
class PendingSum {
 public:
  virtual ~PendingSum() = default;
  virtual Tensor wait() = 0;
};
class BranchReducer {
 public:
  virtual ~BranchReducer() = default;
  virtual std::unique_ptr<PendingSum> start(const Tensor& partial) = 0;
};

// Megatron sequence parallelism (Korthikanti et al., 2022): outside the tensor-parallel
// layers (embedding output, norms, dropout, residual adds) each rank holds the sequence slice
// [rank T/size, (rank+1) T/size) of the activations; the parallel layers gather it and
// reduce-scatter back. models/ only needs the slice rule: what scatter() keeps of a tensor
// that every rank computed whole (its backward gathers the gradient).
class SequenceShard {
 public:
  virtual ~SequenceShard() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  // This rank's slice of x along dim (x.size(dim) divisible by size()).
  virtual Tensor scatter(const Tensor& x, int64_t dim) const = 0;
};
// Dropout of this rank's slice (dim 1) of a full [B, T, ...] tensor: the mask is drawn for
// the whole sequence (the stream advances as for the whole tensor) and sliced, so the ranks
// drop what one process drops at those positions. seq null: plain dropout.
Tensor sequence_dropout(const Tensor& x, double p, Generator& gen, bool training, const SequenceShard* seq);

class CausalLM : public autograd::Module {
 public:
  virtual ~CausalLM() = default;
  virtual const ModelSpec& spec() const = 0;
  // ids [B, T] (i64/i32) -> logits [B, T, V]. T <= max_seq_len. The logits have the
  // parameters' dtype (f32 also under models::Autocast, so the loss is taken in f32).
  virtual Tensor forward(const Tensor& ids) = 0;
  // Incremental forward (inference, under autograd::NoGradGuard): ids [B, T] are the tokens
  // at positions cache.length() .. cache.length() + T - 1; their keys and values are
  // appended to the cache (an empty cache is sized to the model's layers). Returns logits
  // [B, T, V], or [B, 1, V] for the last position only when `last_only` (the lm_head then
  // runs on one row). cache.length() + T <= max_seq_len.
  virtual Tensor forward_cached(const Tensor& ids, DecodeCache& cache, bool last_only = true) = 0;
  // Mean cross-entropy of next-token prediction: targets [B, T], ignore_index skipped.
  Tensor loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index = -100);
  // Generator for dropout masks (its state is saved in checkpoints).
  Generator& dropout_generator() { return dropout_gen_; }
  // The position of forward()'s first token (learned positions and RoPE), 0 by default:
  // sequence parallelism feeds each rank a slice starting there (parallel/ulysses.h).
  void set_position_offset(int64_t start) {
    position_offset_ = start;
    position_spans_.clear();
  }
  int64_t position_offset() const { return position_offset_; }
  // Positions of forward()'s tokens as consecutive spans (first position, length) whose
  // lengths add up to T: zig-zag ring attention feeds each rank two chunks of the sequence
  // (parallel/ring_attention.h). set_position_offset returns to one span.
  void set_position_spans(std::vector<std::pair<int64_t, int64_t>> spans) { position_spans_ = std::move(spans); }

  // Tensor parallelism: the head's logits are a vocabulary shard (vocab), and in Ladder mode
  // the branch outputs are partial sums that `reducer` completes (the row-parallel layers
  // then leave the sum to it). Set by parallel::shard_for_tensor_parallel.
  void set_tensor_parallel(std::shared_ptr<VocabOutput> vocab, std::shared_ptr<BranchReducer> reducer) {
    vocab_ = std::move(vocab);
    reducer_ = std::move(reducer);
  }
  const VocabOutput* vocab_output() const { return vocab_.get(); }
  // Megatron sequence parallelism (the TP layers must already work on sequence slices).
  virtual void set_sequence_parallel(std::shared_ptr<SequenceShard> seq) { seq_ = std::move(seq); }
  const SequenceShard* sequence_shard() const { return seq_.get(); }

 protected:
  // The head's output for ids: [B, T, V] or this rank's vocabulary shard of it.
  virtual Tensor head_logits(const Tensor& ids, DecodeCache* cache, bool last_only) = 0;
  Generator dropout_gen_;
  std::shared_ptr<VocabOutput> vocab_;
  std::shared_ptr<BranchReducer> reducer_;
  std::shared_ptr<SequenceShard> seq_;
  int64_t position_offset_ = 0;
  std::vector<std::pair<int64_t, int64_t>> position_spans_;
};

// Builds and initializes a model (weights drawn from Philox with `seed`, GPT-2 style:
// N(0, init_std), residual output projections scaled by 1/sqrt(2 * n_layer), norms at 1, biases 0).
std::unique_ptr<CausalLM> build_model(const ModelSpec& spec, uint64_t seed);

struct SampleOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  uint64_t seed = 0;
  int32_t stop_token = -1;   // stop early when produced (-1 = never)
  // Incremental decoding: prefill the prompt once, then feed one token at a time with the
  // layers' key/value cache. false re-runs the whole context for every token (the
  // reference the cached path is tested against).
  bool use_cache = true;
};
// Autoregressive sampling (no gradients, eval mode); returns prompt + generated ids.
// The context is cropped to the last max_seq_len tokens: once the sequence is longer, the
// window slides and, as positions shift, every step recomputes the window (the cache is
// rebuilt from it), which gives the same tokens as the uncached path.
std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt, const SampleOptions& opts);

}  // namespace lathe::models
